# Training: one job per variant and seed.


# The job reads its settings file (flowvae.study) and copies it into the run folder when it
# ends; the run folder is locked while it trains. checkpoint.pt is not an output, so
# Snakemake keeps it when a job is killed; the rerun (--rerun-incomplete) resumes from it,
# and the package ignores a checkpoint written with other settings.
rule train:
    input:
        data=rules.prepare.output.data,
        settings=RUN["train_settings"],
        code=CODE["train"],
    output:
        model=RUN["model"],
        history=RUN["history"],
        summary=RUN["train_summary"],
    log:
        results("logs/train/{variant}/seed{seed}.log"),
    benchmark:
        RUN["train_benchmark"]
    conda:
        ENV
    threads: config["train"]["threads"]
    params:
        out=parent,
    shell:
        "python -m flowvae train --data {input.data:q} --variant {wildcards.variant:q}"
        " --seed {wildcards.seed} --out {params.out:q} --threads {threads} --resume"
        " --settings-file {input.settings:q} > {log:q} 2>&1"
