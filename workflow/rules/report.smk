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


# Each flow minus the reference on the per-epoch test curves, at budgets in epochs and in
# training CPU seconds, and at the evaluated checkpoint.
rule budgets:
    input:
        histories=STUDY.run_files("history"),
        metrics=rules.aggregate.output.metrics,
        code=CODE["report"],
    output:
        budgets=STUDY.study_file("budgets"),
        spikes=STUDY.study_file("spikes"),
    log:
        results("logs/budgets.log"),
    localrule: True
    conda:
        ENV
    params:
        reference=config["reference"],
    shell:
        "python -m flowvae budgets --histories {input.histories:q} --metrics {input.metrics:q}"
        " --reference {params.reference:q} --out {output.budgets:q}"
        " --spikes-out {output.spikes:q} > {log:q} 2>&1"


# Mean and sd per variant, paired differences with the reference variant, the claim, and the
# claim per budget.
rule summary:
    input:
        metrics=rules.aggregate.output.metrics,
        budgets=rules.budgets.output.budgets,
        spikes=rules.budgets.output.spikes,
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
        budgets=lambda wildcards, input: budget_args(input),
    shell:
        "python -m flowvae summarize --metrics {input.metrics:q}"
        " --reference {params.reference:q} {params.notes} {params.protocol}"
        " {params.budgets} --out {output.summary:q} > {log:q} 2>&1"
