"""Stage manifests and ``multimodal verify``: does a results directory still match what its stages wrote?

At the end of every stage that writes an output (``ingest *``, ``assemble``, ``train``, ``explain``,
``report``) the CLI writes a manifest beside it, ``<output's directory>/manifests/<output name>.json``::

    {"format": "multimodal-manifest/1", "stage": "train", "command": "multimodal train --store ...",
     "versions": {"python": ..., "torch": ...}, "output": "model",
     "files": {"fold_0/model_0.ckpt": "<sha256>", ...}, "inputs": {"results/demo/...": "<sha256>", ...}}

``output`` is relative to the manifest's parent directory; ``files`` to the output (a file output has the
single key ``.``); ``inputs`` are the regular files named on the command line, relative to the working
directory the stage ran in (absolute when outside it). The command has the same relative paths, so a
manifest reads the same in a partner's clone. Nothing time-dependent is recorded: two identical runs give
identical manifests.

:func:`verify_results` re-hashes every output file and input of every manifest under a results directory,
and the input files named in the cohort store's provenance (``uns/provenance/inputs``), and lists each
difference with its location.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path, sha256sum

MANIFEST_FORMAT = "multimodal-manifest/1"
MANIFEST_DIR = "manifests"
#: Files that tools add to an output after the stage (Snakemake marks directory outputs with a timestamp).
IGNORED_NAMES = frozenset({".snakemake_timestamp"})


@dataclass(frozen=True)
class Drift:
    """One difference between a results directory and its manifests: where, and what."""

    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.problem}"


def relative_to_workdir(value: str, workdir: Path | None = None) -> str:
    """``value`` relative to the working directory when it is a path inside it; otherwise unchanged."""
    workdir = (workdir or Path.cwd()).resolve()
    if not value or not os.path.isabs(value):
        return value
    try:
        return str(Path(value).resolve().relative_to(workdir))
    except ValueError:
        return value


def relative_command(argv: Sequence[str], program: str = "multimodal") -> str:
    """The command line as ``program`` followed by ``argv[1:]``, absolute paths inside the working directory
    made relative: no venv or checkout location in what a stage records."""
    return " ".join([program, *(relative_to_workdir(str(a)) for a in list(argv)[1:])])


def output_files(output: Path) -> dict[str, str]:
    """sha256 of every file of ``output``, by path relative to it (``.`` for a file output)."""
    if output.is_file():
        return {".": sha256sum(output)}
    found = {}
    for root, dirs, files in os.walk(output):
        dirs.sort()
        for name in sorted(files):
            if name in IGNORED_NAMES:
                continue
            path = Path(root, name)
            found[path.relative_to(output).as_posix()] = sha256sum(path)
    return found


def manifest_path(output: Path) -> Path:
    """Where the manifest of ``output`` goes: ``<output's directory>/manifests/<output name>.json``."""
    return output.parent / MANIFEST_DIR / f"{output.name}.json"


def write_manifest(
    output: str | Path, *, stage: str, command: str, inputs: Iterable[str | Path], versions: dict[str, str]
) -> Path:
    """Hash ``output`` (a file or a directory) and its input files into its manifest, atomically."""
    output = Path(output)
    if not output.exists():
        raise MultimodalError(f"{output}: the stage's output is missing; no manifest written")
    named = {}
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.resolve() != output.resolve():
            named[relative_to_workdir(str(path.absolute()))] = sha256sum(path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": stage,
        "command": command,
        "versions": versions,
        "output": output.name,
        "files": output_files(output),
        "inputs": dict(sorted(named.items())),
    }
    target = manifest_path(output)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return target


def _argument_files(value) -> list[Path]:
    values = value if isinstance(value, list | tuple) else [value]
    found = []
    for item in values:
        if isinstance(item, list | tuple):  # e.g. --table NAME=PATH parsed into (name, path)
            found.extend(_argument_files(list(item)))
        elif isinstance(item, str | Path) and str(item) and Path(item).is_file():
            found.append(Path(item))
    return found


def write_stage_manifest(args, argv: Sequence[str] | None = None) -> Path | None:
    """The manifest of the verb just run (``args`` from the CLI parser): its ``--out``, every regular file
    among its arguments as inputs, its command with relative paths and the package versions."""
    from multimodal.store import package_versions

    out = getattr(args, "out", None)
    if out is None or not Path(out).exists():
        return None
    stage = " ".join(s for s in (args.verb, getattr(args, "modality", None)) if s)
    inputs = [p for key, value in sorted(vars(args).items()) if key != "out" for p in _argument_files(value)]
    argv = list(sys.argv if argv is None else ["multimodal", *argv])
    return write_manifest(out, stage=stage, command=relative_command(argv), inputs=inputs, versions=package_versions())


