"""Run the Snakemake workflow (``multimodal run``) through Snakemake's own command line.

The terminal gets stage progress, each fold's C-index as the train verb logs it and a closing line (the C-index
against the references, where the report is); Snakemake's full output goes to ``<outdir>/logs/run.log``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
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
    from multimodal.ingest.copy_number import copy_number_source
    from multimodal.ingest.samples import check_data_roots, default_data_roots, read_samples

    config = load_config(config_path)
    if config["simulate"]["enabled"]:
        return config  # the inputs are what the simulate rule writes
    named = {"samples": config.get("samples"), "clinical": config.get("clinical")}
    named |= {"expression": config.get("expression"), "maf": config.get("maf")}
    named |= {f"tables.{k}": v for k, v in (config.get("tables") or {}).items()}
    named["cohort_vcf"] = config.get("cohort_vcf")
    ingest = config.get("ingest") or {}
    named["ingest.tx2gene"] = ingest.get("tx2gene")
    named["ingest.variant_filters.genes"] = (ingest.get("variant_filters") or {}).get("genes")
    cnv = copy_number_source(config.get("copy_number"))
    if cnv and cnv.table:
        named["copy_number"] = cnv.table
    elif cnv:
        named |= {f"copy_number.segments[{i}]": path for i, path in enumerate(cnv.segments)}
        named["copy_number.genes_bed"] = cnv.genes_bed
    for key in ("samples", "clinical"):
        if not named[key]:
            raise MultimodalError(f"{config_path}: {key}: required (path to the {key} file)")
    roots = config.get("data_roots") or default_data_roots(named["samples"])
    for root in config.get("data_roots") or []:
        if not Path(root).is_dir():
            raise MultimodalError(f"{config_path}: data_roots: {root} is not a directory (relative to {Path.cwd()})")
    splits = config["model"].get("splits")  # a file or a directory of split files
    for key, value in (named | {"model.splits": splits}).items():  # confinement first, for every path
        if value:
            check_data_roots(value, roots, where=f"{config_path}: {key}")
    for key, value in named.items():
        if value and not Path(value).is_file():
            raise MultimodalError(f"{config_path}: {key}: file {value} not found (relative to {Path.cwd()})")
    if splits and not Path(splits).exists():
        raise MultimodalError(f"{config_path}: model.splits: {splits} not found (relative to {Path.cwd()})")
    samples = read_samples(named["samples"], data_roots=roots)  # every row: IDs, confinement, files
    sheet_modalities(samples, config, source=str(config_path))  # conflicts with tables
    return config


def sheet_modalities(samples: pd.DataFrame, config: dict, *, source: str = "config") -> dict[str, bool]:
    """Which modalities the samples sheet's files (with the config's MAF and counts table) provide.

    Raises when a modality also comes from ``tables``: it must come one way. The rules (common.smk)
    and ``multimodal run``'s checks both use this.
    """
    provided = {
        "variants": bool((samples["vcf"] != "").any())
        or (bool(config.get("maf")) and bool((samples["maf_sample"] != "").any())),
        "expression": (bool(config.get("expression")) and bool((samples["rna_sample"] != "").any()))
        or ("rna_file" in samples.columns and bool((samples["rna_file"] != "").any())),
        "imaging": bool((samples["image"] != "").any()),
    }
    for name in config.get("tables") or {}:
        if provided.get(name):
            raise MultimodalError(
                f"{source}: tables.{name}: modality {name!r} also comes from the samples sheet's files; "
                f"give it one way (or name the table differently, e.g. {name}_table)"
            )
    return provided


def guarded_directories(config: dict) -> list[Path]:
    """The directories whose outputs a failed run must leave as they were: results, and the demo's inputs."""
    directories = [Path(config["outdir"])]
    if config["simulate"]["enabled"]:
        directories.append(Path(config["simulate"]["outdir"]))
    return directories


_FAILED_RULE = re.compile(r"^Error in rule (\S+?):\s*$")
_RULE_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?\s*$")
_VERB_ERROR = re.compile(r"^multimodal [\w ]+?: (?:unexpected )?error: ")


def failed_rules(transcript: list[str]) -> list[tuple[str, list[str]]]:
    """Each failed rule in Snakemake's output, with the log files it names, in the order they failed."""
    failures: list[tuple[str, list[str]]] = []
    for line in transcript:
        rule = _FAILED_RULE.match(line)
        if rule:
            failures.append((rule.group(1), []))
            continue
        logged = _RULE_LOG.match(line)
        if logged and failures and not failures[-1][1]:
            failures[-1][1].extend(p.strip() for p in logged.group(1).split(","))
    return failures


