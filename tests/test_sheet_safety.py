"""The samples sheet cannot reach outside the data roots, patient IDs stay within their alphabet, and a
failed workflow ends with the failing rule's own line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import read_samples
from multimodal.workflow import failure_summary


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory holding data/ with one VCF-named file, and a sheet in sheets/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.vcf").write_text("##fileformat=VCFv4.2\n")
    (tmp_path / "sheets").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sheet(project: Path, *rows: str, name: str = "samples.tsv") -> Path:
    path = project / "sheets" / name
    path.write_text("patient_id\tvcf\n" + "".join(f"{row}\n" for row in rows))
    return path


@pytest.mark.parametrize("pid", ["P0001", "TCGA-05-4244", "GSM1234.1", "pt_7", "A" * 128])
def test_ids_in_the_alphabet_are_accepted(project, pid):
    assert list(read_samples(sheet(project, f"{pid}\tdata/a.vcf")).index) == [pid]


@pytest.mark.parametrize(
    "pid",
    ["P/1", "P 1", "../x", ".hidden", "-x", "P\\1", "Pé", "A" * 129, "P;rm", '"P\n1"'],
)
def test_ids_outside_the_alphabet_are_refused_naming_the_line(project, pid):
    with pytest.raises(MultimodalError, match=r"samples\.tsv: patient_id outside the allowed alphabet .* line 3"):
        read_samples(sheet(project, "P0\tdata/a.vcf", f"{pid}\t"))


def test_every_bad_id_is_named_up_to_ten_and_counted(project):
    rows = [f"P/{i}\t" for i in range(13)]
    with pytest.raises(MultimodalError) as info:
        read_samples(sheet(project, *rows))
    message = str(info.value)
    assert "on 13 lines" in message and "line 2 ('P/0')" in message and "line 11 ('P/9')" in message
    assert "and 3 more" in message and "P/10" not in message


def test_a_tab_inside_a_quoted_cell_is_refused(project):
    with pytest.raises(MultimodalError, match=r"line 2: column vcf holds a control character"):
        read_samples(sheet(project, 'P1\t"data/a.vcf\tx"'))


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../../../../../../../../etc/passwd", "data/../../outside.vcf"],
)
def test_paths_outside_the_data_roots_are_refused_before_opening(project, path):
    with pytest.raises(MultimodalError, match=r"samples\.tsv: line 2: column vcf: .* is outside the data roots"):
        read_samples(sheet(project, f"P1\t{path}"))


def test_a_link_pointing_out_is_refused_with_its_target(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "b.vcf"
    outside.write_text("x")
    os.symlink(outside, project / "data/link.vcf")
    with pytest.raises(MultimodalError, match=rf"data/link\.vcf \(resolves to {outside}\) is outside the data roots"):
        read_samples(sheet(project, "P1\tdata/link.vcf"))


def test_a_link_within_the_roots_is_fine(project):
    os.symlink(project / "data/a.vcf", project / "data/alias.vcf")
    assert read_samples(sheet(project, "P1\tdata/alias.vcf")).loc["P1", "vcf"] == "data/alias.vcf"


def test_a_directory_link_pointing_out_is_refused_for_every_file_under_it(project, tmp_path_factory):
    """The resolved directory is remembered per directory name: a file under a linked directory resolves
    through the link, a second file of the same directory too, and a root's sibling with the root's name as a
    prefix (data_other/ for root data/) is outside."""
    from multimodal.ingest.samples import DataRoots

    outside = tmp_path_factory.mktemp("outside")
    for name in ("b.vcf", "c.vcf"):
        (outside / name).write_text("x")
    os.symlink(outside, project / "data/linked")
    (project / "data_other").mkdir()
    roots = DataRoots([project / "data"])
    tricky = [
        "data/linked/b.vcf",
        "data/linked/c.vcf",
        "data/linked/missing.vcf",
        "data/../data/a.vcf",
        "data/./a.vcf",
        "data/nowhere/x.vcf",
        "data_other/x.vcf",
        "data",
        "data/",
        str(project / "data/linked/../a.vcf"),
    ]
    for path in tricky:  # what os.path.realpath says, the directory cache notwithstanding
        assert roots.resolve(path) == os.path.realpath(path), path
    assert roots.outside("data/linked/c.vcf") == Path(outside / "c.vcf")
    assert roots.outside("data_other/x.vcf") == project / "data_other/x.vcf"
    assert roots.outside("data/./a.vcf") is None and roots.outside("data") is None
    with pytest.raises(
        MultimodalError, match=r"line 3: column vcf: data/linked/c\.vcf \(resolves to .*c\.vcf\) is outside"
    ):
        read_samples(sheet(project, "P1\tdata/a.vcf", "P2\tdata/linked/c.vcf"), data_roots=[project / "data"])


def test_configured_roots_replace_the_defaults(project):
    path = sheet(project, "P1\tdata/a.vcf")
    with pytest.raises(MultimodalError, match="outside the data roots"):
        read_samples(path, data_roots=[project / "sheets"])
    assert len(read_samples(path, data_roots=[project / "data"])) == 1


def test_confinement_is_checked_for_every_row_before_any_file(project):
    """Row 2's missing file would be reported first if files were checked row by row."""
    with pytest.raises(MultimodalError, match="line 3: column vcf: /etc/passwd is outside"):
        read_samples(sheet(project, "P1\tdata/missing.vcf", "P2\t/etc/passwd"))


