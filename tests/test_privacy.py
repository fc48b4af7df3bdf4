"""Keyed pseudonymisation (config privacy): with it on, no original patient ID is in any file under the
results directory (store, interim files, logs, model, attributions, report: every byte searched), the key
is written nowhere, and the ID -> pseudonym table is only where privacy.mapping_out says. Plus the safe
loading rules: YAML with safe_load, checkpoints with weights_only=True, no pickle from user paths."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess

import pandas as pd
import pytest
import reduced_demo as demo

from multimodal.errors import MultimodalError
from multimodal.privacy import Pseudonymiser, from_config

KEY = b"a secret key of the consortium, 2026"


def test_pseudonyms_are_hmac_sha256_and_tokens_are_replaced():
    p = Pseudonymiser(key=KEY)
    expected = "ps" + hmac.new(KEY, b"P0001", hashlib.sha256).hexdigest()[:20]
    assert p.pseudonym("P0001") == expected != Pseudonymiser(key=KEY + b"!").pseudonym("P0001")
    scrub = p.scrubber(["P0001", "P00011"])
    assert scrub("demo/vcf/P0001.vcf.gz") == f"demo/vcf/{expected}.vcf.gz"
    assert scrub("P0001-01A") == f"{expected}-01A"
    assert scrub("P00011") == p.pseudonym("P00011") and scrub("XP0001") == "XP0001"


def test_key_from_file_or_environment_and_the_errors(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    assert from_config({"privacy": {"pseudonymise": False, "key_file": str(key_file)}}) is None
    assert from_config({"privacy": {"pseudonymise": True, "key_file": str(key_file)}}).key == KEY
    monkeypatch.setenv("MM_KEY", KEY.decode())
    assert from_config({"privacy": {"pseudonymise": True, "key_env": "MM_KEY"}}).key == KEY
    with pytest.raises(MultimodalError, match="MM_ABSENT is not set"):
        from_config({"privacy": {"pseudonymise": True, "key_env": "MM_ABSENT"}})
    with pytest.raises(MultimodalError, match="neither privacy.key_file nor privacy.key_env"):
        from_config({"privacy": {"pseudonymise": True}})
    with pytest.raises(MultimodalError, match="cannot read the key"):
        from_config({"privacy": {"pseudonymise": True, "key_file": str(tmp_path / "absent")}})
    short = tmp_path / "short"
    short.write_bytes(b"123")
    with pytest.raises(MultimodalError, match="at least 16 bytes"):
        from_config({"privacy": {"pseudonymise": True, "key_file": str(short)}})


def test_no_unsafe_loading_anywhere():
    """YAML only through safe_load; torch checkpoints only with weights_only=True; no pickle module, no
    pandas read_pickle, no numpy allow_pickle=True in the package, the workflow or the benchmarks."""
    sources = [*sorted((demo.REPO / "multimodal").rglob("*.py")), *sorted((demo.REPO / "benchmarks").rglob("*.py"))]
    sources += [demo.REPO / "Snakefile", *sorted((demo.REPO / "rules").glob("*.smk"))]
    found = []
    for path in sources:
        text = path.read_text()
        found += [f"{path}: {m}" for m in re.findall(r"yaml\.(?:load|unsafe_load|full_load)\(", text)]
        found += [f"{path}: {m}" for m in re.findall(r"^\s*(?:import|from)\s+(?:c?pickle|dill|joblib)\b", text, re.M)]
        unsafe = r"read_pickle|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
        found += [f"{path}: {m}" for m in re.findall(unsafe, text)]
        for call in re.finditer(r"(?:torch\.load|load_from_checkpoint)\(", text):
            arguments = text[call.end() : call.end() + 300].split("\n\n")[0]  # the call's arguments, maybe wrapped
            if "weights_only=True" not in arguments:
                found.append(f"{path}: {text[call.start() : call.end() + 60]}")
    assert not found, found


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    workdir, secrets = root / "work", root / "secrets"
    secrets.mkdir()
    (secrets / "key").write_bytes(KEY)
    demo.simulate(workdir, patients=30)
    privacy = {"pseudonymise": True, "key_file": str(secrets / "key"), "mapping_out": str(secrets / "ids.tsv")}
    demo.write_config(workdir, privacy=privacy, model={"baseline": False, "bootstrap": 10, "epochs": 2})
    demo.snakemake(workdir, "--cores", "2")
    return workdir, secrets


@pytest.mark.slow
def test_no_original_id_in_any_output(private_run):
    workdir, secrets = private_run
    results = workdir / "results" / "demo"
    ids = pd.read_csv(workdir / "demo" / "samples.tsv", sep="\t", dtype=str)["patient_id"].tolist()
    files = [p for p in results.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".h5ad", ".html", ".ckpt", ".tsv", ".json", ".log"} <= kinds, kinds
    assert (results / "report.html").is_file() and any("cohort.zarr" in str(p) for p in files)
    leaks = []
    for path in files:
        data = path.read_bytes()
        leaks += [f"{path.relative_to(workdir)}: {i}" for i in ids if i.encode() in data]
        assert KEY not in data, f"the key is in {path}"
    assert not leaks, leaks[:20]

    mapping = pd.read_csv(secrets / "ids.tsv", sep="\t", dtype=str)
    assert sorted(mapping["patient_id"]) == sorted(ids)
    p = Pseudonymiser(key=KEY)
    assert all(mapping["pseudonym"] == [p.pseudonym(i) for i in mapping["patient_id"]])
    predictions = pd.read_csv(results / "model" / "predictions.tsv", sep="\t", dtype=str)
    assert set(predictions["patient_id"]) <= set(mapping["pseudonym"]) and len(predictions) == len(ids)
    assert not [p for p in workdir.rglob("*") if p.is_file() and KEY in p.read_bytes()]
    assert not list(workdir.rglob("ids.tsv")), "the mapping table went somewhere other than mapping_out"
    # verify still checks every output; the inputs recorded under pseudonymised names are listed as not checked
    done = subprocess.run(
        [str(demo.BIN / "multimodal"), "verify", "results/demo"], cwd=workdir, capture_output=True, text=True
    )
    assert done.returncode == 0 and "not checked: " in done.stdout, done.stdout[-2000:]


def test_pseudonymised_ids_keep_the_store_alphabet():
    from multimodal.ingest.samples import patient_id_problems

    p = Pseudonymiser(key=KEY)
    assert not patient_id_problems(pd.Series([p.pseudonym(f"P{i:04d}") for i in range(50)]))


def test_the_mapping_is_written_only_where_asked(tmp_path):
    from multimodal.privacy import write_mapping

    assert write_mapping(Pseudonymiser(key=KEY), ["P1"]) is None
    target = tmp_path / "m.tsv"
    assert write_mapping(Pseudonymiser(key=KEY, mapping_out=str(target)), ["P1", "P2"]) == target
    assert target.read_text().splitlines()[0] == "patient_id\tpseudonym" and len(target.read_text().splitlines()) == 3


def test_key_bytes_are_not_in_the_repr():
    assert "secret" not in repr(Pseudonymiser(key=KEY))
