# multimodal workflow: raw inputs -> cohort.zarr -> cross-validated fusion model -> attributions -> report.
# Run with `multimodal run --config config/config.yaml --cores 2`, or
# `snakemake --cores 2 --configfile config/config.yaml`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/ingest.smk"
include: "rules/assemble.smk"
include: "rules/train.smk"
include: "rules/explain.smk"
include: "rules/report.smk"


# Partition and account for the SLURM executor (config/profiles/slurm): resources.slurm_partition and
# resources.slurm_account, else MULTIMODAL_SLURM_PARTITION / MULTIMODAL_SLURM_ACCOUNT; a value given by
# --set-resources wins. Local runs ignore them.
for _rule in workflow.rules:
    for _name, _value in cluster_resources(config).items():
        if _name not in _rule.resources:
            _rule.resources.update(
                snakemake.resources.Resources.from_mapping({_name: _value})
            )


rule all:
    input:
        f"{OUT}/report.html",
        f"{OUT}/cohort_summary.txt",
