"""`multimodal verify`: a clean run verifies; one flipped byte in a store array chunk, a model checkpoint, an
attribution or an input file is named with its location, and the exit code says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import reduced_demo as demo

from multimodal.verify import manifest_path, verify_results, write_manifest


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def verify(workdir: Path, results: str = "results/demo") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(demo.BIN / "multimodal"), "verify", results], cwd=workdir, capture_output=True, text=True, timeout=300
    )


def test_manifest_of_a_directory_output_and_its_drifts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.tsv").write_text("a\tb\n1\t2\n")
    out = tmp_path / "results" / "thing"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x.bin").write_bytes(bytes(range(200)))
    (out / "y.txt").write_text("y\n")
    (out / ".snakemake_timestamp").write_text("")
    path = write_manifest(out, stage="demo", command="multimodal demo", inputs=["in.tsv"], versions={"python": "3"})
    assert path == manifest_path(out) == tmp_path / "results/manifests/thing.json"
    manifest = json.loads(path.read_text())
    assert set(manifest["files"]) == {"sub/x.bin", "y.txt"} and list(manifest["inputs"]) == ["in.tsv"]
    assert verify_results("results") == ([], 3)

    flip_byte(out / "sub" / "x.bin", 17)
    (out / "y.txt").unlink()
    (out / "new.txt").write_text("added\n")
    (tmp_path / "in.tsv").write_text("a\tb\n1\t3\n")
    drifts, _ = verify_results("results")
    found = {d.location: d.problem for d in drifts}
    assert set(found) == {f"{out.relative_to(tmp_path)}/{n}" for n in ("sub/x.bin", "y.txt", "new.txt")} | {"in.tsv"}
    assert "differs from the recorded" in found["results/thing/sub/x.bin"] and found["results/thing/y.txt"] == "missing"


def test_a_results_directory_without_manifests_is_refused(tmp_path):
    from multimodal.errors import MultimodalError

    with pytest.raises(MultimodalError, match="no stage manifests"):
        verify_results(tmp_path)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("verify")
    demo.simulate(workdir, patients=30)
    demo.write_config(workdir, model={"baseline": False, "bootstrap": 10, "epochs": 2})
    demo.snakemake(workdir, "--cores", "2", "results/demo/explain", "results/demo/cohort_summary.txt")
    return workdir


@pytest.mark.slow
def test_clean_run_verifies_and_each_flipped_byte_is_named(clean_run, tmp_path):
    done = verify(clean_run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drift" not in done.stdout and "all " in done.stdout
    results = clean_run / "results/demo"
    for stage in ("cohort.zarr", "model", "explain"):
        manifest = json.loads((results / "manifests" / f"{stage}.json").read_text())
        assert manifest["command"].startswith(f"multimodal {manifest['stage']} ")
        assert str(clean_run) not in manifest["command"] and str(demo.BIN) not in manifest["command"]
        assert manifest["versions"]["torch"] and manifest["versions"]["multimodal"]
    assemble = json.loads((results / "manifests/cohort.zarr.json").read_text())
    assert "reduced.yaml" in assemble["inputs"] and "demo/clinical.tsv" in assemble["inputs"]
    assert len(list((results / "interim").rglob("manifests/*.json"))) >= 3  # the ingest stages

    store_chunks = sorted(p for p in (results / "cohort.zarr/mod/expression/X/c").rglob("*") if p.is_file())
    checkpoint = results / "model" / "fold_0" / "model_0.ckpt"
    chunks = (results / "explain" / "attributions.zarr").rglob("*")
    attributions = sorted(p for p in chunks if p.is_file() and "/c/" in p.as_posix())
    image = sorted((clean_run / "demo").rglob("*.nii.gz"))[0]
    targets = {
        "array chunk": store_chunks[0],
        "checkpoint": checkpoint,
        "attribution chunk": attributions[0],
        "input image (store provenance)": image,
        "input table": clean_run / "demo" / "clinical.tsv",
    }
    for what, path in targets.items():
        assert path.is_file(), what
        copy = tmp_path / "original"
        shutil.copy2(path, copy)
        flip_byte(path)
        try:
            done = verify(clean_run)
            location = str(path.relative_to(clean_run))
            assert done.returncode == 1, (what, done.stdout)
            drifted = [ln for ln in done.stdout.splitlines() if ln.startswith("drift: ")]
            assert drifted and all(location in ln for ln in drifted), (what, location, done.stdout)
        finally:
            shutil.copy2(copy, path)
    assert verify(clean_run).returncode == 0
