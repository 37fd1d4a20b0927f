# Sweeps (config key `sweeps`): the study once more for each value of one config key, in
# R/sweeps/{sweep}/{value}/ with the main study's layout. Each job is the main rule's job
# with the value passed as --set KEY=VALUE. Nothing here is planned when `sweeps` is empty.


use rule prepare as prepare_sweep with:
    output:
        data=sweep_results("data/mnist.pt"),
    log:
        sweep_results("logs/prepare.log"),
    params:
        raw=raw_folder,
        settings=settings("data"),
        overrides=sweep_override,


use rule train as train_sweep with:
    input:
        data=sweep_data,
        code=CODE["train"],
    output:
        model=sweep_results("runs/{variant}/seed{seed}/model.pt"),
        history=sweep_results("runs/{variant}/seed{seed}/history.csv"),
        summary=sweep_results("runs/{variant}/seed{seed}/train.json"),
    log:
        sweep_results("logs/train/{variant}/seed{seed}.log"),
    benchmark:
        sweep_results("benchmarks/train/{variant}/seed{seed}.tsv")
    params:
        out=parent,
        settings=train_settings,
        overrides=sweep_override,


use rule evaluate as evaluate_sweep with:
    input:
        model=rules.train_sweep.output.model,
        data=sweep_data,
        code=CODE["evaluate"],
    output:
        metrics=sweep_results("eval/{variant}/seed{seed}/metrics.json"),
        per_image=sweep_results("eval/{variant}/seed{seed}/per_image.csv"),
        grid=sweep_results("eval/{variant}/seed{seed}/grid.npz"),
        check=sweep_results("eval/{variant}/seed{seed}/quadrature_check.csv"),
    log:
        sweep_results("logs/evaluate/{variant}/seed{seed}.log"),
    benchmark:
        sweep_results("benchmarks/evaluate/{variant}/seed{seed}.tsv")
    params:
        out=parent,
        settings=evaluate_settings,
        overrides=sweep_override,


# Every run of one sweep in one CSV, with the columns sweep and sweep_value.
rule aggregate_sweep:
    input:
        evals=sweep_evals,
        benchmarks=sweep_benchmarks,
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
        "python -m flowvae aggregate --evals {input.evals:q}"
        " --benchmarks {input.benchmarks:q} --sweep {wildcards.sweep:q}"
        " --sweep-values {params.values:q} --out {output.metrics:q} > {log:q} 2>&1"


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


# Test loss against the swept value.
rule sweep_figure:
    input:
        metrics=rules.aggregate_sweep.output.metrics,
        code=CODE["figures"],
    output:
        png=report(
            figure("sweep_{sweep}", "png"),
            caption="../report/sweep.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
        pdf=figure("sweep_{sweep}", "pdf"),
    log:
        results("logs/figures/sweep_{sweep}.log"),
    localrule: True
    conda:
        ENV
    params:
        settings=sweep_figure_settings,
    shell:
        "python -m flowvae figure sweep --inputs {input.metrics:q}"
        " --out {output.png:q} {output.pdf:q} --settings {params.settings:q} > {log:q} 2>&1"
