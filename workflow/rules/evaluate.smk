# Evaluation of every trained model on the test set.


# Test loss and its terms, IWAE bound, log p(x) by quadrature (2-D latent), posterior grids.
# The job stops if the model's key is not the training key of its settings file.
rule evaluate:
    input:
        model=unless_done(rules.train.output.model, RUN["metrics"], while_missing=False),
        data=unless_done(rules.prepare.output.data, RUN["metrics"], while_missing=False),
        settings=unless_done(RUN["evaluate_settings"], RUN["metrics"]),
        runtime=RUNTIME,
        code=unless_done(family_code("evaluate"), RUN["metrics"]),
    output:
        metrics=RUN["metrics"],
        per_image=RUN["per_image"],
        grid=RUN["grid"],
        check=RUN["check"],
    log:
        results("logs/evaluate/{variant}/seed{seed}.log"),
    benchmark:
        RUN["evaluate_benchmark"]
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    params:
        out=parent,
    shell:
        "python -m flowvae evaluate --model {input.model:q} --data {input.data:q}"
        " --out {params.out:q} --threads {threads}"
        " --settings-file {input.settings:q} --runtime {input.runtime:q} > {log:q} 2>&1"


# Posterior grids of the test images with the largest gap under the reference variant.
rule gap_grids:
    input:
        model=unless_done(
            rules.train.output.model, RUN["gap_grid"], while_missing=False
        ),
        data=unless_done(
            rules.prepare.output.data, RUN["gap_grid"], while_missing=False
        ),
        reference=unless_done(
            expand(
                rules.evaluate.output.per_image,
                variant=config["reference"],
                allow_missing=True,
            ),
            RUN["gap_grid"],
            while_missing=False,
        ),
        settings=unless_done(RUN["evaluate_settings"], RUN["gap_grid"]),
        runtime=RUNTIME,
        code=unless_done(family_code("evaluate"), RUN["gap_grid"]),
    output:
        grid=RUN["gap_grid"],
    log:
        results("logs/gap_grids/{variant}/seed{seed}.log"),
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    shell:
        "python -m flowvae gap-grids --model {input.model:q} --data {input.data:q}"
        " --reference {input.reference:q} --out {output.grid:q} --threads {threads}"
        " --settings-file {input.settings:q} --runtime {input.runtime:q} > {log:q} 2>&1"
