# Look-ups shared by the rules: the samples sheet, chunks of patients, and which modalities exist.
import json
import math
import re
import os
import shlex
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError

from multimodal.ingest.samples import chunk as _chunk
from multimodal.workflow import sheet_modalities

SAMPLES = pd.read_csv(config["samples"], sep="\t", dtype=str, keep_default_na=False)
validate(SAMPLES, "../config/samples.schema.yaml")
for _column in ("vcf", "maf_sample", "rna_sample", "image", "mask"):
    if _column not in SAMPLES.columns:
        SAMPLES[_column] = ""
# a sheet with lesion/timepoint columns may give a patient several imaging rows: chunks are of patients
SAMPLE_ROWS = SAMPLES
SAMPLES = SAMPLES.drop_duplicates("patient_id").set_index("patient_id", drop=False)

OUT = config["outdir"]
LOGS = f"{OUT}/logs"
N_CHUNKS = {  # chunks of patients: variants by ingest.variant_chunk_size (null: chunk_size), imaging by chunk_size
    name: max(1, math.ceil(len(SAMPLES) / size))
    for name, size in (
        (
            "variants",
            config["ingest"].get("variant_chunk_size")
            or config["ingest"]["chunk_size"],
        ),
        ("imaging", config["ingest"]["chunk_size"]),
    )
}
MAF = config.get("maf") or None
_FROM_SHEET = sheet_modalities(
    SAMPLES, config
)  # also refuses a modality given both ways
HAS_VARIANTS = _FROM_SHEET["variants"]
HAS_IMAGING = _FROM_SHEET["imaging"]
HAS_EXPRESSION = _FROM_SHEET["expression"]
TABLES = dict(config.get("tables") or {})


wildcard_constraints:
    name="|".join(re.escape(n) for n in TABLES) or "(?!)",
    chunk=r"\d+",


def chunk_files(name, chunk, columns):
    """Input files of the patients in one chunk of modality ``name``."""
    rows = _chunk(SAMPLES, index=int(chunk), n_chunks=N_CHUNKS[name])
    rows = SAMPLE_ROWS[
        SAMPLE_ROWS["patient_id"].isin(rows.index)
    ]  # every imaging row of those patients
    return list(
        dict.fromkeys(path for column in columns for path in rows[column] if path)
    )


def simulated_files():
    """Every file the simulator writes that the workflow reads."""
    files = [config["clinical"], config["expression"]]
    for vcf in SAMPLES["vcf"]:
        if vcf:
            files += [vcf, f"{vcf}.tbi"]
    files += [p for column in ("image", "mask") for p in SAMPLE_ROWS[column] if p]
    return files


def modality_chunks(name):
    present = {"variants": HAS_VARIANTS, "imaging": HAS_IMAGING}[name]
    return (
        expand(
            f"{OUT}/interim/{name}/chunk_{{chunk}}.h5ad",
            chunk=range(N_CHUNKS[name]),
        )
        if present
        else []
    )


def option(flag, files):
    """``flag`` followed by the shell-quoted paths, or nothing when there are none."""
    files = [files] if isinstance(files, str) else list(files)
    return " ".join([flag, *(shlex.quote(str(f)) for f in files)]) if files else ""


def imaging_processing_options(ingest):
    """The optional IBSI image-processing flags of ``ingest imaging``; none by default."""
    options = [
        option(
            "--resample-spacing", [str(s) for s in ingest.get("resample_spacing") or []]
        ),
        (
            option("--interpolation", [ingest.get("interpolation") or "linear"])
            if ingest.get("resample_spacing")
            else ""
        ),
        "--round-intensities" if ingest.get("round_intensities") else "",
        option(
            "--resegment-range", [str(b) for b in ingest.get("resegment_range") or []]
        ),
        (
            option("--outlier-sd", [str(ingest["outlier_sd"])])
            if ingest.get("outlier_sd")
            else ""
        ),
        (
            option("--lesion-rule", [ingest["lesion_rule"]])
            if ingest.get("lesion_rule", "largest") != "largest"
            else ""
        ),
        (
            option("--filters", [json.dumps(ingest["filters"])])
            if ingest.get("filters")
            else ""
        ),
    ]
    return " ".join(o for o in options if o)


