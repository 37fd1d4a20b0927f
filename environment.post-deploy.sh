#!/usr/bin/env bash
# Run by Snakemake in the new conda environment, from the working folder (the repository
# root): install the flowvae package; its dependencies come from environment.yml.
set -euo pipefail
python -m pip install --no-deps --editable .
