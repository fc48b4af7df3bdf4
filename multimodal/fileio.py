"""Atomic writes and file fingerprints shared by every stage.

Every output is built beside its final path and renamed into place, so a failed run never leaves a
half-written file or store, and an existing output is only replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: A partial output older than this is from a run that was killed, not one still writing beside us.
STALE_PARTIAL_SECONDS = 6 * 3600


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``, else remove it.

    Works for files and directories (e.g. a Zarr store). An existing ``final`` is kept until the
    new one is complete, then swapped out.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.partial"):  # left by a run killed outright (kill -9, OOM)
        if _is_abandoned(stale, prefix=f".{final.name}."):
            shutil.rmtree(stale, ignore_errors=True)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner}.", suffix=".partial", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written")
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _is_abandoned(partial: Path, *, prefix: str) -> bool:
    """Whether a partial output's writer is gone: a dead process on this host, or too old to be alive."""
    try:
        age = time.time() - partial.stat().st_mtime
    except OSError:
        return False
    owner = partial.name.removeprefix(prefix).removesuffix(".partial").rpartition(".")[0]  # host-pid
    host, _, pid = owner.rpartition("-")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return age > STALE_PARTIAL_SECONDS


def sha256sum(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
