# The tuning stage of the hyperparameter study (config key `tuning`): every variant trains each
# of its candidate settings (flowvae.study.Study.candidates) on the tuning seeds, in
# R/tuning/{candidate}/ with the main study's layout; the selection ranks them on the
# validation loss alone. `snakemake tuning` runs this stage; `python -m flowvae adopt` writes
# the selected settings into config/config.yaml. Nothing here is planned when `tuning` is empty.

TUNING = {
    kind: STUDY.run_file(kind, root=STUDY.tuning_root())
    for kind in flowvae_study.RUN_FILES
}


use rule train as train_tuning with:
    input:
        data=rules.prepare.output.data,
        settings=unless_done(TUNING["train_settings"], TUNING["model"]),
        runtime=RUNTIME,
        code=unless_done(family_code("train"), TUNING["model"]),
    output:
        model=TUNING["model"],
        history=TUNING["history"],
        summary=TUNING["train_summary"],
    log:
        results("logs/tuning/{candidate}/{variant}/seed{seed}.log"),
    benchmark:
        TUNING["train_benchmark"]


# Every candidate's validation loss on every tuning seed, and the one selected per variant.
rule select:
    input:
        plan=STUDY.study_file("tuning_plan"),
        summaries=STUDY.tuning_runs("train_summary"),
        settings=STUDY.tuning_runs("train_settings"),
        code=CODE["report"],
    output:
        selection=report(
            STUDY.study_file("selection"),
            caption="../report/selection.rst",
            category="Tuning",
        ),
    log:
        results("logs/select.log"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m flowvae select --plan {input.plan:q} --out {output.selection:q}"
        " > {log:q} 2>&1"


rule tuning:
    input:
        STUDY.tuning_targets(),
