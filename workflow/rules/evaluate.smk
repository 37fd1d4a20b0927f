# Evaluation of every trained model on the test set.


# Test loss and its terms, IWAE bound, log p(x) by quadrature (2-D latent), posterior grids.
rule evaluate:
    input:
        model=rules.train.output.model,
        data=rules.prepare.output.data,
        code=CODE["evaluate"],
    output:
        metrics=results("eval/{variant}/seed{seed}/metrics.json"),
        per_image=results("eval/{variant}/seed{seed}/per_image.csv"),
        grid=results("eval/{variant}/seed{seed}/grid.npz"),
        check=results("eval/{variant}/seed{seed}/quadrature_check.csv"),
    log:
        results("logs/evaluate/{variant}/seed{seed}.log"),
    benchmark:
        results("benchmarks/evaluate/{variant}/seed{seed}.tsv")
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    params:
        out=parent,
        settings=evaluate_settings,
        overrides="",
    shell:
        "python -m flowvae evaluate --model {input.model:q} --data {input.data:q}"
        " --out {params.out:q} --threads {threads}"
        " --settings {params.settings:q} {params.overrides} > {log:q} 2>&1"


# Posterior grids of the test images with the largest gap under the reference variant.
rule gap_grids:
    input:
        model=rules.train.output.model,
        data=rules.prepare.output.data,
        reference=expand(
            rules.evaluate.output.per_image, variant=REFERENCE, allow_missing=True
        ),
        code=CODE["evaluate"],
    output:
        grid=results("eval/{variant}/seed{seed}/gap_grid.npz"),
    log:
        results("logs/gap_grids/{variant}/seed{seed}.log"),
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    params:
        settings=evaluate_settings,
    shell:
        "python -m flowvae gap-grids --model {input.model:q} --data {input.data:q}"
        " --reference {input.reference:q} --out {output.grid:q} --threads {threads}"
        " --settings {params.settings:q} > {log:q} 2>&1"
