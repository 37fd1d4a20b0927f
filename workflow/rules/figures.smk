# Figures: one rule per figure, each writing a PNG (shown in the report) and a PDF.
# The posterior figures use the evaluations at the figure seed (the first seed).


# True posterior log p(z|x) + const of each variant's decoder, on the z grid.
rule posterior_true:
    input:
        grids=GRIDS_AT_FIGURE_SEED,
        code=CODE["figures"],
    output:
        png=report(
            figure("posterior_true", "png"),
            caption="../report/posterior_true.rst",
            category="Posteriors",
        ),
        pdf=figure("posterior_true", "pdf"),
    log:
        results("logs/figures/posterior_true.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure posterior_true --inputs {input.grids:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Approximate posterior log q(z|x) of one variant, on the same grid and images.
rule posterior_q:
    input:
        grids=expand(rules.evaluate.output.grid, seed=FIGURE_SEED, allow_missing=True),
        code=CODE["figures"],
    output:
        png=report(
            figure("posterior_{variant}", "png"),
            caption="../report/posterior_q.rst",
            category="Posteriors",
        ),
        pdf=figure("posterior_{variant}", "pdf"),
    log:
        results("logs/figures/posterior_{variant}.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure posterior_q --inputs {input.grids:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# True and approximate posteriors of every variant side by side.
rule posterior_panel:
    input:
        grids=GRIDS_AT_FIGURE_SEED,
        code=CODE["figures"],
    output:
        png=report(
            figure("posterior_panel", "png"),
            caption="../report/posterior_panel.rst",
            category="Posteriors",
        ),
        pdf=figure("posterior_panel", "pdf"),
    log:
        results("logs/figures/posterior_panel.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure posterior_panel --inputs {input.grids:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Posteriors of the figure images with their per-image posterior gaps.
rule gap_contours:
    input:
        grids=expand(rules.gap_grids.output.grid, variant=VARIANTS, seed=FIGURE_SEED),
        per_image=expand(
            rules.evaluate.output.per_image, variant=VARIANTS, seed=FIGURE_SEED
        ),
        code=CODE["figures"],
    output:
        png=report(
            figure("gap_contours", "png"),
            caption="../report/gap_contours.rst",
            category="Posterior gap",
        ),
        pdf=figure("gap_contours", "pdf"),
    log:
        results("logs/figures/gap_contours.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure gap_contours --inputs {input.grids:q} {input.per_image:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Distribution over test images of the posterior gap KL(q || p(z|x)), every seed.
rule gap_distribution:
    input:
        per_image=expand(rules.evaluate.output.per_image, variant=VARIANTS, seed=SEEDS),
        code=CODE["figures"],
    output:
        png=report(
            figure("gap_distribution", "png"),
            caption="../report/gap_distribution.rst",
            category="Posterior gap",
        ),
        pdf=figure("gap_distribution", "pdf"),
    log:
        results("logs/figures/gap_distribution.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure gap_distribution --inputs {input.per_image:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Test loss (negative ELBO) per variant and seed.
rule test_loss:
    input:
        metrics=rules.aggregate.output.metrics,
        code=CODE["figures"],
    output:
        png=report(
            figure("test_loss", "png"),
            caption="../report/test_loss.rst",
            category="Losses",
        ),
        pdf=figure("test_loss", "pdf"),
    log:
        results("logs/figures/test_loss.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure test_loss --inputs {input.metrics:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Training and validation loss per epoch.
rule loss_curves:
    input:
        histories=expand(rules.train.output.history, variant=VARIANTS, seed=SEEDS),
        code=CODE["figures"],
    output:
        png=report(
            figure("loss_curves", "png"),
            caption="../report/loss_curves.rst",
            category="Losses",
        ),
        pdf=figure("loss_curves", "pdf"),
    log:
        results("logs/figures/loss_curves.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure loss_curves --inputs {input.histories:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Test loss against training time.
rule cost_tradeoff:
    input:
        metrics=rules.aggregate.output.metrics,
        code=CODE["figures"],
    output:
        png=report(
            figure("cost_tradeoff", "png"),
            caption="../report/cost_tradeoff.rst",
            category="Losses",
        ),
        pdf=figure("cost_tradeoff", "pdf"),
    log:
        results("logs/figures/cost_tradeoff.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure cost_tradeoff --inputs {input.metrics:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Test images and their reconstructions by each variant.
rule reconstructions:
    input:
        grids=GRIDS_AT_FIGURE_SEED,
        code=CODE["figures"],
    output:
        png=report(
            figure("reconstructions", "png"),
            caption="../report/reconstructions.rst",
            category="Decoder",
        ),
        pdf=figure("reconstructions", "pdf"),
    log:
        results("logs/figures/reconstructions.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure reconstructions --inputs {input.grids:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# Decoder means at samples from the prior.
rule samples:
    input:
        grids=GRIDS_AT_FIGURE_SEED,
        code=CODE["figures"],
    output:
        png=report(
            figure("samples", "png"),
            caption="../report/samples.rst",
            category="Decoder",
        ),
        pdf=figure("samples", "pdf"),
    log:
        results("logs/figures/samples.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure samples --inputs {input.grids:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"


# IWAE bound against K compared with the quadrature log p(x), every seed.
rule quadrature_check:
    input:
        checks=expand(rules.evaluate.output.check, variant=VARIANTS, seed=SEEDS),
        code=CODE["figures"],
    output:
        png=report(
            figure("quadrature_check", "png"),
            caption="../report/quadrature_check.rst",
            category="Posterior gap",
        ),
        pdf=figure("quadrature_check", "pdf"),
    log:
        results("logs/figures/quadrature_check.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=FIGURE_SETTINGS,
    shell:
        "python -m flowvae figure quadrature_check --inputs {input.checks:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"
