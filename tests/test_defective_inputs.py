"""Defective inputs through `multimodal run`, over a finished run: each stops with one last line naming the
file, the line or record and the problem; every earlier output stays byte for byte; nothing partial is left.

One small cohort is run to the report once; then each case breaks one input (or the sheet, or the config),
reruns the workflow, checks the last line and the results directory, and puts the good input back with its
old modification time, so the next case starts from the same finished run.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pysam
import pytest
import yaml
from conftest import REPO
from test_maf import vcfs_to_maf

from multimodal.cli import main

pytestmark = pytest.mark.slow

OUT = "results/defects"


def run(workdir: Path, config: str = "defects.yaml") -> int:
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        return main(["run", "--config", config, "--snakefile", str(REPO / "Snakefile"), "--cores", "2"])
    finally:
        os.chdir(previous)


def results_digest(workdir: Path) -> dict[str, str]:
    """sha256 of every file of the results directory but the run's logs and benchmarks."""
    out = workdir / OUT
    digest = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and rel.parts[0] not in ("logs", "benchmarks"):
            digest[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 40-patient cohort (VCFs, a MAF for 10 patients, counts, images) run to the report."""
    from multimodal.simulate import SimulationParams, simulate_cohort

    workdir = tmp_path_factory.mktemp("defects")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        simulate_cohort(
            Path("cohort"),
            params=SimulationParams(n_patients=40, seed=5, image_size=16, n_expression_genes=150, n_panel_genes=60),
        )
    finally:
        os.chdir(previous)
    sheet = pd.read_csv(workdir / "cohort/samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    from_maf = sheet["patient_id"].isin([f"P{i:04d}" for i in range(31, 41)])
    maf_patients = sheet[from_maf].set_index("patient_id")
    maf_patients["vcf"] = [str(workdir / p) for p in maf_patients["vcf"]]
    vcfs_to_maf(maf_patients, workdir / "cohort/cohort.maf")
    sheet["maf_sample"] = np.where(from_maf, sheet["patient_id"] + "-01A-11D", "")
    sheet.loc[from_maf, "vcf"] = ""
    sheet.to_csv(workdir / "cohort/samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(
        samples="cohort/samples.tsv",
        clinical="cohort/clinical.tsv",
        expression="cohort/expression_counts.tsv",
        maf="cohort/cohort.maf",
        outdir=OUT,
    )
    config["simulate"]["enabled"] = False
    config["ingest"] |= {"chunk_size": 20, "variant_chunk_size": 20}
    config["model"] = {"folds": 3, "seed": 3, "epochs": 5, "max_features": {"expression": 10, "variants": 10}}
    config["explain"] = {"method": "integrated_gradients", "n_steps": 8}
    (workdir / "defects.yaml").write_text(yaml.safe_dump(config))
    assert run(workdir) == 0
    shutil.copytree(workdir / "cohort", workdir / "pristine", copy_function=shutil.copy2, symlinks=True)
    return {"workdir": workdir, "digest": results_digest(workdir), "config": config}


# --- ways to break an input -------------------------------------------------------------------------


def _vcf_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return handle.read().splitlines(keepends=True)


def _write_vcf(path: Path, lines: list[str]) -> None:
    """bgzipped again (no index: an unindexed VCF is read in full)."""
    plain = path.with_suffix("")
    plain.write_text("".join(lines))
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    Path(f"{path}.tbi").unlink(missing_ok=True)


def edit_first_record(column: int, change: Callable[[str], str]) -> Callable[[Path], str]:
    def edit(cohort: Path) -> str:
        path = cohort / "vcf/P0002.vcf.gz"
        lines = _vcf_lines(path)
        first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        fields = lines[first].split("\t")
        fields[column] = change(fields[column])
        lines[first] = "\t".join(fields)
        _write_vcf(path, lines)
        return "P0002.vcf.gz"

    return edit


def drop_csq_field(info: str) -> str:
    csq = next(f for f in info.split(";") if f.startswith("CSQ="))
    entries = csq.removeprefix("CSQ=").split(",")
    entries[0] = entries[0].rsplit("|", 1)[0]
    return info.replace(csq, "CSQ=" + ",".join(entries))


def vcf_without_fileformat(cohort: Path) -> str:
    path = cohort / "vcf/P0003.vcf.gz"
    _write_vcf(path, [line for line in _vcf_lines(path) if not line.startswith("##fileformat")])
    return "P0003.vcf.gz"


def vcf_annotation_under_another_key(cohort: Path) -> str:
    path = cohort / "vcf/P0004.vcf.gz"
    lines = [line.replace("ID=CSQ,", "ID=vep,").replace("CSQ=", "vep=") for line in _vcf_lines(path)]
    _write_vcf(path, lines)
    return "P0004.vcf.gz"


def truncated_vcf(cohort: Path) -> str:
    path = cohort / "vcf/P0005.vcf.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "P0005.vcf.gz"


def unknown_maf_class(cohort: Path) -> str:
    path = cohort / "cohort.maf"
    lines = path.read_text().splitlines(keepends=True)
    header = lines[1].rstrip("\n").split("\t")
    column = header.index("Variant_Classification")
    fields = lines[4].split("\t")
    fields[column] = "Missense"
    lines[4] = "\t".join(fields)
    path.write_text("".join(lines))
    return "cohort.maf"


def clinical_edit(change: Callable[[pd.DataFrame], pd.DataFrame], *, sep: str = "\t") -> Callable[[Path], str]:
    def edit(cohort: Path) -> str:
        path = cohort / "clinical.tsv"
        change(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)).to_csv(path, sep=sep, index=False)
        return "clinical.tsv"

    return edit


def negative_time(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[4, "os_time"] = "-3"
    return frame


def minus_inf_times(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[2:13, "os_time"] = "-Inf"
    return frame


def counts_edit(change: Callable[[str], str]) -> Callable[[Path], str]:
    def edit(cohort: Path) -> str:
        path = cohort / "expression_counts.tsv"
        path.write_text(change(path.read_text()))
        return "expression_counts.tsv"

    return edit


def negative_count(text: str) -> str:
    lines = text.splitlines(keepends=True)
    fields = lines[3].split("\t")
    fields[2] = "-5"
    lines[3] = "\t".join(fields)
    return "".join(lines)


def truncated_image(cohort: Path) -> str:
    path = cohort / "imaging/P0006_image.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return "P0006_image.nii.gz"


def mask_of_another_shape(cohort: Path) -> str:
    path = cohort / "imaging/P0007_mask.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), image.affine), path)
    return "P0007_mask.nii.gz"


def sheet_edit(change: Callable[[list[str]], list[str]]) -> Callable[[Path], str]:
    """Change the samples sheet's lines (line 3 is patient P0002)."""

    def edit(cohort: Path) -> str:
        path = cohort / "samples.tsv"
        path.write_text("".join(change(path.read_text().splitlines(keepends=True))))
        return "samples.tsv"

    return edit


def set_cell(line: int, column: str, value: str) -> Callable[[list[str]], list[str]]:
    def change(lines: list[str]) -> list[str]:
        header = lines[0].rstrip("\n").split("\t")
        fields = lines[line - 1].rstrip("\n").split("\t")
        fields[header.index(column)] = value
        lines[line - 1] = "\t".join(fields) + "\n"
        return lines

    return change


def link_out(cohort: Path) -> str:
    os.symlink("/etc/passwd", cohort / "vcf/P0002_link.vcf.gz")
    return sheet_edit(set_cell(3, "vcf", "cohort/vcf/P0002_link.vcf.gz"))(cohort)


# case id -> (break the cohort, fragments the last line must hold)
CASES: dict[str, tuple[Callable[[Path], str], list[str]]] = {
    "vcf CSQ entry with a field missing": (edit_first_record(7, drop_csq_field), ["CSQ", "field"]),
    "vcf POS 0": (edit_first_record(1, lambda _: "0"), ["POS", "0"]),
    "vcf REF outside ACGTN": (edit_first_record(3, lambda _: "AXZ"), ["REF", "AXZ"]),
    "vcf POS not a number": (edit_first_record(1, lambda _: "12x4"), ["12x4"]),
    "vcf without ##fileformat": (vcf_without_fileformat, ["##fileformat"]),
    "vcf annotation under INFO key vep": (vcf_annotation_under_another_key, ["vep", "MAF"]),
    "vcf cut in half": (truncated_vcf, ["trunc"]),
    "maf unknown Variant_Classification": (unknown_maf_class, ["line 5", "Missense", "Missense_Mutation"]),
    "clinical negative time": (clinical_edit(negative_time), ["line 6", "-3"]),
    "clinical 12 -Inf times": (clinical_edit(minus_inf_times), ["12", "line 4", "and 2 more"]),
    "clinical comma-separated .tsv": (clinical_edit(lambda f: f, sep=","), ["comma-separated"]),
    "counts negative value": (counts_edit(negative_count), ["-5"]),
    "counts comma-separated .tsv": (counts_edit(lambda t: t.replace("\t", ",")), ["comma-separated"]),
    "image cut short": (truncated_image, []),
    "mask of another shape": (mask_of_another_shape, ["P0007_image.nii.gz", "shape"]),
    "sheet absolute path outside the data roots": (
        sheet_edit(set_cell(3, "vcf", "/etc/passwd")),
        ["line 3", "column vcf", "/etc/passwd", "outside the data roots"],
    ),
    "sheet ../ path outside the data roots": (
        sheet_edit(set_cell(3, "image", "../../../../../../../../etc/passwd")),
        ["line 3", "column image", "outside the data roots"],
    ),
    "sheet link pointing outside the data roots": (link_out, ["line 3", "column vcf", "resolves to /etc/passwd"]),
    "sheet patient ID with a slash": (sheet_edit(set_cell(4, "patient_id", "P00/03")), ["line 4", "P00/03"]),
    "sheet patient ID with a newline": (sheet_edit(set_cell(5, "patient_id", '"P00\n04"')), ["P00\\n04"]),
    "sheet file missing": (sheet_edit(set_cell(3, "vcf", "cohort/vcf/nope.vcf.gz")), ["line 3", "nope.vcf.gz"]),
    "sheet duplicate patient": (sheet_edit(set_cell(4, "patient_id", "P0002")), ["P0002", "lines 3, 4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_defective_input_is_named_and_nothing_earlier_is_lost(case, finished, capsys):
    workdir = finished["workdir"]
    breaker, fragments = CASES[case]
    capsys.readouterr()
    try:
        file_name = breaker(workdir / "cohort")
        code = run(workdir)
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]
        assert code != 0, err[-3000:]
        assert last.startswith("multimodal run: error: "), err[-3000:]
        for fragment in [file_name, *fragments]:
            assert fragment in last, (fragment, last)
        assert results_digest(workdir) == finished["digest"]  # every earlier output, byte for byte
        assert not [p for p in (workdir / OUT).rglob("*") if p.name.endswith(".partial")]
    finally:
        shutil.rmtree(workdir / "cohort")
        shutil.copytree(workdir / "pristine", workdir / "cohort", copy_function=shutil.copy2, symlinks=True)


def test_config_path_outside_the_data_roots(finished, capsys):
    workdir = finished["workdir"]
    config = dict(finished["config"], clinical="/etc/passwd")
    (workdir / "escape.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert run(workdir, "escape.yaml") != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "escape.yaml: clinical: /etc/passwd is outside the data roots" in last
    assert results_digest(workdir) == finished["digest"]


def test_data_roots_admit_files_elsewhere(finished, tmp_path, capsys):
    """A sheet naming a file outside the default roots passes once its directory is a data root."""
    from multimodal.ingest.samples import read_samples

    workdir = finished["workdir"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(workdir / "cohort/vcf/P0002.vcf.gz", elsewhere / "P0002.vcf.gz")
    sheet = workdir / "cohort/samples.tsv"
    lines = sheet.read_text().splitlines(keepends=True)
    moved = tmp_path / "samples.tsv"
    moved.write_text("".join(set_cell(3, "vcf", str(elsewhere / "P0002.vcf.gz"))(lines)))
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        with pytest.raises(Exception, match="outside the data roots"):
            read_samples(moved, data_roots=[workdir])
        frame = read_samples(moved, data_roots=[workdir, elsewhere])
    finally:
        os.chdir(previous)
    assert frame.loc["P0002", "vcf"] == str(elsewhere / "P0002.vcf.gz")


def test_a_rerun_after_the_failures_has_nothing_to_do(finished, caplog):
    """The failed runs' records were put back too: Snakemake sees the finished run as it was."""
    import logging

    workdir = finished["workdir"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="multimodal.workflow"):
        assert run(workdir) == 0
    # the terminal says so in a line of its own; Snakemake's words are in the run's transcript
    assert "nothing to do: every output is up to date" in caplog.messages, caplog.messages[-20:]
    transcript = (workdir / OUT / "logs" / "run.log").read_text()
    assert "Nothing to be done" in transcript, transcript[-3000:]
    assert results_digest(workdir) == finished["digest"]


def test_a_four_patient_cohort_is_told_which_folds_work_then_runs(finished, capsys):
    """The default 5 folds cannot be held out of 4 patients: one line says what works; with it the run ends."""
    workdir = finished["workdir"]
    clinical = pd.read_csv(workdir / "cohort/clinical.tsv", sep="\t", dtype=str).set_index("patient_id")
    with_vcf = [f"P{i:04d}" for i in range(1, 31)]
    events = clinical.loc[with_vcf, "os_event"].astype(float)
    four = list(events[events == 1].index[:2]) + list(events[events == 0].index[:2])
    sheet = pd.read_csv(workdir / "cohort/samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet[sheet["patient_id"].isin(four)].to_csv(workdir / "cohort/four.tsv", sep="\t", index=False)
    config = dict(finished["config"], samples="cohort/four.tsv", maf=None, outdir="results/four")
    config["model"] = dict(config["model"], folds=5)
    (workdir / "four.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert run(workdir, "four.yaml") != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("multimodal run: error: rule train: ") and "only 4 patients" in last, last
    assert "set model.folds (--folds) to 2 or fewer" in last and "logs/train.log" in last, last
    config["model"]["folds"] = 2
    (workdir / "four.yaml").write_text(yaml.safe_dump(config))
    assert run(workdir, "four.yaml") == 0, capsys.readouterr().err[-3000:]
    assert (workdir / "results/four/report.html").is_file()
