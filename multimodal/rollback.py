"""A failed run leaves earlier results as they were.

Snakemake deletes a job's old outputs before running it again, and the outputs of a job that fails: a
rerun that fails on a broken input would lose the finished store, model and report of the previous run.
Snakemake's own ``update()`` flag avoids the deletion only by copying every output before every job
(doubling the disk a large store needs), and it leaves Snakemake's records of the failed job's
parameters behind. So ``multimodal run`` guards its result directories itself: before Snakemake starts,
every output is hard-linked into a snapshot (no data copied: our writers replace files by rename, never
in place, so a link keeps the old bytes); if the run fails, each output that existed before and is now
gone or replaced is put back, with Snakemake's metadata record of it as it was, so the next run decides
what to redo exactly as it would have before the failed one. Outputs the failed run made where there
were none are kept (a later run reuses them); logs and benchmarks keep the failed run's version.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from multimodal.fileio import _is_abandoned

log = logging.getLogger(__name__)

#: Top-level entries of a guarded directory that belong to the run, not to its results.
UNGUARDED = frozenset({"logs", "benchmarks"})
#: Snakemake writes this marker into every ``directory()`` output: such a directory is one output.
DIRECTORY_OUTPUT_MARKER = ".snakemake_timestamp"
_PREFIX = ".multimodal-snapshot."

Signature = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def _signature(path: Path) -> Signature:
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _tree_signature(path: Path) -> dict[str, Signature] | None:
    """Each file under ``path`` (or ``path`` itself) by relative name; None when nothing is there."""
    if path.is_symlink() or path.is_file():
        return {"": _signature(path)}
    if not path.is_dir():
        return None
    return {str(f.relative_to(path)): _signature(f) for f in sorted(path.rglob("*")) if f.is_file()}


def output_units(directory: Path) -> list[Path]:
    """The outputs under ``directory``: files, and directories Snakemake marked as one output.

    Hidden top-level entries (partial writes, snapshots) and the run's ``logs``/``benchmarks`` are not results.
    """
    units: list[Path] = []

    def walk(folder: Path, top: bool) -> None:
        for entry in sorted(folder.iterdir()):
            if top and (entry.name in UNGUARDED or entry.name.startswith(".")):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if (entry / DIRECTORY_OUTPUT_MARKER).exists():
                    units.append(entry)
                else:
                    walk(entry, top=False)
            elif not entry.name.startswith("."):
                units.append(entry)

    if directory.is_dir():
        walk(directory, top=True)
    return units


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link ``source`` (a file or a tree) to ``target``; copy where the file system cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, copy_function=_link_or_copy, symlinks=True)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # no hard links here (some network or FAT file systems): a real copy
        shutil.copy2(source, target)


# --- Snakemake's metadata records -----------------------------------------------------------------
# Snakemake's file persistence keeps one JSON record per output under .snakemake/metadata, named by the
# URL-safe base64 of the output path, split into 255-character folder names prefixed with "@" when long.


def _record_key(record: Path, root: Path) -> str | None:
    parts = record.relative_to(root).parts
    encoded = "".join(p.removeprefix("@") for p in parts[:-1]) + parts[-1]
    try:
        return base64.urlsafe_b64decode(encoded.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _records_inside(metadata: Path, directory: Path, workdir: Path) -> dict[Path, Path]:
    """Record file by the output path it describes (absolute), for outputs inside ``directory``."""
    found: dict[Path, Path] = {}
    if not metadata.is_dir():
        return found
    for record in metadata.rglob("*"):
        if not record.is_file():
            continue
        key = _record_key(record, metadata)
        if key is None:
            continue
        output = Path(os.path.normpath(workdir / key))
        if output.is_relative_to(directory):
            found[output] = record
    return found


@dataclass
class Snapshot:
    """Links to one directory's outputs and copies of Snakemake's records of them, taken before a run."""

    directory: Path
    path: Path
    workdir: Path
    units: dict[Path, dict[str, Signature]] = field(default_factory=dict)
    records: dict[Path, tuple[Path, bytes]] = field(default_factory=dict)

    @property
    def metadata(self) -> Path:
        return self.workdir / ".snakemake" / "metadata"

    @classmethod
    def take(cls, directory: str | os.PathLike[str], *, workdir: str | os.PathLike[str] = ".") -> Snapshot:
        directory, workdir = Path(directory).resolve(), Path(workdir).resolve()
        recover_abandoned(directory, workdir=workdir)
        directory.mkdir(parents=True, exist_ok=True)
        owner = f"{socket.gethostname()}-{os.getpid()}"
        path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{owner}.", suffix=".partial", dir=directory))
        snapshot = cls(directory=directory, path=path, workdir=workdir)
        for unit in output_units(directory):
            signature = _tree_signature(unit)
            if signature is None:
                continue
            _link_tree(unit, snapshot._copy_of(unit))
            snapshot.units[unit] = signature
        for output, record in _records_inside(snapshot.metadata, directory, workdir).items():
            snapshot.records[output] = (record, record.read_bytes())
        return snapshot

    def _copy_of(self, unit: Path) -> Path:
        return self.path / "files" / unit.relative_to(self.directory)

    def changed(self) -> list[Path]:
        """Outputs that existed at the snapshot and are now gone or replaced."""
        return [unit for unit, signature in self.units.items() if _tree_signature(unit) != signature]

    def restore(self) -> list[Path]:
        """Put back every changed output and Snakemake's record of it; return them."""
        restored = self.changed()
        current_records = _records_inside(self.metadata, self.directory, self.workdir)
        for unit in restored:
            if unit.is_symlink() or unit.is_file():
                unit.unlink()
            elif unit.exists():
                shutil.rmtree(unit)
            unit.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._copy_of(unit), unit)
            if unit in current_records:
                current_records[unit].unlink()
            if unit in self.records:
                record, content = self.records[unit]
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_bytes(content)
            for marker in _records_inside(self.workdir / ".snakemake" / "incomplete", unit, self.workdir).values():
                marker.unlink()
        return restored

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def recover_abandoned(directory: Path, *, workdir: Path) -> list[Path]:
    """Put back outputs lost while a ``multimodal run`` that was killed outright held a snapshot.

    Only outputs now missing are restored (the killed run may have finished others); then the snapshot
    goes. Records are not known for these, so Snakemake will check them by modification time alone.
    """
    recovered: list[Path] = []
    if not directory.is_dir():
        return recovered
    for stale in directory.glob(f"{_PREFIX}*.partial"):
        if not _is_abandoned(stale, prefix=_PREFIX):
            continue
        files = stale / "files"
        if files.is_dir():
            for copy in output_units(files):
                unit = directory / copy.relative_to(files)
                if not unit.exists():
                    unit.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(copy, unit)
                    recovered.append(unit)
        shutil.rmtree(stale, ignore_errors=True)
        if recovered:
            log.warning("put back %d outputs lost by a killed run: %s", len(recovered), ", ".join(map(str, recovered)))
    return recovered
