# Training: one job per variant and seed.


# The package writes checkpoint.pt into the run folder every train.checkpoint_every epochs.
# It is not an output, so Snakemake keeps it when a job is killed; the rerun
# (--rerun-incomplete) resumes from it, and the package ignores a checkpoint written with
# other settings.
rule train:
    input:
        data=rules.prepare.output.data,
        code=CODE["train"],
    output:
        model=results("runs/{variant}/seed{seed}/model.pt"),
        history=results("runs/{variant}/seed{seed}/history.csv"),
        summary=results("runs/{variant}/seed{seed}/train.json"),
    log:
        results("logs/train/{variant}/seed{seed}.log"),
    benchmark:
        results("benchmarks/train/{variant}/seed{seed}.tsv")
    conda:
        ENV
    threads: config["train"]["threads"]
    params:
        out=parent,
        settings=train_settings,
        overrides="",
    shell:
        "python -m flowvae train --data {input.data:q} --variant {wildcards.variant:q}"
        " --seed {wildcards.seed} --out {params.out:q} --threads {threads} --resume"
        " --settings {params.settings:q} {params.overrides} > {log:q} 2>&1"
