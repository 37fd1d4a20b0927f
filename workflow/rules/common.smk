# What only Snakemake can say: the study (flowvae.study decides every run, path and setting),
# wildcard constraints and small input functions. Nothing here is computed twice.

import json
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from flowvae import codedeps as flowvae_codedeps
from flowvae import fetch as flowvae_fetch
from flowvae.errors import ConfigError

try:
    STUDY = flowvae_study.from_snakemake(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
# The log's first lines: what the run covers and, where a variant trains with a setting of its
# own, the file or option that set it. Only the main process writes the settings files: a
# cluster job parses this file again, perhaps with the config of a Snakemake that is gone, and
# must not write them back.
if workflow.is_main_process:
    for _line in STUDY.describe() + RESOLVED.notes(STUDY.variants):
        logger.info(_line)
    for _line in STUDY.write_settings():
        logger.info(_line)

R = STUDY.results
RUN = {kind: STUDY.run_file(kind) for kind in flowvae_study.RUN_FILES}
SWEEP = {
    kind: STUDY.run_file(kind, root=STUDY.sweep_root())
    for kind in flowvae_study.RUN_FILES
}
# Package files of each stage, from the imports of the modules its commands run; a run's
# train and evaluate jobs depend on its own posterior family's module, not on its siblings'.
CODE = {stage: flowvae_codedeps.files(stage) for stage in flowvae_codedeps.ENTRY}
FAMILY_CODE = {
    (stage, family): flowvae_codedeps.files(stage, family)
    for stage in ("train", "evaluate")
    for family in {entry["family"] for entry in config["variants"].values()}
}


def family_code(stage):
    """The package files of ``stage`` for the run's variant (wildcard ``variant``)."""

    def code(wildcards):
        return FAMILY_CODE[stage, config["variants"][wildcards.variant]["family"]]

    return code


# Device and checkpoint interval per variant: read by every train and evaluate job, never a
# reason to rerun one (`ancient`: its time is ignored; see flowvae.study.settings).
RUNTIME = ancient(STUDY.study_file("runtime"))
# Software of every rule (for --software-deployment-method conda); see environment.yml.
ENV = "../../environment.yml"


def unless_done(paths, done, while_missing=True):
    """Input function: ``paths`` (a pattern, a list, or an input function giving either), read
    as `ancient` while the job's output ``done`` (a pattern) is missing, and when it is a record
    (flowvae.study.settings: its key, not the files' times, says it is current). A job that
    never ran runs because its output is missing, not because of its inputs' times; so on a
    fresh clone, whose settings files (written at parse) and code are newer than the committed
    figure data, asking for one figure plans that figure alone. Once the output exists, the
    inputs' times count as usual. With ``while_missing=False`` only a record's inputs are
    `ancient` (an input made by a job upstream, which must rerun the job when it reruns). A
    record leaves out an input that is missing (the prepared data on a fresh clone): Snakemake
    reruns every job whose input another job makes, `ancient` or not.
    """

    def inputs(wildcards):
        fill = dict(wildcards.items())
        names = paths(wildcards) if callable(paths) else paths
        names = [names] if isinstance(names, str) else names
        files = [name.format(**fill) for name in names]
        output = done.format(**fill)
        # a record's missing input is left out: Snakemake would rerun it when that is made
        if os.path.normpath(output) in STUDY.records:
            return [ancient(f) for f in files if os.path.exists(f)]
        if os.path.exists(output) or not while_missing:
            return files
        return [ancient(f) for f in files]

    return inputs


def results(*parts):
    """A path under the results folder of the main study."""
    return os.path.join(R, *parts)


def parent(wildcards, output):
    """The folder of a rule's first output (the --out of train and evaluate)."""
    return os.path.dirname(output[0])


def raw_folder(wildcards, input):
    """The folder holding the raw MNIST files."""
    return os.path.dirname(input.raw[0])


def mirror_option(wildcards):
    """--mirror with the mirror in effect (data.mirror, else $FLOWVAE_MNIST_MIRROR): naming the
    folder the variable names changes nothing. Another mirror reruns only the download, which
    checks the files against their checksums; the steps after it read them as `ancient`.
    """
    mirror = flowvae_fetch.effective_mirror(config["data"]["mirror"])
    return f"--mirror {shlex.quote(mirror)}" if mirror else ""


def sweep_of(wildcards):
    if wildcards.sweep not in STUDY.sweeps:
        raise WorkflowError(f"no sweep named {wildcards.sweep!r} in the config")
    return STUDY.sweeps[wildcards.sweep]


def sweep_data(wildcards):
    """The prepared data of a sweep value: its own for a data.* sweep, else the main one."""
    if sweep_of(wildcards).section == "data":
        return STUDY.study_file(
            "data", STUDY.sweep_root(wildcards.sweep, wildcards.value)
        )
    return STUDY.study_file("data")


def sweep_files(kind):
    """Input function: the file ``kind`` of every value, variant and seed of a sweep."""

    def files(wildcards):
        sweep = sweep_of(wildcards)
        return [
            STUDY.run_file(kind, v, s, STUDY.sweep_root(sweep.name, value))
            for value in sweep.values
            for v in sweep.variants
            for s in sweep.seeds
        ]

    return files


def sweep_value_args(wildcards):
    """The swept value of each metrics file, as JSON, in the order of sweep_files."""
    sweep = sweep_of(wildcards)
    return [
        json.dumps(value)
        for value in sweep.values.values()
        for _ in sweep.variants
        for _ in sweep.seeds
    ]


def protocol_args(wildcards, input):
    """--selection and the settings it is checked against, when there is a tuning stage."""
    args = []  # (a sweep's summary has neither input)
    compute, selection = input.get("equal_compute", []), input.get("selection", [])
    if compute:
        args.append(f"--equal-compute {shlex.quote(compute[0])}")
    if selection:
        keys = ("variants", "train", "seeds", "equal_compute")
        settings = json.dumps({key: config[key] for key in keys})
        args.append(f"--selection {shlex.quote(selection[0])}")
        args.append(f"--settings {shlex.quote(settings)}")
    return " ".join(args)


wildcard_constraints:
    variant="|".join(re.escape(v) for v in STUDY.all_variants),
    seed=r"\d+",
    sweep=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    value=r"[^/]+",
    candidate=r"[^/]+",


def budget_args(input):
    """--budgets and --spikes for the summary when its rule has them (a sweep's has not)."""
    if "budgets" not in input.keys():
        return ""
    return (
        f"--budgets {shlex.quote(input.budgets)} --spikes {shlex.quote(input.spikes)}"
    )