def variant_filter_options(ingest):
    """The ``ingest variants`` filter flags from ``ingest.variant_filters``; none at the defaults."""
    filters = ingest.get("variant_filters") or {}
    options = [
        (
            option("--filter", filters["filter"])
            if filters.get("filter", ["PASS"]) != ["PASS"]
            else ""
        ),
        (
            option("--min-depth", [str(filters["min_depth"])])
            if filters.get("min_depth")
            else ""
        ),
        (
            option("--min-vaf", [str(filters["min_vaf"])])
            if filters.get("min_vaf")
            else ""
        ),
        option("--gene-list", [filters["genes"]]) if filters.get("genes") else "",
        (
            option("--transcripts", [filters["transcripts"]])
            if filters.get("transcripts", "any") != "any"
            else ""
        ),
    ]
    return " ".join(o for o in options if o)


def expression_format_options(ingest):
    """The ``ingest expression`` flags of tx2gene, single-cell keys and the low-expression filter; none by default."""
    single_cell = ingest.get("single_cell") or {}
    low = ingest.get("min_expression") or {}
    options = [
        option("--tx2gene", [ingest["tx2gene"]]) if ingest.get("tx2gene") else "",
        (
            option("--sample-key", [single_cell["sample_key"]])
            if single_cell.get("sample_key", "sample") != "sample"
            else ""
        ),
        (
            option("--cell-type-key", [single_cell["cell_type_key"]])
            if single_cell.get("cell_type_key")
            else ""
        ),
        option("--min-count", [str(low["min_count"])]) if low.get("min_count") else "",
        (
            option("--min-samples", [str(low["min_samples"])])
            if low.get("min_count") and low.get("min_samples")
            else ""
        ),
    ]
    return " ".join(o for o in options if o)


def table_options(input_tables):
    """``--table NAME=PATH ...`` for the assemble command."""
    return option("--table", [f"{Path(p).stem}={p}" for p in input_tables])


# The verbs read their settings from the config file, given as a parameter rather than an input: editing
# one section (or a comment) must not rerun every stage. Each rule lists its own section in `params`,
# so Snakemake reruns exactly the stages whose settings changed.
def given_config_file(workflow):
    """The config file this run was given: ``--configfile`` on the command line (relative to the working
    directory when inside it), else the Snakefile's own. Snakemake lists the Snakefile's ``configfile:`` after
    the command line's whenever config/config.yaml exists, so the last of ``workflow.configfiles`` would be the
    shipped file, not the user's. The verbs read one file: several ``--configfile`` are refused.
    """
    given = list(workflow.overwrite_configfiles)
    if len(given) > 1:
        raise WorkflowError(
            "give one --configfile (the multimodal verbs read their settings from one file), got "
            + ", ".join(map(str, given))
        )
    if not given:
        return workflow.configfiles[-1:]
    path = Path(given[0]).absolute()
    try:
        return [str(path.relative_to(Path.cwd().absolute()))]
    except ValueError:
        return [str(path)]


CONFIG_OPTION = option("--config", given_config_file(workflow))


def table_memory_mb(base_mb):
    """``mem_mb`` of a job holding a cohort expression table as a matrix: ``base_mb``, or 500 MB plus 2.5x
    the table's size on disk (5x that for a gzipped one) when more; measured peaks are ~2.1x the plain TSV
    at 10,000 x 60,000 (benchmarks/README.md), so a SLURM job at biobank size is not killed at 4 GB.
    """

    def mem_mb(wildcards, input):
        total = 0.0
        counts = getattr(input, "counts", [])  # one file is a plain string
        for path in [counts] if isinstance(counts, str) else counts:
            if os.path.exists(path):
                size = os.path.getsize(path) / 1e6
                total += size * (5 if str(path).endswith((".gz", ".bgz")) else 1)
        return max(base_mb, int(500 + 2.5 * total))

    return mem_mb


def cluster_resources(config):
    """slurm_partition / slurm_account from the config's resources section, else the environment."""
    found = {}
    for name, variable in (
        ("slurm_partition", "MULTIMODAL_SLURM_PARTITION"),
        ("slurm_account", "MULTIMODAL_SLURM_ACCOUNT"),
    ):
        value = config["resources"].get(name) or os.environ.get(variable)
        if value:
            found[name] = value
    return found
