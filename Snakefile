# flowvae: standard, IAF and PCP-Map VAEs on MNIST digits 1-4 with a 2-D latent space.
#
#   snakemake --cores 4                               the study (config/config.yaml)
#   snakemake --cores 2 --configfile config/quick.yaml  a tiny run of every step
#   snakemake --report report.html                    figures and tables in one page
#
# Stages: download -> prepare -> train -> evaluate -> aggregate / summary -> figures.
# Every rule calls `python -m flowvae <command>`; see workflow/rules/.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Unknown keys, wrong types and out-of-range values stop the run here, before any job;
# the schema's defaults fill every key the config files leave out.
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/sweeps.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output.metrics,
        rules.summary.output.summary,
        all_figures(),
        all_sweeps(),
