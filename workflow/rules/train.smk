# Training: one job per variant and seed.


# The job reads its settings file (the run's spec and key, flowvae.spec) and the runtime file;
# model.pt and checkpoint.pt record the key. The run folder is locked while it trains.
# checkpoint.pt is not an output, so Snakemake keeps it when a job is killed; the rerun
# (--rerun-incomplete) resumes from it, and the package ignores a checkpoint of another key.
rule train:
    input:
        data=unless_done(rules.prepare.output.data, RUN["model"], while_missing=False),
        settings=unless_done(RUN["train_settings"], RUN["model"]),
        runtime=RUNTIME,
        code=unless_done(family_code("train"), RUN["model"]),
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
        "python -m flowvae train --data {input.data:q} --out {params.out:q}"
        " --threads {threads} --resume --settings-file {input.settings:q}"
        " --runtime {input.runtime:q} > {log:q} 2>&1"