def error_line(log_file: str | Path) -> str | None:
    """The verb's one-line error in a rule's log (the last one), else the log's last non-blank line."""
    try:
        lines = [ln.strip() for ln in Path(log_file).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    verb_errors = [ln for ln in lines if _VERB_ERROR.match(ln)]
    if verb_errors:
        return _VERB_ERROR.sub("", verb_errors[-1])
    return lines[-1] if lines else None


def failure_summary(transcript: list[str]) -> str:
    """One line for the end of a failed run: the failing rule's own error, then where its log is."""
    failures = failed_rules(transcript)
    if not failures:
        # Snakemake stopped before any job: the Snakefile, the config or the DAG. Its own message.
        reasons = [ln.strip() for ln in transcript if re.search(r"(Error|Exception)\b.*:", ln) and ln.strip()]
        reason = reasons[-1] if reasons else (transcript[-1].strip() if transcript else "no output")
        return f"Snakemake stopped before running any rule: {reason}"
    rule, logs = failures[0]  # the first to fail; the others are counted, their logs not read
    cause = next((e for e in map(error_line, logs) if e), None)
    where = f" (log: {', '.join(logs)})" if logs else ""
    more = f" [and {len(failures) - 1} more failed rule(s) above]" if len(failures) > 1 else ""
    return f"rule {rule}: {cause or 'failed'}{where}{more}"


_RULE_START = re.compile(r"^(?:local)?rule (\S+?):\s*$")
_JOB_LOG = re.compile(r"^\s+log: (.+?)\s*$")
_JOB_ID = re.compile(r"^\s+jobid: (\d+)\s*$")
_JOB_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+?)\)\s*$")
_STEPS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done\s*$")
_FOLD_LINE = re.compile(r"\b(fold \d+: C-index .*)$")
_TOTAL_JOBS = re.compile(r"^total\s+(\d+)\s*$")


class _Progress:
    """Turns Snakemake's output into a few lines: stages as they start and finish, each fold's C-index as the
    train verb logs it (read from the running jobs' own log files), without Snakemake's job listings."""

    def __init__(self, emit) -> None:
        self.emit = emit
        self.total: int | None = None
        self.jobs: dict[str, str] = {}  # jobid -> rule
        self.logs: dict[Path, int] = {}  # log files of running jobs -> bytes read
        self._rule: str | None = None
        self._logs: list[Path] = []
        self._done_rule: str | None = None
        self.polled = 0.0

    def line(self, text: str) -> None:
        """Take one line of Snakemake's output."""
        if (total := _TOTAL_JOBS.match(text)) and self.total is None:
            self.total = int(total.group(1))
            self.emit(f"{self.total} job(s) to run")
        elif text.startswith("Nothing to be done"):
            self.emit("nothing to do: every output is up to date")
        elif rule := _RULE_START.match(text):
            self._rule, self._logs = rule.group(1), []
        elif self._rule and (logged := _JOB_LOG.match(text)):
            self._logs = [Path(p.strip()) for p in logged.group(1).split(",")]
        elif self._rule and (job := _JOB_ID.match(text)):
            self.jobs[job.group(1)] = self._rule
            if self._rule != "all":
                self.emit(f"started {self._rule}")
            for path in self._logs:
                self.logs.setdefault(path, 0)
            self._rule = None
        elif done := _JOB_DONE.match(text):
            self._done_rule = done.group(2)
            self.poll()  # the fold lines the job wrote before it finished
        elif (steps := _STEPS.match(text)) and self._done_rule:
            if self._done_rule != "all":
                self.emit(f"[{steps.group(1)}/{steps.group(2)}] {self._done_rule} done")
            self._done_rule = None

    def poll(self) -> None:
        """Report the new fold C-index lines in the running jobs' log files."""
        self.polled = time.monotonic()
        for path, offset in list(self.logs.items()):
            try:
                size = path.stat().st_size
                if size < offset:  # the job rewrote its log
                    offset = 0
                if size == offset:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
            self.logs[path] = offset + complete
            for raw in chunk[:complete].decode("utf-8", errors="replace").splitlines():
                fold = _FOLD_LINE.search(raw)
                if fold:
                    self.emit(f"train: {fold.group(1)}")


