"""The demo workflow at reduced size, run through plain Snakemake: shared by the SLURM, verify, reproducibility
and privacy tests (issue 13). A cohort of 40 simulated patients in real file formats, 2 folds, a few epochs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MODEL = {"folds": 2, "seed": 7, "epochs": 4, "max_features": {"expression": 10, "variants": 8, "imaging": 5}}
SETTINGS = {
    "samples": "demo/samples.tsv",
    "clinical": "demo/clinical.tsv",
    "expression": "demo/expression_counts.tsv",
    "outdir": "results/demo",
    "ingest": {"chunk_size": 20, "variant_chunk_size": 20},  # several jobs of each on 30-40 patients
    "model": MODEL,
    "explain": {"n_steps": 8},
}


def simulate(workdir: Path, patients: int = 40, seed: int = 7) -> None:
    """The demo cohort's files, written by ``multimodal simulate`` into ``workdir/demo``."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "multimodal"), "simulate", "-q", "--out", "demo", "--patients", str(patients)]
    command += ["--seed", str(seed), "--image-size", "16"]
    subprocess.run(command, cwd=workdir, check=True, capture_output=True, text=True, timeout=300)


def write_config(workdir: Path, **overrides) -> Path:
    """``workdir/reduced.yaml``: the reduced demo's settings with ``overrides`` merged in (one level deep)."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SETTINGS.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = workdir / "reduced.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's bin directory first on PATH (the rules call ``multimodal``), no progress bars."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MULTIMODAL_NO_PROGRESS"] = "1"
    env.update(extra)
    return env


def snakemake(workdir: Path, *args: str, timeout: int = 2400, env: dict | None = None, check: bool = True):
    """Plain ``snakemake`` on the repository's Snakefile with ``workdir/reduced.yaml``, in ``workdir``."""
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--configfile", "reduced.yaml"]
    command += list(args)
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env or environment()
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path, leaving out paths containing any of ``skip``."""
    return {
        str(p.relative_to(root)): digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(s in str(p.relative_to(root)) for s in skip)
    }


def checkpoint_weights(path: Path) -> dict:
    """A Lightning checkpoint's weights and hyperparameters (its bytes also hold the optimiser, loop and
    callbacks' states)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return {"state_dict": checkpoint["state_dict"], "hyper_parameters": checkpoint.get("hyper_parameters")}


def same_checkpoints(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical weights and the same hyperparameters."""
    import torch

    x, y = checkpoint_weights(a), checkpoint_weights(b)
    if set(x["state_dict"]) != set(y["state_dict"]) or repr(x["hyper_parameters"]) != repr(y["hyper_parameters"]):
        return False
    return all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])
