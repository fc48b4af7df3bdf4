"""Run the Snakemake workflow (``multimodal run``) through Snakemake's own command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from multimodal.errors import MultimodalError

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


def run_workflow(
    *, config: Path, cores: int, snakefile: Path | None = None, dry_run: bool = False, extra: list[str] | None = None
) -> int:
    """Run Snakemake in the current directory; its exit code is returned."""
    command = snakemake_command(config=config, cores=cores, snakefile=snakefile, dry_run=dry_run, extra=extra)
    log.info("running: %s", " ".join(command))
    # Rules call `multimodal`: make this installation's scripts directory come first on PATH.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    completed = subprocess.run(command, check=False, env=env)
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
