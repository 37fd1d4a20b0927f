# flowvae: standard, IAF, PCP-Map (and more) VAEs on MNIST digits 1-4, 2-D latent space.
#
#   snakemake --cores 4                                  the study (config/config.yaml)
#   snakemake --cores 2 --configfile config/quick.yaml   a tiny run of every step
#   snakemake --cores 2 figures/test_loss.png            one figure (and what it needs)
#   snakemake --report report.html                       figures and tables in one page
#
# Stages: download -> prepare -> train -> evaluate -> aggregate / summary -> figures.
# Every rule calls `python -m flowvae <command>`; what runs is decided by flowvae.study.

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The package of this checkout (also when the workflow runs from another folder).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from flowvae import config as flowvae_config
from flowvae import study as flowvae_study


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# `--config key=value` arrives as strings: type it as the schema says, then validate
# (unknown keys, wrong types and out-of-range values stop here, naming the key) and fill
# in the defaults (the package's filling: it leaves a null section such as `tuning: null`).
flowvae_study.command_line_values(config)


validate(config, str(flowvae_config.SCHEMA_PATH), set_default=False)
config.update(flowvae_config.fill_defaults(config))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/sweeps.smk"
include: "workflow/rules/tuning.smk"
include: "workflow/rules/equal_compute.smk"


# A failed check of the evaluation (results/summary.md) is the last thing a run prints.
onsuccess:
    from flowvae import report as flowvae_report

    for line in flowvae_report.failed_checks(STUDY.study_file("summary")):
        logger.warning(f"flowvae: {line}")


rule all:
    default_target: True
    input:
        STUDY.targets(),
