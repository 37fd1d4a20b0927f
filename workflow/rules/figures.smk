# Figures: one rule per entry of the package's figure registry (flowvae.figures.REGISTRY),
# each writing a PNG (shown in the report) and a PDF. Adding a figure to the registry adds
# its rule, its target and its report caption here; nothing is listed by hand.

CAPTIONS = os.path.join(".snakemake", "flowvae", "captions")


def caption_file(name, text):
    """The figure's caption (Jinja + reStructuredText) as the file the report reads."""
    path = os.path.abspath(os.path.join(CAPTIONS, f"{name}.rst"))
    os.makedirs(CAPTIONS, exist_ok=True)
    if not os.path.isfile(path) or open(path).read() != text:
        with open(path, "w") as fh:
            fh.write(text)
    return path


for job in STUDY.figure_jobs():
    fig = job["figure"]
    variant = job["name"][len(fig.name) + 1 :] if fig.per_variant else ""

    rule:
        name:
            f"figure_{job['name']}"
        input:
            data=job["inputs"],
            code=CODE["figures"],
        output:
            png=report(
                STUDY.figure_file(job["name"], "png"),
                caption=caption_file(
                    job["name"], fig.caption.replace("@VARIANT@", variant)
                ),
                category=fig.category,
            ),
            pdf=STUDY.figure_file(job["name"], "pdf"),
        log:
            results(f"logs/figures/{job['name']}.log"),
        localrule: True
        conda:
            ENV
        params:
            name=fig.name,
            settings=figure_settings(),
        shell:
            "python -m flowvae figure {params.name} --inputs {input.data:q}"
            " --out {output.png:q} {output.pdf:q} --settings {params.settings:q}"
            " > {log:q} 2>&1"