def _stream(command: list[str], env: dict[str, str], *, transcript_path: Path | None = None) -> tuple[int, list[str]]:
    """Run ``command``; return its exit code and output lines.

    With ``transcript_path`` the full output goes there as it comes and the terminal gets stage progress
    and each fold's C-index (:class:`_Progress`); without it, the output is echoed to stderr as is.
    """
    import queue
    import threading

    transcript: list[str] = []
    progress = _Progress(lambda text: log.info("%s", text))
    handle = None
    if transcript_path is not None:
        transcript_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(transcript_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    try:
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        ) as process:
            assert process.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()

            def read() -> None:
                for line in process.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=read, daemon=True).start()
            try:
                while True:
                    try:
                        line = lines.get(timeout=1.0)
                    except queue.Empty:
                        progress.poll()
                        continue
                    if line is None:
                        break
                    transcript.append(line.rstrip("\n"))
                    if handle is None:
                        sys.stderr.write(line)
                    else:
                        handle.write(line)
                        handle.flush()
                        progress.line(transcript[-1])
                        if time.monotonic() - progress.polled >= 1.0:  # a chatty run still shows fold lines
                            progress.poll()
            except KeyboardInterrupt:  # Snakemake got the same signal: let it stop its jobs and clean up
                process.wait()
                raise
            progress.poll()
            return process.wait(), transcript
    finally:
        if handle is not None:
            handle.close()


def run_summary(outdir: Path) -> str | None:
    """The closing line of a finished run: the fusion model's C-index against the references, and the report."""
    import json

    parts = []
    try:
        metrics = json.loads((outdir / "model" / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    if isinstance(metrics, dict):

        def fmt(value) -> str:
            return f"{value:.3f}" if isinstance(value, int | float) and value == value else "n/a"

        pooled = (metrics.get("pooled_out_of_fold") or {}).get("c_index")
        mean, sd = (metrics.get("mean") or {}).get("c_index"), (metrics.get("sd") or {}).get("c_index")
        text = f"C-index {fmt(mean)} ± {fmt(sd)} over folds (pooled {fmt(pooled)})"
        baseline = metrics.get("baseline") or {}
        against = [
            f"{label} {fmt(entry.get('mean_c_index'))}"
            for key, label in (("penalised_cox", "penalised Cox"), ("clinical_cox", "clinical-only Cox"))
            if isinstance(entry := baseline.get(key), dict) and not entry.get("skipped")
        ]
        parts.append(text + (f" against {', '.join(against)}" if against else " (no baseline fitted)"))
    report = outdir / "report.html"
    if report.is_file():
        parts.append(f"report: {report}")
    return "; ".join(parts) or None


def run_workflow(
    *, config: Path, cores: int, snakefile: Path | None = None, dry_run: bool = False, extra: list[str] | None = None
) -> int:
    """Run Snakemake in the current directory, after checking the config and its inputs; returns 0.

    A failed run leaves every earlier output as it was (:mod:`multimodal.rollback`) and ends with one
    line: the failing rule's own error and where its log is. Progress is logged at INFO (``-q`` hides it);
    a dry run echoes Snakemake's job listing as is.
    """
    from multimodal.rollback import Snapshot

    settings = check_inputs(config)
    command = snakemake_command(config=config, cores=cores, snakefile=snakefile, dry_run=dry_run, extra=extra)
    log.info("running: %s", " ".join(command))
    # Rules call `multimodal`: make this installation's scripts directory come first on PATH.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    locked_before = any(Path(".snakemake/locks").glob("*"))
    # Another run holding the directory may be writing these outputs: then guard nothing (Snakemake refuses).
    snapshots = [] if locked_before else [Snapshot.take(d) for d in guarded_directories(settings)]
    returncode = 1
    try:
        transcript_path = None if dry_run else Path(settings["outdir"]) / "logs" / "run.log"
        if transcript_path is not None:
            log.info("Snakemake's full output: %s", transcript_path)
        returncode, transcript = _stream(command, env, transcript_path=transcript_path)
    finally:
        restored = [unit for s in snapshots for unit in s.restore()] if returncode else []
        for snapshot in snapshots:
            snapshot.discard()
        if restored:
            log.warning(
                "the failed run changed nothing: %d earlier output(s) put back as they were (%s)",
                len(restored),
                ", ".join(sorted(os.path.relpath(u) for u in restored)[:5]),
            )
    if returncode and (locked_before or any(Path(".snakemake/locks").glob("*"))):
        # Snakemake removes its own locks when it stops, even on a failed rule: locks left now are another
        # run's, still going or killed outright (kill -9, out of memory, a lost node).
        raise MultimodalError(
            f"{Path.cwd()} is locked by another Snakemake run; if none is running (it was killed), unlock with: "
            f"multimodal run --config {config} -- --unlock",
            exit_code=returncode,
        )
    if returncode:
        raise MultimodalError(failure_summary(transcript), exit_code=returncode)
    if not dry_run:
        summary = run_summary(Path(settings["outdir"]))
        if summary:
            log.info("done: %s", summary)
    return 0