def find_manifests(results: Path) -> list[Path]:
    """Every stage manifest under ``results``."""
    return sorted(p for p in results.rglob(f"{MANIFEST_DIR}/*.json") if p.is_file())


def _check_files(label: str, recorded: dict[str, str], base: Path, *, extra: bool) -> list[Drift]:
    drifts = []
    if not base.exists():
        return [Drift(label, "missing")]
    now = output_files(base) if base.is_dir() else {".": sha256sum(base)}
    for name, digest in recorded.items():
        location = label if name == "." else f"{label}/{name}"
        if name not in now:
            drifts.append(Drift(location, "missing"))
        elif now[name] != digest:
            drifts.append(Drift(location, f"sha256 {now[name][:12]}... differs from the recorded {digest[:12]}..."))
    if extra:
        for name in sorted(set(now) - set(recorded)):
            drifts.append(Drift(f"{label}/{name}", "not in the manifest (added after the stage)"))
    return drifts


#: A pseudonym (multimodal/privacy.py) inside a recorded file name: the real name is not recorded.
PSEUDONYM = re.compile(r"(?<![A-Za-z0-9])ps[0-9a-f]{20}(?![A-Za-z0-9])")


def _check_inputs(label: str, inputs: dict[str, str], workdir: Path, skipped: list[str] | None = None) -> list[Drift]:
    drifts = []
    for name, digest in inputs.items():
        path = Path(name) if os.path.isabs(name) else workdir / name
        if not path.is_file() and skipped is not None and PSEUDONYM.search(name):
            skipped.append(name)  # a pseudonymised store names per-patient inputs by pseudonym: not checkable
        elif not path.is_file():
            drifts.append(Drift(name, f"input missing ({label})"))
        elif (now := sha256sum(path)) != digest:
            problem = f"input sha256 {now[:12]}... differs from the recorded {digest[:12]}... ({label})"
            drifts.append(Drift(name, problem))
    return drifts


def store_provenance_inputs(store: Path) -> dict[str, str]:
    """The input files and sha256s recorded in a cohort store's ``uns/provenance/inputs`` (read alone, so a
    damaged array elsewhere in the store does not stop the check)."""
    import zarr
    from anndata.io import read_elem

    group = zarr.open_group(str(store), mode="r")
    try:
        table = read_elem(group["uns/provenance/inputs"])
    except KeyError:
        return {}
    return {str(p): str(s) for p, s in zip(table["path"], table["sha256"], strict=True)}


def verify_results(
    results: str | Path, *, workdir: str | Path | None = None, skipped: list[str] | None = None
) -> tuple[list[Drift], int]:
    """Every difference between ``results`` and its stage manifests (outputs, inputs) and between the cohort
    store's provenance inputs and the files now; with the number of files checked. Provenance inputs whose
    recorded name is pseudonymised (privacy.pseudonymise) and so not found are appended to ``skipped``."""
    skipped = [] if skipped is None else skipped
    results = Path(results)
    workdir = Path(workdir) if workdir else Path.cwd()
    if not results.is_dir():
        raise MultimodalError(f"{results}: not a directory")
    manifests = find_manifests(results)
    if not manifests:
        raise MultimodalError(f"{results}: no stage manifests (*/{MANIFEST_DIR}/*.json) to verify against")
    drifts: list[Drift] = []
    checked = 0
    for path in manifests:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            drifts.append(Drift(str(path), f"unreadable manifest: {exc}"))
            continue
        if manifest.get("format") != MANIFEST_FORMAT:
            drifts.append(Drift(str(path), f"not a {MANIFEST_FORMAT} manifest"))
            continue
        output = path.parent.parent / manifest["output"]
        drifts += _check_files(str(output), manifest["files"], output, extra=True)
        drifts += _check_inputs(f"{manifest['stage']} input", manifest["inputs"], workdir)
        checked += len(manifest["files"]) + len(manifest["inputs"])
    for store in sorted({p.parent.parent / "cohort.zarr" for p in manifests}):
        if (store / "zarr.json").is_file():
            inputs = store_provenance_inputs(store)
            before = len(skipped)
            drifts += _check_inputs(f"provenance of {store}", inputs, workdir, skipped)
            checked += len(inputs) - (len(skipped) - before)
    unique = list(dict.fromkeys(drifts))
    return unique, checked
