# The equal-compute comparison (config key `equal_compute`, written by `python -m flowvae
# adopt`): every variant trains for the same seconds, so the faster ones get more epochs. The
# variants whose epochs change train again in R/equal_compute/ with the main study's layout;
# the others' main runs are reused. Nothing here is planned when `equal_compute` is null.

COMPUTE = {
    kind: STUDY.run_file(kind, root=STUDY.compute_root())
    for kind in flowvae_study.RUN_FILES
}


use rule train as train_compute with:
    input:
        data=rules.prepare.output.data,
        settings=unless_done(COMPUTE["train_settings"], COMPUTE["model"]),
        runtime=RUNTIME,
        code=unless_done(family_code("train"), COMPUTE["model"]),
    output:
        model=COMPUTE["model"],
        history=COMPUTE["history"],
        summary=COMPUTE["train_summary"],
    log:
        results("logs/equal_compute/train/{variant}/seed{seed}.log"),
    benchmark:
        COMPUTE["train_benchmark"]


use rule evaluate as evaluate_compute with:
    input:
        model=rules.train_compute.output.model,
        data=rules.prepare.output.data,
        settings=unless_done(COMPUTE["evaluate_settings"], COMPUTE["metrics"]),
        runtime=RUNTIME,
        code=unless_done(family_code("evaluate"), COMPUTE["metrics"]),
    output:
        metrics=COMPUTE["metrics"],
        per_image=COMPUTE["per_image"],
        grid=COMPUTE["grid"],
        check=COMPUTE["check"],
    log:
        results("logs/equal_compute/evaluate/{variant}/seed{seed}.log"),
    benchmark:
        COMPUTE["evaluate_benchmark"]


# One row per variant x seed of the equal-compute comparison.
use rule aggregate as aggregate_compute with:
    input:
        evals=STUDY.compute_runs("metrics"),
        settings=STUDY.compute_runs("evaluate_settings"),
        train_benchmarks=STUDY.compute_runs("train_benchmark"),
        eval_benchmarks=STUDY.compute_runs("evaluate_benchmark"),
        code=CODE["report"],
    output:
        metrics=report(
            STUDY.study_file("table", STUDY.compute_root()),
            caption="../report/metrics.rst",
            category="Tables",
            subcategory="equal compute",
        ),
    log:
        results("logs/equal_compute/aggregate.log"),