def test_a_comma_separated_sheet_named_tsv_is_called_so(project):
    path = project / "sheets/samples.tsv"
    path.write_text("patient_id,vcf\nP1,data/a.vcf\n")
    with pytest.raises(MultimodalError, match=r"samples\.tsv: looks comma-separated .* rename it \.csv"):
        read_samples(path)


TRANSCRIPT = """\
[Wed Dec  2 09:55:40 2026]
Error in rule assemble:
    message: None
    jobid: 8
    input: results/x/interim/variants/chunk_0.h5ad
    output: results/x/cohort.zarr
    log: {log} (check log file(s) for error details)
    shell:
        multimodal assemble ...
        (command exited with non-zero exit code)
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
WorkflowError:
At least one job did not complete successfully."""


def test_the_failing_rules_own_error_ends_the_run(tmp_path):
    log = tmp_path / "assemble.log"
    log.write_text(
        "10:00:01 multimodal INFO: reading\nmultimodal assemble: error: c.tsv: line 6: os_time -3 is negative\n"
    )
    summary = failure_summary(TRANSCRIPT.format(log=log).splitlines())
    assert summary == f"rule assemble: c.tsv: line 6: os_time -3 is negative (log: {log})"


def test_a_log_without_our_error_gives_its_last_line(tmp_path):
    log = tmp_path / "assemble.log"
    log.write_text("Killed\n\n")
    assert failure_summary(TRANSCRIPT.format(log=log).splitlines()) == f"rule assemble: Killed (log: {log})"


def test_a_failure_before_any_rule_gives_snakemakes_reason():
    transcript = ["Building DAG of jobs...", "MissingInputException in rule assemble in file x.smk, line 4:", "..."]
    assert failure_summary(transcript).startswith("Snakemake stopped before running any rule: MissingInputException")


def test_config_paths_are_confined_too(project):
    """The config's files (clinical, expression, maf, tables, cohort_vcf, tx2gene, the gene allow-list,
    model.splits) are checked before any is opened."""
    import yaml

    from multimodal.workflow import check_inputs

    (project / "sheets/clinical.tsv").write_text("patient_id\tos_time\tos_event\nP1\t1\t0\n")
    sheet(project, "P1\tdata/a.vcf")
    base = {"samples": "sheets/samples.tsv", "clinical": "sheets/clinical.tsv", "outdir": "results"}
    for key, value, where in [
        ("clinical", "/etc/passwd", "clinical"),
        ("tables", {"cnv": "../../../../../../etc/passwd"}, "tables.cnv"),
        ("model", {"splits": "/etc"}, "model.splits"),
        ("cohort_vcf", "/etc/passwd", "cohort_vcf"),
        ("ingest", {"tx2gene": "/etc/passwd"}, "ingest.tx2gene"),
        ("ingest", {"variant_filters": {"genes": "../../../../../../etc/passwd"}}, "ingest.variant_filters.genes"),
    ]:
        (project / "c.yaml").write_text(yaml.safe_dump({**base, key: value}))
        with pytest.raises(MultimodalError, match=rf"c\.yaml: {re.escape(where)}: .* is outside the data roots"):
            check_inputs(Path("c.yaml"))
