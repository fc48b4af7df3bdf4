"""The cohort store contract: Zarr v3 MuData layout readable without project code, obsmap,
provenance with input fingerprints, atomic writes."""

import hashlib
import json
from importlib import metadata

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path
from multimodal.ingest.samples import read_samples
from multimodal.store import build_cohort_store, summarize_store


def test_store_is_zarr_v3_mudata(tiny_run):
    store = tiny_run["store"]
    assert json.loads((store / "zarr.json").read_text())["zarr_format"] == 3
    mdata = md.read_zarr(str(store))
    assert set(mdata.mod) == {"clinical", "variants", "expression", "imaging"}
    assert mdata.n_obs == 60
    for name in mdata.mod:
        alone = ad.read_zarr(str(store / "mod" / name))
        assert alone.shape == mdata.mod[name].shape
        assert json.loads((store / "mod" / name / "zarr.json").read_text())["zarr_format"] == 3
    expression = ad.read_zarr(str(store / "mod" / "expression"))
    assert "counts" in expression.layers
    np.testing.assert_allclose(
        np.log1p(expression.layers["counts"] / expression.layers["counts"].sum(1, keepdims=True) * 1e6),
        expression.X,
        rtol=1e-4,
    )


def test_obsmap_marks_missing_modalities(tiny_run):
    mdata = md.read_zarr(str(tiny_run["store"]))
    samples = read_samples(tiny_run["cohort"] / "samples.tsv")
    for name, column in (("expression", "rna_sample"), ("imaging", "image")):
        obsmap = np.asarray(mdata.obsmap[name]).ravel()
        has = (samples.loc[list(mdata.obs_names), column] != "").to_numpy()
        np.testing.assert_array_equal(obsmap > 0, has)
        rows = obsmap[has] - 1  # 1-based rows into mod/<name>
        assert list(mdata.mod[name].obs_names[rows]) == list(mdata.obs_names[has])
        np.testing.assert_array_equal(mdata.obs[f"has_{name}"].to_numpy(), has)


def test_provenance_fingerprints_inputs_and_counts_exclusions(tiny_run):
    mdata = md.read_zarr(str(tiny_run["store"]))
    prov = mdata.uns["provenance"]
    inputs = pd.DataFrame(prov["inputs"])
    clinical = str(tiny_run["cohort"] / "clinical.tsv")
    row = inputs[inputs["path"] == clinical]
    assert row["sha256"].iloc[0] == hashlib.sha256(open(clinical, "rb").read()).hexdigest()
    n_vcfs = sum(1 for p in inputs["path"] if p.endswith(".vcf.gz"))
    assert n_vcfs == 60
    assert prov["versions"]["anndata"] == metadata.version("anndata")
    assert json.loads(prov["config_json"]) == {"note": "tiny test cohort"}
    samples = read_samples(tiny_run["cohort"] / "samples.tsv")
    assert int(prov["exclusions"]["expression"]["patients_without_rna"]) == int((samples["rna_sample"] == "").sum())
    assert int(prov["exclusions"]["imaging"]["patients_without_imaging"]) == int((samples["image"] == "").sum())
    summary = summarize_store(mdata)
    assert "patients: 60" in summary and "imaging" in summary


def test_patient_missing_from_clinical_leaves_no_store(tiny_run, tmp_path):
    cohort = tiny_run["cohort"]
    clinical = tmp_path / "clinical.tsv"
    lines = (cohort / "clinical.tsv").read_text().splitlines(keepends=True)
    clinical.write_text("".join(lines[:5] + lines[6:]))  # drop the 5th patient
    target = tmp_path / "out" / "cohort.zarr"
    with pytest.raises(MultimodalError, match=r"samples\.tsv: line 6: patient P0005 is not in the clinical table"):
        build_cohort_store(target, clinical_path=clinical, samples_path=cohort / "samples.tsv", modality_chunks={})
    assert not target.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_atomic_path_keeps_the_old_output_when_writing_fails(tmp_path):
    target = tmp_path / "thing.zarr"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("partial")
            raise RuntimeError("disk full")
    assert (target / "old").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.zarr"]
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("complete")
    assert [p.name for p in target.iterdir()] == ["new"]


