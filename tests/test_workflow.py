"""End to end: the shipped demo configuration through Snakemake, checked against the planted truth."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_workflow_in


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`multimodal run` with the shipped config/config.yaml, in a scratch working directory."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "config", workdir / "config", symlinks=False)
    code = run_workflow_in(workdir, "config/config.yaml")
    assert code == 0
    return workdir


@pytest.mark.slow
def test_shipped_samples_sheet_is_what_the_simulator_writes(demo_run):
    assert (demo_run / "demo" / "samples.tsv").read_text() == (REPO / "config" / "samples.tsv").read_text()


@pytest.mark.slow
def test_demo_cross_validated_c_index(demo_run):
    metrics = json.loads((demo_run / "results/demo/model/metrics.json").read_text())
    assert metrics["mean"]["c_index"] >= 0.70
    assert metrics["n_patients_scored"] == metrics["n_patients"] == 300


@pytest.mark.slow
def test_demo_attributions_find_the_planted_truth(demo_run):
    truth = json.loads((demo_run / "demo/truth.json").read_text())
    importance = pd.read_csv(demo_run / "results/demo/explain/feature_importance.tsv", sep="\t")
    top = {m: list(g.sort_values("rank")["feature"].head(10)) for m, g in importance.groupby("modality")}
    for gene in truth["driver_genes"]:
        assert f"{gene}_mut" in top["variants"], (gene, top["variants"])
    program = truth["expression_program"]["genes"]
    in_top = [g for g in program if g in top["expression"]]
    assert len(in_top) >= 6, (in_top, top["expression"])  # most of the 8-gene program
    assert truth["imaging"]["planted_feature"] in top["imaging"], top["imaging"]


@pytest.mark.slow
def test_demo_outputs_and_logs(demo_run):
    out = demo_run / "results/demo"
    html = (out / "report.html").read_text()
    assert "<html" in html.lower()
    summary = (out / "cohort_summary.txt").read_text()
    assert "patients: 300" in summary
    for log in ("simulate.log", "assemble.log", "train.log", "explain.log", "report.log"):
        assert (out / "logs" / log).is_file()
    # 300 patients: variants in jobs of ingest.variant_chunk_size (250), imaging of ingest.chunk_size (100)
    assert len(list((out / "interim" / "variants").glob("chunk_*.h5ad"))) == 2
    assert len(list((out / "interim" / "imaging").glob("chunk_*.h5ad"))) == 3


@pytest.mark.slow
def test_run_terminal_shows_progress_folds_and_summary_not_job_listings(tiny_cohort, tmp_path):
    """`multimodal run` as a user types it, on a reduced cohort: stage progress and each fold's C-index on the
    terminal, Snakemake's job listings only in the transcript under the results directory."""
    import subprocess
    import sys

    import yaml

    config = {
        "samples": str(tiny_cohort / "samples.tsv"),
        "clinical": str(tiny_cohort / "clinical.tsv"),
        "expression": str(tiny_cohort / "expression_counts.tsv"),
        "outdir": "results/small",
        "model": {"folds": 3, "epochs": 8},
        "explain": {"n_steps": 8},
    }
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "multimodal.cli", "run", "--config", "small.yaml"]
    command += ["--snakefile", str(REPO / "Snakefile"), "--cores", "2"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    terminal = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(terminal[-20:])
    listing = [ln for ln in terminal if ln.lstrip().startswith(("jobid:", "input:", "output:", "reason:", "rule "))]
    assert not listing, listing[:5]
    assert max(len(ln) for ln in terminal) < 400
    folds = [ln for ln in terminal if "train: fold " in ln and "C-index" in ln]
    assert sorted(int(ln.split("train: fold ")[1].split(":")[0]) for ln in folds) == [0, 1, 2], terminal
    assert any("train done" in ln for ln in terminal), terminal
    last = terminal[-1]
    assert "C-index" in last and "against penalised Cox" in last, last
    assert f"report: {Path('results/small/report.html')}" in last, last
    transcript = (tmp_path / "results/small/logs/run.log").read_text()
    assert "jobid:" in transcript and "Finished jobid" in transcript
    # the report lists every stage's command, read from that transcript
    report = (tmp_path / "results/small/report.html").read_text()
    commands = report.split('id="stage-commands"', 1)[1].split("</table>", 1)[0]
    for stage in ("assemble", "train", "explain", "report"):
        assert f"<td>{stage}</td>" in commands, stage
    assert "multimodal train --store" in commands


def test_progress_from_a_real_snakemake_run_shows_stages_and_fold_lines_only(tmp_path, caplog):
    """A two-rule workflow through Snakemake itself: the terminal gets stages and the fold lines one rule's log
    holds; Snakemake's job listing goes to the transcript file only."""
    import logging
    import os
    import sys

    from multimodal.workflow import _stream

    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: 'b.txt'\n"
        "rule fit:\n    output: 'a.txt'\n    log: 'logs/fit.log'\n"
        "    shell: \"(echo '12:00:00 multimodal.model.train INFO: fold 0: C-index 0.712, AUROC 0.650'; sleep 1.5; "
        "echo '12:00:01 multimodal.model.train INFO: fold 1: C-index 0.688, AUROC n/a') > {log}; touch {output}\"\n"
        "rule use:\n    input: 'a.txt'\n    output: 'b.txt'\n    shell: 'cp {input} {output}'\n"
    )
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), "--cores", "1"]
    command += ["--printshellcmds", "--directory", str(tmp_path)]
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="multimodal.workflow"):
            code, transcript = _stream(command, dict(os.environ), transcript_path=tmp_path / "logs" / "run.log")
    finally:
        os.chdir(previous)
    assert code == 0
    shown = [r.getMessage() for r in caplog.records if r.name == "multimodal.workflow"]
    assert shown == [
        "3 job(s) to run",
        "started fit",
        "train: fold 0: C-index 0.712, AUROC 0.650",
        "train: fold 1: C-index 0.688, AUROC n/a",
        "[1/3] fit done",
        "started use",
        "[2/3] use done",
    ]
    saved = (tmp_path / "logs" / "run.log").read_text().splitlines()
    assert saved == transcript and any(line.strip().startswith("jobid:") for line in saved)


