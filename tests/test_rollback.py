"""The snapshot `multimodal run` takes of its results: what a failed run removed or replaced comes back,
with Snakemake's record of it; what it made new stays; logs keep the failed run's version."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

from multimodal.rollback import Snapshot, output_units, recover_abandoned


def record(workdir: Path, output: str, content: str) -> Path:
    """A Snakemake metadata record for ``output`` where Snakemake's file persistence keeps it."""
    path = workdir / ".snakemake/metadata" / base64.urlsafe_b64encode(output.encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def finished_results(workdir: Path) -> Path:
    out = workdir / "results"
    (out / "cohort.zarr/mod").mkdir(parents=True)
    (out / "cohort.zarr/.snakemake_timestamp").write_text("")
    (out / "cohort.zarr/mod/x").write_text("old array")
    (out / "interim/variants").mkdir(parents=True)
    (out / "interim/variants/chunk_0.h5ad").write_text("old chunk")
    (out / "report.html").write_text("old report")
    (out / "logs").mkdir()
    (out / "logs/assemble.log").write_text("old log")
    return out


def test_units_are_files_and_marked_directories(tmp_path):
    out = finished_results(tmp_path)
    (out / ".report.html.host-1.abc.partial").mkdir()
    units = {str(u.relative_to(out)) for u in output_units(out)}
    assert units == {"cohort.zarr", "interim/variants/chunk_0.h5ad", "report.html"}


def test_failed_run_changes_are_undone_with_their_records(tmp_path):
    out = finished_results(tmp_path)
    store_record = record(tmp_path, "results/cohort.zarr", '{"params": ["old"]}')
    snapshot = Snapshot.take(out, workdir=tmp_path)
    # what a failed run does: Snakemake removes the store and records the new parameters, a successful
    # job replaces the report, a new chunk appears, the log is rewritten
    import shutil

    shutil.rmtree(out / "cohort.zarr")
    store_record.write_text('{"params": ["new"]}')
    (out / "report.html").unlink()
    (out / "report.html").write_text("new report")
    (out / "interim/variants/chunk_1.h5ad").write_text("new chunk")
    (out / "logs/assemble.log").write_text("new log: the error")
    restored = snapshot.restore()
    snapshot.discard()
    assert sorted(p.name for p in restored) == ["cohort.zarr", "report.html"]
    assert (out / "cohort.zarr/mod/x").read_text() == "old array"
    assert (out / "cohort.zarr/.snakemake_timestamp").exists()
    assert (out / "report.html").read_text() == "old report"
    assert store_record.read_text() == '{"params": ["old"]}'
    assert (out / "interim/variants/chunk_1.h5ad").read_text() == "new chunk"  # kept: a later run reuses it
    assert (out / "logs/assemble.log").read_text() == "new log: the error"
    assert not list(out.glob(".multimodal-snapshot*"))


def test_a_record_made_by_the_failed_run_goes(tmp_path):
    out = finished_results(tmp_path)
    snapshot = Snapshot.take(out, workdir=tmp_path)
    (out / "report.html").unlink()
    new_record = record(tmp_path, "results/report.html", '{"params": ["new"]}')
    snapshot.restore()
    assert (out / "report.html").read_text() == "old report"
    assert not new_record.exists()


def test_untouched_results_are_not_rewritten(tmp_path):
    out = finished_results(tmp_path)
    before = (out / "report.html").stat().st_ino
    snapshot = Snapshot.take(out, workdir=tmp_path)
    assert snapshot.restore() == []
    snapshot.discard()
    assert (out / "report.html").stat().st_ino == before


def test_a_killed_runs_snapshot_gives_back_what_is_missing(tmp_path):
    out = finished_results(tmp_path)
    # a snapshot owned by a process that is gone (kill -9 of `multimodal run` while Snakemake had
    # removed the store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    stale = out / f".multimodal-snapshot.{socket.gethostname()}-{dead.stdout.strip()}.x1.partial"
    (stale / "files/cohort.zarr/mod").mkdir(parents=True)
    (stale / "files/cohort.zarr/.snakemake_timestamp").write_text("")
    (stale / "files/cohort.zarr/mod/x").write_text("old array")
    (stale / "files/report.html").write_text("stale copy")
    os.rename(out / "cohort.zarr", tmp_path / "gone")
    time.sleep(0.01)
    recovered = recover_abandoned(out, workdir=tmp_path)
    assert [p.name for p in recovered] == ["cohort.zarr"]
    assert (out / "cohort.zarr/mod/x").read_text() == "old array"
    assert (out / "report.html").read_text() == "old report"  # present: the killed run's or the old one, kept
    assert not stale.exists()
