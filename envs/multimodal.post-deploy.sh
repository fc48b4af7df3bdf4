#!/usr/bin/env bash
# Run by Snakemake (`--use-conda`) inside the environment it has just created from multimodal.yaml:
# installs the multimodal package itself from the checkout, without dependencies (those come from the
# environment file). Snakemake copies this script away from the repository, so the checkout is
# MULTIMODAL_SOURCE, else the working directory when that is the checkout (the usual case).
set -euo pipefail
source="${MULTIMODAL_SOURCE:-$PWD}"
if ! grep -q '^name = "multimodal"' "$source/pyproject.toml" 2>/dev/null; then
  echo "multimodal post-deploy: $source is not the multimodal checkout; set MULTIMODAL_SOURCE to it" >&2
  exit 1
fi
python -m pip install --no-deps --no-build-isolation "$source"
