# Tables: every evaluation in one CSV, and its summary across seeds.


# One row per variant x seed, with the train and evaluate benchmarks of each run. The job
# stops if an evaluation was made with settings other than its settings file's.
rule aggregate:
    input:
        evals=STUDY.run_files("metrics"),
        settings=STUDY.run_files("evaluate_settings"),
        train_benchmarks=STUDY.run_files("train_benchmark"),
        eval_benchmarks=STUDY.run_files("evaluate_benchmark"),
        code=CODE["report"],
    output:
        metrics=report(
            STUDY.study_file("table"),
            caption="../report/metrics.rst",
            category="Tables",
        ),
    log:
        results("logs/aggregate.log"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m flowvae aggregate --evals {input.evals:q} --expect {input.settings:q}"
        " --train-benchmarks {input.train_benchmarks:q}"
        " --eval-benchmarks {input.eval_benchmarks:q} --out {output.metrics:q} > {log:q} 2>&1"


# Mean and sd per variant, paired differences with the reference variant, and the claim.
rule summary:
    input:
        metrics=rules.aggregate.output.metrics,
        selection=STUDY.tuning_targets()[:1],
        equal_compute=STUDY.compute_targets(),
        code=CODE["report"],
    output:
        summary=report(
            STUDY.study_file("summary"),
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        results("logs/summary.log"),
    localrule: True
    conda:
        ENV
    params:
        reference=config["reference"],
        notes=" ".join(f"--note {shlex.quote(n)}" for n in STUDY.summary_notes()),
        protocol=protocol_args,
    shell:
        "python -m flowvae summarize --metrics {input.metrics:q}"
        " --reference {params.reference:q} {params.notes} {params.protocol}"
        " --out {output.summary:q} > {log:q} 2>&1"
