"""Whole `multimodal train` runs: one killed mid-run (SIGKILL) resumes from its members' last checkpoints when
run again, to exactly the predictions of an uninterrupted run (checkpoints load with ``weights_only=True``);
one with ``strategy: ddp`` on 2 gloo processes scores as one process does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

MULTIMODAL = [sys.executable, "-m", "multimodal.cli"]


@pytest.fixture(scope="module")
def small_store(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny simulated cohort's expression and mutations in a cohort store (no imaging: quicker)."""
    from multimodal.ingest.expression import expression_matrix, read_counts_table
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix
    from multimodal.store import build_cohort_store

    out = tmp_path_factory.mktemp("resume_store")
    samples = read_samples(tiny_cohort / "samples.tsv")
    chunks = {}
    for name, adata in (
        ("variants", mutation_matrix(samples, progress=False)),
        ("expression", expression_matrix(read_counts_table(tiny_cohort / "expression_counts.tsv"), samples)),
    ):
        path = out / f"{name}.h5ad"
        adata.write_h5ad(path)
        chunks[name] = [path]
    return build_cohort_store(
        out / "cohort.zarr",
        clinical_path=tiny_cohort / "clinical.tsv",
        samples_path=tiny_cohort / "samples.tsv",
        modality_chunks=chunks,
        cohort_files=[tiny_cohort / "expression_counts.tsv"],
    )


def _config(path: Path) -> Path:
    path.write_text(
        "samples: ''\nclinical: ''\nmodel:\n  folds: 3\n  epochs: 40\n  bootstrap: 0\n  baseline: false\n"
        "  accelerator: cpu\n  modalities: [expression, variants]\n"
        "  max_features: {expression: 10, variants: 5}\n"
    )
    return path


def _train(store: Path, out: Path, config: Path) -> list[str]:
    return [*MULTIMODAL, "train", "--store", str(store), "--out", str(out), "--config", str(config), "--threads", "1"]


