# Sweeps (config key `sweeps`): the study once more for each value of one config key, in
# R/sweeps/{sweep}/{value}/ with the main study's layout. Each job is the main rule's job with
# the settings file of its value (flowvae.study writes them). Nothing here is planned when
# `sweeps` is empty.

SWEEP_ROOT = STUDY.sweep_root()


use rule prepare as prepare_sweep with:
    input:
        raw=ancient(rules.download.output.raw),
        settings=unless_done(
            STUDY.study_file("data_settings", SWEEP_ROOT),
            STUDY.study_file("data", SWEEP_ROOT),
        ),
        code=unless_done(CODE["prepare"], STUDY.study_file("data", SWEEP_ROOT)),
    output:
        data=STUDY.study_file("data", SWEEP_ROOT),
    log:
        os.path.join(SWEEP_ROOT, "logs", "prepare.log"),


use rule train as train_sweep with:
    input:
        data=sweep_data,
        settings=unless_done(SWEEP["train_settings"], SWEEP["model"]),
        runtime=RUNTIME,
        code=unless_done(family_code("train"), SWEEP["model"]),
    output:
        model=SWEEP["model"],
        history=SWEEP["history"],
        summary=SWEEP["train_summary"],
    log:
        os.path.join(SWEEP_ROOT, "logs", "train", "{variant}", "seed{seed}.log"),
    benchmark:
        SWEEP["train_benchmark"]


use rule evaluate as evaluate_sweep with:
    input:
        model=rules.train_sweep.output.model,
        data=sweep_data,
        settings=unless_done(SWEEP["evaluate_settings"], SWEEP["metrics"]),
        runtime=RUNTIME,
        code=unless_done(family_code("evaluate"), SWEEP["metrics"]),
    output:
        metrics=SWEEP["metrics"],
        per_image=SWEEP["per_image"],
        grid=SWEEP["grid"],
        check=SWEEP["check"],
    log:
        os.path.join(SWEEP_ROOT, "logs", "evaluate", "{variant}", "seed{seed}.log"),
    benchmark:
        SWEEP["evaluate_benchmark"]


# Every run of one sweep in one CSV, with the columns sweep and sweep_value.
rule aggregate_sweep:
    input:
        evals=sweep_files("metrics"),
        settings=sweep_files("evaluate_settings"),
        train_benchmarks=sweep_files("train_benchmark"),
        eval_benchmarks=sweep_files("evaluate_benchmark"),
        code=CODE["report"],
    output:
        metrics=report(
            results("sweeps/{sweep}/metrics.csv"),
            caption="../report/metrics.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
    log:
        results("logs/sweeps/{sweep}/aggregate.log"),
    localrule: True
    conda:
        ENV
    params:
        values=sweep_value_args,
    shell:
        "python -m flowvae aggregate --evals {input.evals:q} --expect {input.settings:q}"
        " --train-benchmarks {input.train_benchmarks:q}"
        " --eval-benchmarks {input.eval_benchmarks:q}"
        " --sweep {wildcards.sweep:q} --sweep-values {params.values:q}"
        " --out {output.metrics:q} > {log:q} 2>&1"


use rule summary as summary_sweep with:
    input:
        metrics=rules.aggregate_sweep.output.metrics,
        code=CODE["report"],
    output:
        summary=report(
            results("sweeps/{sweep}/summary.md"),
            caption="../report/summary.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
    log:
        results("logs/sweeps/{sweep}/summary.log"),


# Test loss against the swept value: its figure data (the sweep's table, drawn columns), then
# the figure from them alone.
rule sweep_figure_data:
    input:
        metrics=rules.aggregate_sweep.output.metrics,
        code=CODE["figure_data"],
    output:
        data=report(
            results("figdata/sweep_{sweep}.csv"),
            caption="../report/figdata.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
    log:
        results("logs/figdata/sweep_{sweep}.log"),
    localrule: True
    conda:
        ENV
    params:
        key=lambda wildcards: shlex.quote(f"key={sweep_of(wildcards).key}"),
    shell:
        "python -m flowvae figure-data sweep --input metrics {input.metrics:q}"
        " --option {params.key} --out {output.data:q} > {log:q} 2>&1"


rule sweep_figure:
    input:
        data=rules.sweep_figure_data.output.data,
        code=CODE["figures"],
    output:
        png=report(
            STUDY.figure_file("sweep_{sweep}", "png"),
            caption="../report/sweep.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
        pdf=STUDY.figure_file("sweep_{sweep}", "pdf"),
    log:
        results("logs/figures/sweep_{sweep}.log"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m flowvae figure sweep --data {input.data:q}"
        " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