def test_sheet_modalities_counts_per_patient_rna_files_as_expression() -> None:
    """A cohort giving only per-patient rna_file files (no cohort counts table) still gets an expression stage."""
    import pandas as pd

    from multimodal.workflow import sheet_modalities

    sheet = pd.DataFrame(
        {
            "patient_id": ["P1", "P2"],
            "vcf": ["", ""],
            "maf_sample": ["", ""],
            "rna_sample": ["", ""],
            "image": ["", ""],
            "mask": ["", ""],
            "rna_file": ["P1.quant.sf", ""],
        }
    )
    assert sheet_modalities(sheet, {"expression": None}) == {"variants": False, "expression": True, "imaging": False}
    no_files = sheet.assign(rna_file="")
    assert sheet_modalities(no_files, {"expression": None})["expression"] is False
    with_table = no_files.assign(rna_sample=["S1", ""])
    assert sheet_modalities(with_table, {"expression": "counts.tsv"})["expression"] is True


def test_every_stage_reads_the_config_file_it_was_given_not_the_shipped_one(tmp_path):
    """Run from the project directory (where config/config.yaml exists) with another config file: Snakemake lists
    the Snakefile's own config file after the command line's, and every verb once read the shipped one."""
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["outdir"] = str(tmp_path / "out")
    mine = tmp_path / "my_cohort.yaml"
    mine.write_text(yaml.safe_dump(config))
    base = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)]
    base += ["--cores", "1", "--nolock", "--dry-run", "--printshellcmds"]
    done = subprocess.run([*base, "--configfile", str(mine)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = [line for line in (done.stdout + done.stderr).splitlines() if "Shell command: multimodal " in line]
    assert len(commands) >= 8  # simulate, the ingest chunks, assemble, train, explain, report, ...
    assert all(f"--config {mine}" in line for line in commands if "--config" in line)
    assert sum("--config" in line for line in commands) >= 6
    assert "config/config.yaml" not in "\n".join(commands)

    refused = subprocess.run(
        [*base, "--configfile", str(mine), str(REPO / "config/config.yaml")], capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "give one --configfile" in refused.stdout + refused.stderr


def test_expression_jobs_ask_for_memory_by_the_size_of_the_counts_table(tmp_path):
    """ingest_expression and assemble hold the cohort table as a matrix: their mem_mb (what SLURM allocates)
    grows with the table (a sparse 2,400 MB file: 500 + 2.5 x 2,400 MB), never below the 4,000 MB floor."""
    import os
    import re
    import subprocess
    import sys

    (tmp_path / "config").mkdir()
    (tmp_path / "demo").mkdir()
    for name in ("config.yaml", "samples.tsv"):
        shutil.copy(REPO / "config" / name, tmp_path / "config" / name)
    with open(tmp_path / "demo/expression_counts.tsv", "wb") as handle:
        handle.truncate(2_400_000_000)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    done = subprocess.run([*command, "--cores", "1", "--dry-run"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    memory = {
        rule: int(mem) for rule, mem in re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: .*?mem_mb=(\d+)", text)
    }
    assert memory["ingest_expression"] == memory["assemble"] == 500 + int(2.5 * 2400)
    assert memory["ingest_variants"] == 2000  # not a table rule
    os.truncate(tmp_path / "demo/expression_counts.tsv", 1000)
    done = subprocess.run([*command, "--cores", "1", "--dry-run"], capture_output=True, text=True, timeout=300)
    small = dict(re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: .*?mem_mb=(\d+)", done.stdout + done.stderr))
    assert small["ingest_expression"] == small["assemble"] == "4000"


def test_variant_jobs_take_their_own_chunk_size(tmp_path):
    """ingest.variant_chunk_size sets the patients per ingest_variants job (start-up amortised over more VCFs);
    imaging keeps ingest.chunk_size; every patient is in exactly one job of each (the demo sheet's 300)."""
    import re
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["outdir"] = str(tmp_path / "out")
    config["ingest"] |= {"chunk_size": 100, "variant_chunk_size": 150}
    mine = tmp_path / "my_cohort.yaml"
    mine.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)]
    command += ["--configfile", str(mine), "--cores", "1", "--nolock", "--dry-run", "--printshellcmds"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    variants = re.findall(r"multimodal ingest variants .*?--chunk (\d+) --n-chunks (\d+)", text)
    imaging = re.findall(r"multimodal ingest imaging .*?--chunk (\d+) --n-chunks (\d+)", text)
    assert sorted(variants) == [("0", "2"), ("1", "2")]  # 300 patients / 150 -> 2 jobs
    assert sorted(imaging) == [("0", "3"), ("1", "3"), ("2", "3")]  # 300 / 100 -> 3
    config["ingest"]["variant_chunk_size"] = 300
    mine.write_text(yaml.safe_dump(config))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    variants = re.findall(r"multimodal ingest variants .*?--chunk (\d+) --n-chunks (\d+)", done.stdout + done.stderr)
    assert variants == [("0", "1")]
