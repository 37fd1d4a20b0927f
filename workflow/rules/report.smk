# Tables: every evaluation in one CSV, and its summary across seeds.


# One row per variant x seed, with the train and evaluate benchmarks of each run.
rule aggregate:
    input:
        evals=expand(rules.evaluate.output.metrics, variant=VARIANTS, seed=SEEDS),
        benchmarks=expand(
            results("benchmarks/{stage}/{variant}/seed{seed}.tsv"),
            stage=["train", "evaluate"],
            variant=VARIANTS,
            seed=SEEDS,
        ),
        code=CODE["report"],
    output:
        metrics=report(
            results("metrics.csv"),
            caption="../report/metrics.rst",
            category="Tables",
        ),
    log:
        results("logs/aggregate.log"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m flowvae aggregate --evals {input.evals:q}"
        " --benchmarks {input.benchmarks:q} --out {output.metrics:q} > {log:q} 2>&1"


# Mean and sd per variant, paired differences with the standard VAE, and the claim.
rule summary:
    input:
        metrics=rules.aggregate.output.metrics,
        code=CODE["report"],
    output:
        summary=report(
            results("summary.md"),
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        results("logs/summary.log"),
    localrule: True
    conda:
        ENV
    params:
        reference=REFERENCE,
    shell:
        "python -m flowvae summarize --metrics {input.metrics:q} --reference {params.reference:q}"
        " --out {output.summary:q}"
        " > {log:q} 2>&1"
