"""Run the Snakemake workflow (``multimodal run``) through Snakemake's own command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from multimodal.errors import MultimodalError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def default_snakefile() -> Path:
    """The workflow's Snakefile: ./Snakefile if present, else the one beside the installed package."""
    local = Path("Snakefile")
    if local.is_file():
        return local
    beside = Path(__file__).resolve().parents[1] / "Snakefile"
    if beside.is_file():
        return beside
    raise MultimodalError("no Snakefile here or beside the multimodal package; pass --snakefile")


def snakemake_command(
    *, config: Path, cores: int, snakefile: Path | None = None, dry_run: bool = False, extra: list[str] | None = None
) -> list[str]:
    """The Snakemake command line ``multimodal run`` executes (config replaces, never merges)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile or default_snakefile()),
        "--configfile",
        str(config),
        "--replace-workflow-config",
        "--cores",
        str(cores),
        "--printshellcmds",
        "--show-failed-logs",
    ]
    if dry_run:
        command.append("--dry-run")
    extra = [a for a in (extra or []) if a != "--"]
    return command + extra


def check_inputs(config_path: Path) -> dict:
    """Validate the config and the inputs it names before Snakemake starts, each problem as one line.

    Snakemake would report a bad key with the whole schema, and a missing samples sheet as a traceback.
    """
    from multimodal.config import load_config
    from multimodal.ingest.samples import read_samples

    config = load_config(config_path)
    if config["simulate"]["enabled"]:
        return config  # the inputs are what the simulate rule writes
    named = {"samples": config.get("samples"), "clinical": config.get("clinical")}
    named |= {"expression": config.get("expression"), "maf": config.get("maf")}
    named |= {f"tables.{k}": v for k, v in (config.get("tables") or {}).items()}
    for key in ("samples", "clinical"):
        if not named[key]:
            raise MultimodalError(f"{config_path}: {key}: required (path to the {key} file)")
    for key, value in named.items():
        if value and not Path(value).is_file():
            raise MultimodalError(f"{config_path}: {key}: file {value} not found (relative to {Path.cwd()})")
    sheet_modalities(read_samples(named["samples"]), config, source=str(config_path))  # bad rows, conflicts
    return config


def sheet_modalities(samples: pd.DataFrame, config: dict, *, source: str = "config") -> dict[str, bool]:
    """Which modalities the samples sheet's files (with the config's MAF and counts table) provide.

    Raises when a modality also comes from ``tables``: it must come one way. The rules (common.smk)
    and ``multimodal run``'s checks both use this.
    """
    provided = {
        "variants": bool((samples["vcf"] != "").any())
        or (bool(config.get("maf")) and bool((samples["maf_sample"] != "").any())),
        "expression": bool(config.get("expression")) and bool((samples["rna_sample"] != "").any()),
        "imaging": bool((samples["image"] != "").any()),
    }
    for name in config.get("tables") or {}:
        if provided.get(name):
            raise MultimodalError(
                f"{source}: tables.{name}: modality {name!r} also comes from the samples sheet's files; "
                f"give it one way (or name the table differently, e.g. {name}_table)"
            )
    return provided


def run_workflow(
    *, config: Path, cores: int, snakefile: Path | None = None, dry_run: bool = False, extra: list[str] | None = None
) -> int:
    """Run Snakemake in the current directory, after checking the config and its inputs; returns 0."""
    check_inputs(config)
    command = snakemake_command(config=config, cores=cores, snakefile=snakefile, dry_run=dry_run, extra=extra)
    log.info("running: %s", " ".join(command))
    # Rules call `multimodal`: make this installation's scripts directory come first on PATH.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    completed = subprocess.run(command, check=False, env=env)
    if completed.returncode and any(Path(".snakemake/locks").glob("*")):
        # Snakemake removes its own locks when it stops, even on a failed rule: locks left now are another
        # run's, still going or killed outright (kill -9, out of memory, a lost node).
        raise MultimodalError(
            f"{Path.cwd()} is locked by another Snakemake run; if none is running (it was killed), unlock with: "
            f"multimodal run --config {config} -- --unlock",
            exit_code=completed.returncode,
        )
    if completed.returncode:
        raise MultimodalError(
            f"workflow failed (Snakemake exit code {completed.returncode}); the failing rule's log is shown above",
            exit_code=completed.returncode,
        )
    if not dry_run:
        from multimodal.config import load_config

        report = Path(load_config(config)["outdir"]) / "report.html"
        if report.is_file():
            log.info("done: report at %s", report)
    return 0