def _env() -> dict[str, str]:
    return os.environ | {"MULTIMODAL_NO_PROGRESS": "1", "PYTHONHASHSEED": "0"}


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(small_store, tmp_path):
    config = _config(tmp_path / "config.yaml")
    whole = subprocess.run(
        _train(small_store, tmp_path / "whole", config), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not list(tmp_path.glob(".whole.resume*"))  # a completed run leaves no work directory

    out = tmp_path / "killed"
    work = tmp_path / ".killed.resume"
    run = subprocess.Popen(
        _train(small_store, out, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    deadline = time.monotonic() + 600
    try:
        # mid-way: fold 0 finished, fold 1 has saved a last checkpoint
        while not list(work.glob("*/fold_1/member_0/checkpoints/last.ckpt")):
            assert run.poll() is None, "training ended before it could be killed mid-way"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    assert not out.exists()  # nothing half-written
    (fold_0,) = work.glob("*/fold_0/member_0/done.ckpt")
    assert not list(work.glob("*/fold_1/member_0/done.ckpt"))

    again = subprocess.run(_train(small_store, out, config), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fold 0 member 0 was trained before the interruption" in again.stderr
    assert "resumed fold 1 member 0 from epoch " in again.stderr
    assert "resumed fold 2" not in again.stderr  # fold 2 had not started: trained from scratch
    epoch = int(again.stderr.split("resumed fold 1 member 0 from epoch ")[1].split()[0])
    assert 1 <= epoch < 40
    assert not work.exists()

    # exactly the uninterrupted run's predictions (RNG states restored with the checkpoint)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "predictions.tsv", sep="\t"), pd.read_csv(tmp_path / "whole" / "predictions.tsv", sep="\t")
    )
    # and its training curves, every epoch of the resumed member included (rows travel with the checkpoint)
    curves = sorted(p.relative_to(out) for p in out.glob("fold_*/log_*/*"))
    assert curves == sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").glob("fold_*/log_*/*"))
    assert len(curves) == 6 and {c.name for c in curves} == {"metrics.csv", "hparams.yaml"}
    for curve in curves:
        assert (out / curve).read_text() == (tmp_path / "whole" / curve).read_text(), curve
    # the checkpoints byte for byte: the resumed member's too, though the two runs wrote in other directories
    for ckpt in sorted(out.glob("fold_*/model_*.ckpt")):
        assert ckpt.read_bytes() == (tmp_path / "whole" / ckpt.relative_to(out)).read_bytes(), ckpt
    resumed = pd.read_csv(out / "fold_1" / "log_0" / "metrics.csv")
    assert list(resumed["epoch"]) == list(range(40)) and resumed["train_loss"].notna().all()
    for ckpt in sorted(out.glob("fold_*/model_*.ckpt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled objects needed
        assert state["epoch"] == 40 and "state_dict" in state


@pytest.mark.slow
def test_ddp_run_on_two_gloo_processes_matches_one_process(small_store, tmp_path):
    """`multimodal train` with strategy ddp on 2 CPU processes (gloo): every rank runs the command, only rank 0
    writes the model directory, and without dropout it scores as one process does."""
    results = {}
    for name, extra in (("one", ""), ("ddp", "  strategy: ddp\n  devices: 2\n")):
        config = _config(tmp_path / f"{name}.yaml")
        config.write_text(
            config.read_text().replace("epochs: 40", "epochs: 5") + "  dropout: 0.0\n  input_dropout: 0.0\n" + extra
        )
        run = subprocess.run(
            _train(small_store, tmp_path / name, config),
            capture_output=True,
            text=True,
            env=_env(),
            timeout=600,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = pd.read_csv(tmp_path / name / "predictions.tsv", sep="\t")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in run.stderr  # a second process trained with the first
    one, ddp = results["one"], results["ddp"]
    assert list(one["patient_id"]) == list(ddp["patient_id"])
    # the risk head's bias gets no gradient (Cox ignores a common shift): Adam's rounding noise moves it
    centred = [(f["risk"] - f.groupby("fold")["risk"].transform("mean")).to_numpy() for f in (one, ddp)]
    assert abs(centred[0] - centred[1]).max() < 1e-3
    assert not list(tmp_path.glob(".ddp.resume*")) and not list(tmp_path.glob(".ddp.*.partial"))


def _torch_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_canonical_checkpoint_pickles_equal_content_to_equal_bytes_and_keeps_every_value():
    from collections import OrderedDict

    from multimodal.model.train import canonical_checkpoint

    def checkpoint(shared: bool) -> dict:
        # the same content; in one, keys are literal (shared) strings, in the other fresh copies, as read back
        name = "train_loss" if shared else "".join(["train", "_loss"])
        rows = [{"epoch": 0, name: 1.5}, {"epoch": 1, "train_loss": 1.25}]
        betas = (0.9, 0.999)
        groups = [{"betas": betas}, {"betas": betas if shared else (0.9, 0.999)}]
        return {"rows": rows, "groups": groups, "state_dict": OrderedDict(w=torch.arange(3.0))}

    plain = [_torch_bytes(checkpoint(shared)) for shared in (True, False)]
    assert plain[0] != plain[1]  # pickle's back-references make equal content differ
    canonical = [_torch_bytes(canonical_checkpoint(checkpoint(shared))) for shared in (True, False)]
    assert canonical[0] == canonical[1]

    tricky = {"t": (1, 1.0, True, -0.0, 0.0, None, "a"), "u": (1.0, 1, 1, 0.0, -0.0, None, "a"), "n": [(1,), (1.0,)]}
    tricky["state_dict"] = OrderedDict(b=torch.ones(2), a=torch.zeros(1))
    again = canonical_checkpoint(tricky)
    for key in ("t", "u"):
        assert [(type(v), repr(v)) for v in again[key]] == [(type(v), repr(v)) for v in tricky[key]]
    assert [type(t[0]) for t in again["n"]] == [int, float]
    assert type(again["state_dict"]) is OrderedDict and list(again["state_dict"]) == ["b", "a"]
    assert again["state_dict"]["b"] is tricky["state_dict"]["b"]  # tensors are not copied
