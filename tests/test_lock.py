"""requirements.lock: a fresh venv built from it (uv, hashes checked) reproduces the reduced demo's metrics,
predictions and attributions byte for byte against this venv's run. The venv is cached under
~/.cache/multimodal/lock-venv-<sha256 of the lock> and rebuilt when the lock changes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import reduced_demo as demo

LOCK = demo.REPO / "requirements.lock"
#: Where the CPU build of torch comes from: this machine's wheel directory, else PyTorch's CPU index.
TORCH_SOURCES = (
    ["--find-links", "/opt/wheels"]
    if Path("/opt/wheels").is_dir()
    else ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]
)
TARGETS = ("results/demo/explain",)


def pins(text: str) -> dict[str, str]:
    return {
        re.sub(r"[-_.]+", "-", name.lower()): version
        for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+)", text, flags=re.M)
    }


def test_lock_pins_everything_with_hashes_and_the_cpu_torch():
    text = LOCK.read_text()
    pinned = pins(text)
    assert pinned["torch"] == "2.13.0+cpu"
    assert not [name for name in pinned if name.startswith(("nvidia-", "triton"))], "CUDA wheels in the lock"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1] if text.startswith("#") else text)
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    for name in ("lightning", "captum", "zarr", "snakemake", "numpy", "snakemake-executor-plugin-slurm", "snakefmt"):
        assert name in pinned, name
    # the lock agrees with pyproject's own pins
    pyproject = (demo.REPO / "pyproject.toml").read_text()
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', pyproject):
        key = re.sub(r"[-_.]+", "-", name.lower())
        assert pinned.get(key, "").split("+")[0] == version, (name, version, pinned.get(key))


def locked_venv() -> Path:
    """The cached venv built from requirements.lock (built on first use)."""
    key = demo.digest(LOCK)[:16]
    venv = Path.home() / ".cache" / "multimodal" / f"lock-venv-{key}"
    python = venv / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install uv==0.13.8, in the test extras)")
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
        sync = [uv, "pip", "sync", "-q", "--python", str(python), "--require-hashes", *TORCH_SOURCES, str(LOCK)]
        done = subprocess.run(sync, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        (venv / ".complete").write_text(key)
    # the project itself from this checkout, without touching the locked dependencies
    install = [uv, "pip", "install", "-q", "--python", str(python), "--no-deps", "-e", str(demo.REPO)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_a_venv_from_the_lock_reproduces_the_demo_byte_for_byte(tmp_path):
    venv = locked_venv()
    cohort = tmp_path / "cohort"
    demo.simulate(cohort, patients=30)
    runs = {}
    for name, bindir in (("main", demo.BIN), ("locked", venv / "bin")):
        workdir = tmp_path / name
        shutil.copytree(cohort / "demo", workdir / "demo")
        demo.write_config(workdir, model={"baseline": False, "bootstrap": 10, "epochs": 3})
        env = demo.environment()
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
        command = [str(bindir / "snakemake"), "--snakefile", str(demo.REPO / "Snakefile"), "--configfile"]
        command += ["reduced.yaml", "--cores", "2", *TARGETS]
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        manifest = (workdir / "results/demo/manifests/model.json").read_text()
        assert str(bindir) not in manifest
        runs[name] = workdir / "results" / "demo"
    for part in ("model", "explain"):
        ours, theirs = (demo.tree_digests(r / part, skip=(".snakemake_timestamp", ".ckpt")) for r in runs.values())
        assert ours == theirs, part
    checkpoints = sorted((runs["main"] / "model").rglob("*.ckpt"))
    assert checkpoints and all(
        demo.same_checkpoints(c, runs["locked"] / "model" / c.relative_to(runs["main"] / "model")) for c in checkpoints
    )
    for name in ("metrics.json", "predictions.tsv"):
        assert (runs["main"] / "model" / name).read_bytes() == (runs["locked"] / "model" / name).read_bytes()


#: conda-forge names of pyproject's packages where they differ; packages conda does not need (the cluster
#: executor plugin: Snakemake's own host environment has it) are None.
CONDA_NAMES = {"torch": "pytorch", "snakemake": "snakemake-minimal", "snakemake-executor-plugin-slurm": None}


def test_conda_environment_pins_what_pyproject_pins():
    """envs/multimodal.yaml (for --use-conda; conda channels cannot be reached here, so it is checked, not
    built) pins every pyproject dependency at the same version, and installs the package post-deploy."""
    import yaml

    env = yaml.safe_load((demo.REPO / "envs" / "multimodal.yaml").read_text())
    conda = {}
    for item in env["dependencies"]:
        for spec in item["pip"] if isinstance(item, dict) else [item]:
            parts = re.split(r"==|>=|=", spec, maxsplit=1)
            name = re.sub(r"\[.*\]", "", parts[0])  # a pip requirement's extras, e.g. bio2zarr[vcf]
            conda[re.sub(r"[-_.]+", "-", name.lower())] = parts[1] if len(parts) > 1 else ""
    pyproject = (demo.REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', pyproject):
        key = re.sub(r"[-_.]+", "-", name.lower())
        key = CONDA_NAMES.get(key, key)
        if key is not None:
            assert conda.get(key) == version, (name, version, conda.get(key))
    script = demo.REPO / "envs" / "multimodal.post-deploy.sh"
    assert os.access(script, os.X_OK) and "pip install --no-deps" in script.read_text()
