"""Reproducibility at the workflow level, on the reduced demo: two runs from scratch (one with --cores 2, one
with --cores 1) give the same cohort store (arrays and metadata; the creation time aside), the same metrics,
predictions and attributions, and the same stage manifests; a workflow killed outright (SIGKILL to the whole
process group) in the middle of training, then rerun, redoes only what was unfinished and ends identical."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import reduced_demo as demo

pytestmark = pytest.mark.slow

TARGETS = ("results/demo/explain", "results/demo/cohort_summary.txt")
#: The one recorded value that is a wall-clock time: the store's creation time.
TIMESTAMPS = ("uns/provenance/created",)
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*")  # the store's creation time, as inspect prints it
SETTINGS = {"model": {"baseline": False, "bootstrap": 10, "epochs": 3}}


def store_content(results: Path) -> dict[str, str]:
    return demo.tree_digests(results / "cohort.zarr", skip=(*TIMESTAMPS, ".snakemake_timestamp"))


def manifest_text(path: Path) -> str:
    manifest = json.loads(path.read_text())
    manifest["command"] = re.sub(r" --threads \d+", "", manifest["command"])  # --cores 1 runs them with 1
    return json.dumps(manifest, sort_keys=True)


def outputs(results: Path) -> dict[str, dict[str, str]]:
    """Digests of every output, the model's checkpoints byte for byte (the runs are in different directories:
    no checkpoint may hold where it was written)."""
    manifests = {str(p.relative_to(results)): manifest_text(p) for p in sorted(results.rglob("manifests/*.json"))}
    return {
        "store": store_content(results),
        "model": demo.tree_digests(results / "model", skip=(".snakemake_timestamp",)),
        "explain": demo.tree_digests(results / "explain", skip=(".snakemake_timestamp",)),
        "summary": {"cohort_summary.txt": CREATED.sub("<created>", (results / "cohort_summary.txt").read_text())},
        "manifests": {k: v for k, v in manifests.items() if "cohort.zarr" not in k},
    }


def assert_same_checkpoints(ours: Path, theirs: Path) -> None:
    checkpoints = sorted(p.relative_to(ours) for p in ours.rglob("*.ckpt"))
    assert checkpoints and checkpoints == sorted(p.relative_to(theirs) for p in theirs.rglob("*.ckpt"))
    differ = [str(c) for c in checkpoints if not demo.same_checkpoints(ours / c, theirs / c)]
    assert not differ, differ


def assert_same(a: dict, b: dict) -> None:
    for part in a:
        assert set(a[part]) == set(b[part]), (part, set(a[part]) ^ set(b[part]))
        differ = [name for name in a[part] if a[part][name] != b[part][name]]
        assert not differ, (part, differ[:10])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    demo.simulate(root, patients=30)
    return root / "demo"


def prepare(workdir: Path, cohort: Path) -> Path:
    shutil.copytree(cohort, workdir / "demo")
    demo.write_config(workdir, **SETTINGS)
    return workdir / "results" / "demo"


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("first")
    results = prepare(workdir, cohort)
    demo.snakemake(workdir, "--cores", "2", *TARGETS)
    return results


def test_two_runs_from_scratch_one_and_two_cores_are_identical(first_run, cohort, tmp_path):
    results = prepare(tmp_path, cohort)
    demo.snakemake(tmp_path, "--cores", "1", *TARGETS)
    ours, theirs = outputs(first_run), outputs(results)
    assert len(ours["store"]) > 50 and len(ours["model"]) > 5 and len(ours["explain"]) > 5
    assert any(name.endswith(".ckpt") for name in ours["model"])
    assert_same(ours, theirs)
    assert_same_checkpoints(first_run / "model", results / "model")
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    assert metrics["n_patients"] == 30
    # the creation time is the only difference the stores may have, and it is a time
    created = sorted((first_run / "cohort.zarr").rglob("*created*"))
    assert created, "the store records its creation time under uns/provenance/created"


def test_a_run_killed_mid_training_resumes_without_redoing_finished_stages(first_run, cohort, tmp_path):
    results = prepare(tmp_path, cohort)
    command = [str(demo.BIN / "snakemake"), "--snakefile", str(demo.REPO / "Snakefile"), "--configfile"]
    command += ["reduced.yaml", "--cores", "2", *TARGETS]
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=demo.environment(), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        train_log = results / "logs" / "train.log"
        while time.monotonic() < deadline and process.poll() is None:
            # training has written its first fold's checkpoint, not yet the model: kill in the middle of it
            if train_log.is_file() and any(results.glob(".model.*.partial/model/fold_0/model_0.ckpt")):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the workflow ended before it could be killed mid-training"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        log.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (results / "model").exists() and (results / "cohort.zarr").is_dir()
    finished = {
        p: p.stat().st_mtime_ns for p in [results / "cohort.zarr" / "zarr.json", *results.glob("interim/*/*.h5ad")]
    }

    demo.snakemake(tmp_path, "--unlock")
    done = demo.snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", *TARGETS)
    rerun = set(re.findall(r"^(?:local)?rule (\w+):", done.stdout + done.stderr, flags=re.M))
    assert rerun == {"train", "explain", "inspect"} or rerun == {"train", "explain"}, rerun
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished stage was redone"
    assert_same(outputs(first_run), outputs(results))
    assert_same_checkpoints(first_run / "model", results / "model")


def test_a_changed_variant_chunk_size_redoes_only_the_variant_jobs_and_keeps_the_store(first_run, tmp_path):
    """Results made with one ingest.variant_chunk_size (2 jobs of 20 patients), rerun after it changed (one job,
    as after an upgrade to the new default): Snakemake redoes the variant jobs (their --n-chunks changed) and
    the assembly, not the imaging jobs, and the store is the same, every patient in it, but for the config it
    records."""
    workdir = tmp_path / "run"
    shutil.copytree(first_run.parent.parent, workdir, symlinks=True)
    results = workdir / "results" / "demo"
    assert len(list((results / "interim" / "variants").glob("chunk_*.h5ad"))) == 2
    demo.write_config(workdir, **SETTINGS, ingest={"chunk_size": 20, "variant_chunk_size": 250})
    done = demo.snakemake(workdir, "--cores", "2", "results/demo/cohort.zarr")
    rerun = re.findall(r"^(?:local)?rule (\w+):", done.stdout + done.stderr, flags=re.M)
    assert sorted(set(rerun)) == ["assemble", "ingest_variants"] and rerun.count("ingest_variants") == 1, rerun
    # the same store but for the config it records (uns/provenance/command and config_json name the new size)
    ours, theirs = store_content(results), store_content(first_run)
    assert {k for k in ours if ours[k] != theirs.get(k)} == {"uns/provenance/command/c", "uns/provenance/config_json/c"}
    assert set(ours) == set(theirs)