def test_a_store_of_an_unknown_spec_version_is_refused(tiny_run, tmp_path):
    import shutil

    import zarr

    from multimodal.store import read_cohort_store

    copy = tmp_path / "old.zarr"
    shutil.copytree(tiny_run["store"], copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["uns/provenance/store_spec_version"][...] = "9.0.0"
    with pytest.raises(MultimodalError, match=r"old\.zarr: cohort store spec version 9\.0\.0 is not readable"):
        read_cohort_store(copy)


def test_no_response_column_means_no_missing_response_count(tiny_run, tmp_path):
    from multimodal.ingest.clinical import ClinicalSpec
    from multimodal.store import read_cohort_store

    cohort = tiny_run["cohort"]
    target = tmp_path / "cohort.zarr"
    for spec, expected in ((ClinicalSpec(), True), (ClinicalSpec(response_column=None), False)):
        build_cohort_store(
            target,
            clinical_path=cohort / "clinical.tsv",
            samples_path=cohort / "samples.tsv",
            clinical_spec=spec,
            modality_chunks={},
        )
        cohort_counts = read_cohort_store(target).uns["provenance"]["exclusions"]["cohort"]
        assert ("patients_without_response_outcome" in cohort_counts) is expected


def test_atomic_path_sweeps_partials_of_writers_that_were_killed(tmp_path):
    """A kill -9 leaves .NAME.HOST-PID.xxxx.partial behind; the next write removes it unless its writer lives."""
    import os
    import socket

    target = tmp_path / "cohort.zarr"
    dead = tmp_path / f".cohort.zarr.{socket.gethostname()}-99999999.ab12cd.partial"  # above any pid_max
    alive = tmp_path / f".cohort.zarr.{socket.gethostname()}-{os.getpid()}.ef34gh.partial"
    other_host = tmp_path / ".cohort.zarr.elsewhere.example.org-12.ij56kl.partial"
    for partial in (dead, alive, other_host):
        (partial / "cohort.zarr").mkdir(parents=True)
    with atomic_path(target) as tmp:
        tmp.mkdir()
    assert target.is_dir() and not dead.exists()
    assert alive.exists() and other_host.exists()  # a live writer here, or a recent one on another node


def test_the_samples_sheet_defines_the_cohort(tiny_run, tmp_path, monkeypatch):
    """A pan-cancer outcome table beside one cohort's sheet: the other patients are left out and counted."""
    from multimodal.store import read_cohort_store

    cohort = tiny_run["cohort"]
    monkeypatch.chdir(cohort)  # the sheet's files lie under the working directory, a default data root
    lines = (cohort / "samples.tsv").read_text().splitlines(keepends=True)
    (tmp_path / "samples.tsv").write_text("".join(lines[:51]))  # header + 50 of the 60 patients
    target = tmp_path / "cohort.zarr"
    build_cohort_store(
        target, clinical_path=cohort / "clinical.tsv", samples_path=tmp_path / "samples.tsv", modality_chunks={}
    )
    mdata = read_cohort_store(target)
    assert mdata.n_obs == 50 and mdata.mod["clinical"].n_obs == 50
    assert int(mdata.uns["provenance"]["exclusions"]["cohort"]["patients_in_clinical_not_in_samples_sheet"]) == 10


def test_fingerprint_depends_on_content_not_on_when_or_where_the_store_was_built(tiny_run, tmp_path, monkeypatch):
    """Two builds of the same inputs, into other directories, at other times, by another command line: the same
    fingerprint (it used to hash the build time). One changed value, in a matrix or in obs: another one."""
    import datetime as dt
    import shutil

    import multimodal.store
    from multimodal.store import read_cohort_store, store_fingerprint

    cohort = tiny_run["cohort"]
    chunk = tmp_path / "imaging.h5ad"
    ad.AnnData(
        X=np.arange(120, dtype=np.float32).reshape(60, 2),
        obs=pd.DataFrame(index=[f"P{i:04d}" for i in range(1, 61)]),
        var=pd.DataFrame({"feature_class": "shape", "source": "test"}, index=["shape_a", "shape_b"]),
    ).write_h5ad(chunk)
    prints, created = [], []
    for k, when in enumerate(("2026-01-01T10:00:00", "2027-06-30T23:59:59")):
        moment = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
        monkeypatch.setattr(
            multimodal.store, "datetime", type("Clock", (), {"now": staticmethod(lambda tz, m=moment: m)})
        )
        monkeypatch.setattr(multimodal.store.sys, "argv", [f"/opt/run{k}/multimodal", "assemble", f"--out=run{k}"])
        inputs = tmp_path / f"inputs{k}"  # the clinical table copied elsewhere: another absolute path
        inputs.mkdir()
        shutil.copy(cohort / "clinical.tsv", inputs / "clinical.tsv")
        store = build_cohort_store(
            tmp_path / f"run{k}" / "cohort.zarr",
            clinical_path=inputs / "clinical.tsv",
            samples_path=cohort / "samples.tsv",
            modality_chunks={"imaging": [chunk]},
            config={"note": "same cohort"},
        )
        mdata = read_cohort_store(store)
        created.append(mdata.uns["provenance"]["created"])
        prints.append(store_fingerprint(mdata))
    assert created[0] != created[1]
    assert prints[0] == prints[1]
    assert store_fingerprint(read_cohort_store(tmp_path / "run0" / "cohort.zarr")) == prints[0]  # stable re-read
    mdata.mod["imaging"].X[3, 1] += 1.0
    assert store_fingerprint(mdata) != prints[0]
    mdata = read_cohort_store(tmp_path / "run0" / "cohort.zarr")
    mdata.obs.loc[mdata.obs_names[5], "time"] += 0.5
    assert store_fingerprint(mdata) != prints[0]
    mdata = read_cohort_store(tmp_path / "run0" / "cohort.zarr")
    mdata.uns["provenance"]["exclusions"]["cohort"]["patients_without_survival_outcome"] += 1
    assert store_fingerprint(mdata) != prints[0]


def test_summary_counts_only_events_with_a_time(tiny_run, tmp_path):
    from multimodal.store import outcome_counts, read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    obs = mdata.obs
    with_event = obs.index[obs["event"] == 1][:3]
    obs.loc[with_event, "time"] = np.nan  # an event whose survival time is missing is no usable outcome
    counts = outcome_counts(obs["time"], obs["event"])
    assert counts["n_events"] == int((obs["event"] == 1).sum()) - 3
    assert counts["n_with_outcome"] == int((obs["time"].notna() & obs["event"].notna()).sum())
    assert f"survival: {counts['n_events']} events / {counts['n_with_outcome']} patients with outcome" in (
        summarize_store(mdata)
    )


def test_each_modalitys_ingest_settings_are_kept_in_the_provenance(tiny_run):
    """The radiomics discretisation and the variant settings survive into the store (they used to be dropped)."""
    import json

    from multimodal.store import read_cohort_store

    settings = json.loads(read_cohort_store(tiny_run["store"]).uns["provenance"]["ingest_params_json"])
    assert {"variants", "imaging", "expression"} <= set(settings)
    assert settings["imaging"]["bin_count"] == 32


def test_dicts_read_from_a_store_come_in_one_order_whatever_zarr_lists(tiny_run, tmp_path):
    """Zarr v3 lists a group's members in the order its concurrent reads finish, which differs from one process
    to the next: the QoL tasks' target columns (uns['tasks']) swapped between two runs of the same training.
    Every reader of a store's uns gives dicts, nested ones too, in sorted key order."""
    import shutil

    import zarr
    from anndata.io import write_elem

    from multimodal.store import read_cohort_store

    copy = tmp_path / "cohort.zarr"
    shutil.copytree(tiny_run["store"], copy)
    names = [f"qol_{c}" for c in "zyxwvutsrqpo"]
    group = zarr.open_group(str(copy), mode="r+")
    write_elem(group["uns"], "tasks", {name: "continuous" for name in names})
    write_elem(group["uns"], "nested", {"outer": {name: i for i, name in enumerate(names)}})
    for _ in range(3):
        mdata = read_cohort_store(copy)
        assert list(mdata.uns["tasks"]) == sorted(names)
        assert list(mdata.uns["nested"]["outer"]) == sorted(names)
        assert list(mdata.uns) == sorted(mdata.uns)
        assert list(mdata.uns["provenance"]) == sorted(mdata.uns["provenance"])


def test_qol_task_columns_follow_the_task_names_not_the_dicts_order(tiny_run):
    from multimodal.model.tasks import store_tasks
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    mdata.obs["qol_b"], mdata.obs["qol_a"] = 1.0, 2.0
    mdata.uns["tasks"] = {"qol_b": "continuous", "qol_a": "ordinal"}
    assert list(store_tasks(mdata)) == ["qol_a", "qol_b"]
