# Figures: one rule per figure data file and one per figure, from the package's registry
# (flowvae.figures.registry). Adding a figure to the registry adds its rules, its target and
# its report caption here; nothing is listed by hand.
#
# A figure reads its figure data file (results/figdata/, committed) and nothing else, so a
# clone without the runs redraws any figure with one job. The figure data are collected from
# the runs' files. Where some of those files are missing (a fresh clone), the package files
# that collect them count as `ancient`: a checkout newer than the committed figure data must
# not ask for data that only the whole study can rebuild; the study's own run, which writes
# the runs' files, rewrites every figure data file from them.

CAPTIONS = os.path.join(".snakemake", "flowvae", "captions")
FIGURE_JOBS = STUDY.figure_jobs()


def caption_file(name, text):
    """The figure's caption (reStructuredText) as the file the report reads."""
    path = os.path.abspath(os.path.join(CAPTIONS, f"{name}.rst"))
    os.makedirs(CAPTIONS, exist_ok=True)
    if not os.path.isfile(path) or open(path).read() != text:
        with open(path, "w") as fh:
            fh.write(text)
    return path


def data_inputs(job):
    """The named inputs of a figure data job, `ancient` where their times say nothing."""
    return {
        key: ancient(paths) if key in job.ancient else paths
        for key, paths in job.inputs.items()
    }


def data_code(job):
    """The collecting code: an input like any other once every run file exists."""
    files = [path for paths in job.inputs.values() for path in paths]
    code = CODE["figure_data"]
    return code if all(os.path.exists(f) for f in files) else ancient(code)


def input_args(inputs):
    """--input NAME FILE... for each named input."""
    return " ".join(
        f"--input {key} " + " ".join(shlex.quote(p) for p in paths)
        for key, paths in inputs.items()
        if paths
    )


for job in {j.data.path: j.data for j in FIGURE_JOBS}.values():

    rule:
        name:
            f"figdata_{job.data.name}"
        input:
            **data_inputs(job),
            code=data_code(job),
        output:
            data=report(
                job.path, caption="../report/figdata.rst", category="Figure data"
            ),
        log:
            results(f"logs/figdata/{job.data.name}.log"),
        localrule: True
        conda:
            ENV
        params:
            name=job.data.name,
            inputs=input_args(job.inputs),
        shell:
            "python -m flowvae figure-data {params.name} {params.inputs}"
            " --out {output.data:q} > {log:q} 2>&1"


for job in FIGURE_JOBS:

    rule:
        name:
            f"figure_{job.name}"
        input:
            data=job.data.path,
            code=CODE["figures"],
        output:
            png=report(
                job.png,
                caption=caption_file(job.name, job.caption),
                category=job.figure.category,
            ),
            pdf=job.pdf,
        log:
            results(f"logs/figures/{job.name}.log"),
        localrule: True
        conda:
            ENV
        params:
            name=job.figure.name,
            variant=f"--variant {shlex.quote(job.variant)}" if job.variant else "",
        shell:
            "python -m flowvae figure {params.name} --data {input.data:q} {params.variant}"
            " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
