"""The command line: help on every verb, and bad inputs as one-line errors with no partial output."""

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from multimodal.cli import build_parser, main

VERBS = [
    ["simulate"],
    ["ingest"],
    ["ingest", "variants"],
    ["ingest", "expression"],
    ["ingest", "imaging"],
    ["ingest", "table"],
    ["assemble"],
    ["train"],
    ["explain"],
    ["report"],
    ["inspect"],
    ["run"],
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: multimodal " + " ".join(verb) in capsys.readouterr().out


def test_installed_entry_point_starts():
    completed = subprocess.run(
        [sys.executable, "-m", "multimodal.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip().startswith("multimodal ")
    assert set(build_parser()._subparsers._group_actions[0].choices) == {  # noqa: SLF001
        "simulate",
        "ingest",
        "assemble",
        "train",
        "explain",
        "report",
        "inspect",
        "run",
        "verify",
    }


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def cohort_copy(tiny_run, tmp_path):
    """A private copy of the tiny cohort's input files that a test may damage."""
    target = tmp_path / "cohort"
    shutil.copytree(tiny_run["cohort"], target)
    sheet = target / "samples.tsv"
    sheet.write_text(sheet.read_text().replace(str(tiny_run["cohort"]), str(target)))
    return target


def test_truncated_vcf(cohort_copy, tmp_path, capsys):
    vcf = cohort_copy / "vcf" / "P0003.vcf.gz"
    vcf.write_bytes(vcf.read_bytes()[:-60])
    out = tmp_path / "variants.h5ad"
    code = main(["ingest", "variants", "-q", "--samples", str(cohort_copy / "samples.tsv"), "--out", str(out)])
    assert code == 2
    one_line_error(capsys, "P0003.vcf.gz", "truncated")
    assert not out.exists() and list(tmp_path.glob(".variants*")) == []


def test_samples_sheet_naming_a_missing_file(cohort_copy, tmp_path, capsys):
    (cohort_copy / "imaging" / "P0002_mask.nii.gz").unlink(missing_ok=True)
    (cohort_copy / "vcf" / "P0002.vcf.gz").unlink()
    out = tmp_path / "variants.h5ad"
    code = main(["ingest", "variants", "-q", "--samples", str(cohort_copy / "samples.tsv"), "--out", str(out)])
    assert code == 2
    one_line_error(capsys, "samples.tsv: line 3", "P0002.vcf.gz", "does not exist")
    assert not out.exists()


def test_patient_missing_from_clinical_table(tiny_run, cohort_copy, tmp_path, capsys):
    clinical = cohort_copy / "clinical.tsv"
    clinical.write_text("".join(line for line in clinical.read_text().splitlines(True) if not line.startswith("P0010")))
    out = tmp_path / "cohort.zarr"
    code = main(
        [
            "assemble",
            "-q",
            "--clinical",
            str(clinical),
            "--samples",
            str(cohort_copy / "samples.tsv"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    one_line_error(capsys, "line 11", "patient P0010 is not in the clinical table", "clinical.tsv")
    assert not out.exists() and list(tmp_path.iterdir()) == [cohort_copy]


def test_duplicate_patient_ids(cohort_copy, tmp_path, capsys):
    sheet = cohort_copy / "samples.tsv"
    lines = sheet.read_text().splitlines(True)
    sheet.write_text("".join(lines + [lines[4]]))
    out = tmp_path / "imaging.h5ad"
    code = main(["ingest", "imaging", "-q", "--samples", str(sheet), "--out", str(out)])
    assert code == 2
    one_line_error(capsys, "samples.tsv", "duplicate patient_id 'P0004'", f"lines 5, {len(lines) + 1}")
    assert not out.exists()


def test_mask_shape_differs_from_image(cohort_copy, tmp_path, capsys):
    mask_path = next(p for p in sorted((cohort_copy / "imaging").glob("*_mask.nii.gz")))
    mask = nib.load(mask_path)
    smaller = np.asarray(mask.dataobj)[:-2]
    nib.save(nib.Nifti1Image(smaller, mask.affine, mask.header), mask_path)
    out = tmp_path / "imaging.h5ad"
    code = main(["ingest", "imaging", "-q", "--samples", str(cohort_copy / "samples.tsv"), "--out", str(out)])
    assert code == 2
    one_line_error(capsys, mask_path.name, "shape")
    assert not out.exists()


def test_negative_count(cohort_copy, tmp_path, capsys):
    counts = cohort_copy / "expression_counts.tsv"
    lines = counts.read_text().splitlines(True)
    fields = lines[5].split("\t")
    fields[3] = "-7"
    lines[5] = "\t".join(fields)
    counts.write_text("".join(lines))
    out = tmp_path / "expression.h5ad"
    code = main(
        [
            "ingest",
            "expression",
            "-q",
            "--samples",
            str(cohort_copy / "samples.tsv"),
            "--counts",
            str(counts),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    sample = lines[0].rstrip("\n").split("\t")[3]
    one_line_error(capsys, "expression_counts.tsv: line 6", f"sample '{sample}'", "negative count -7")
    assert not out.exists()


def test_missing_file_argument_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", "/nonexistent/cohort.zarr", "--out", "x"])
    assert exit_info.value.code == 2
    assert "/nonexistent/cohort.zarr: directory not found" in capsys.readouterr().err


def test_inspect_prints_a_summary(tiny_run, capsys):
    assert main(["inspect", "-q", str(tiny_run["store"])]) == 0
    out = capsys.readouterr().out
    assert "patients: 60" in out
    assert "variants" in out and "expression" in out and "imaging" in out


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("clinical_colums: {id_column: x}\n", ("my.yaml: invalid configuration", "'clinical_colums' was unexpected")),
        ("model: {folds: 1}\n", ("my.yaml: invalid configuration: model.folds: 1 is less than the minimum of 2",)),
        ("maf: cohort.maf\n", ("my.yaml: maf: file cohort.maf not found",)),
        (
            "tables: {imaging: COHORT/clinical.tsv}\n",
            ("my.yaml: tables.imaging: modality 'imaging' also comes from the samples sheet's files",),
        ),
    ],
)
def test_run_checks_config_and_inputs_before_snakemake(
    cohort_copy, tmp_path, monkeypatch, capsys, config_text, expected
):
    """A typo or a missing file in the config is one line, not a schema dump or a Snakemake traceback."""
    monkeypatch.chdir(tmp_path)
    base = f"samples: {cohort_copy / 'samples.tsv'}\nclinical: {cohort_copy / 'clinical.tsv'}\n"
    (tmp_path / "my.yaml").write_text(base + config_text.replace("COHORT", str(cohort_copy)))
    assert main(["run", "-q", "--config", "my.yaml", "--cores", "1"]) == 2
    one_line_error(capsys, *expected)
    assert not (tmp_path / ".snakemake").exists()  # Snakemake never started


def test_run_after_a_killed_run_says_how_to_unlock(cohort_copy, tmp_path, monkeypatch, capsys):
    """A run killed outright leaves Snakemake's locks; the next run names the fix instead of 'rule failed'."""
    monkeypatch.chdir(tmp_path)
    config = f"samples: {cohort_copy / 'samples.tsv'}\nclinical: {cohort_copy / 'clinical.tsv'}\noutdir: results/x\n"
    (tmp_path / "my.yaml").write_text(config)
    (tmp_path / ".snakemake/locks").mkdir(parents=True)
    (tmp_path / ".snakemake/locks/0.output.lock").write_text("results/x/report.html\n")
    assert main(["run", "-q", "--config", "my.yaml", "--cores", "1"]) != 0
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        message.startswith("multimodal run: error:")
        and "unlock with: multimodal run --config my.yaml -- --unlock" in message
    )
    assert main(["run", "-q", "--config", "my.yaml", "--cores", "1", "--", "--unlock"]) == 0
    assert not any((tmp_path / ".snakemake/locks").glob("*"))
    assert not (tmp_path / "results/x/cohort.zarr").exists()  # nothing was run while locked
