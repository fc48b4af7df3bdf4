"""A cohort in the shapes TCGA hands out, end to end through `multimodal run`: a GDC MAF keyed by aliquot
barcodes, a GDC STAR counts table (Ensembl IDs, gene_name, summary rows, aliquot columns), a TCGA-CDR
clinical table (OS/OS.time in days, bracketed missing values, no response, no site), and a samples sheet
that names only patient barcodes."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_workflow_in
from test_maf import vcfs_to_maf

from multimodal.ingest.samples import read_samples


def tcga_barcode(pid: str) -> str:
    return f"TCGA-{int(pid[1:]) % 7 + 10:02d}-{int(pid[1:]):04d}"


@pytest.mark.slow
def test_tcga_shaped_cohort_runs_end_to_end(tiny_cohort, tmp_path):
    samples = read_samples(tiny_cohort / "samples.tsv")
    barcode = {pid: tcga_barcode(pid) for pid in samples.index}

    maf = vcfs_to_maf(samples, tmp_path / "raw.maf")
    table = pd.read_csv(maf, sep="\t", comment="#", dtype=str)
    table["Tumor_Sample_Barcode"] = [
        barcode[b.split("-")[0]] + "-01A-11D-A10S-08" for b in table["Tumor_Sample_Barcode"]
    ]
    with open(tmp_path / "gdc.maf", "w") as handle:
        handle.write("#version gdc-1.0.0\n#annotation.spec gdc-1.0.1-public\n")
        table.to_csv(handle, sep="\t", index=False)

    counts = pd.read_csv(tiny_cohort / "expression_counts.tsv", sep="\t", index_col=0)
    aliquot = {s: barcode[s.split("-")[0]] + "-01A-11R-A10U-07" for s in counts.columns}
    star = counts.rename(columns=aliquot)
    star.insert(0, "gene_type", "protein_coding")
    star.insert(0, "gene_name", counts.index)
    star.index = [f"ENSG{i:011d}.{i % 5 + 1}" for i in range(len(star))]
    summary = pd.DataFrame([[""] * 2 + [1000] * (star.shape[1] - 2)], columns=star.columns, index=["N_unmapped"])
    pd.concat([summary, star]).rename_axis("gene_id").to_csv(tmp_path / "star_counts.tsv", sep="\t")

    clinical = pd.read_csv(tiny_cohort / "clinical.tsv", sep="\t", dtype=str)
    cdr = pd.DataFrame(
        {
            "bcr_patient_barcode": clinical["patient_id"].map(barcode),
            "type": "LUAD",
            "age_at_initial_pathologic_diagnosis": clinical["age"],
            "gender": clinical["sex"].str.upper(),
            "OS": clinical["os_event"],
            "OS.time": (clinical["os_time"].astype(float) * 30.44).round().astype(int).astype(str),
        }
    )
    cdr.loc[3, "age_at_initial_pathologic_diagnosis"] = "[Not Available]"
    cdr.loc[5, "gender"] = "#N/A"
    cdr.loc[7, ["OS", "OS.time"]] = ["[Not Available]", "'--"]
    cdr.index = range(1, len(cdr) + 1)  # the CDR's leading unnamed row-number column
    cdr.to_csv(tmp_path / "cdr.tsv", sep="\t")

    sheet = pd.DataFrame(
        {
            "patient_id": [barcode[p] for p in samples.index],
            "maf_sample": [barcode[p] for p in samples.index],
            "rna_sample": [barcode[p] if s else "" for p, s in samples["rna_sample"].items()],
        }
    )
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    config = {
        "samples": "samples.tsv",
        "clinical": "cdr.tsv",
        "expression": "star_counts.tsv",
        "maf": "gdc.maf",
        "outdir": "results/tcga",
        "clinical_columns": {
            "id_column": "bcr_patient_barcode",
            "time_column": "OS.time",
            "time_unit": "days",
            "event_column": "OS",
            "response_column": None,
            "site_column": None,
            "covariates": ["age_at_initial_pathologic_diagnosis", "gender"],
            "categorical": ["gender"],
        },
        "model": {"folds": 3, "epochs": 10},
        "explain": {"n_steps": 8},
    }
    (tmp_path / "tcga.yaml").write_text(yaml.safe_dump(config))
    assert run_workflow_in(tmp_path, "tcga.yaml") == 0

    out = tmp_path / "results/tcga"
    import mudata

    mdata = mudata.read_zarr(out / "cohort.zarr")
    variants, expression = mdata.mod["variants"], mdata.mod["expression"]
    exclusions = mdata.uns["provenance"]["exclusions"]
    assert int(exclusions["variants"]["maf_samples_matched_by_barcode_prefix"]) > 0
    assert int(exclusions["expression"]["rna_samples_matched_by_barcode_prefix"]) == int(
        (sheet["rna_sample"] != "").sum()
    )
    assert int(exclusions["expression"]["summary_rows_removed"]) == 1
    assert int(exclusions["cohort"]["patients_without_survival_outcome"]) == 1
    assert "patients_without_response_outcome" not in exclusions["cohort"]
    assert expression.var.loc["ENSG00000000000", "gene_symbol"] == counts.index[0]
    # the same mutation counts as from the per-patient VCFs
    from multimodal.ingest.variants import mutation_matrix

    from_vcf = mutation_matrix(samples, progress=False).to_df().rename(index=barcode)
    mine = variants.to_df()
    np.testing.assert_array_equal(mine.loc[from_vcf.index, from_vcf.columns].to_numpy(), from_vcf.to_numpy())
    predictions = pd.read_csv(out / "model/predictions.tsv", sep="\t")
    assert sorted(predictions["patient_id"]) == sorted(sheet["patient_id"])  # every patient scored once, held out
    no_outcome = predictions[predictions["patient_id"] == cdr.loc[8, "bcr_patient_barcode"]]
    assert no_outcome["time"].isna().all() and np.isfinite(no_outcome["risk"]).all()
    report = (out / "report.html").read_text()
    assert "[Not Available]" not in report and "Times are in days." in report

    # Editing the report's section (and a comment) reruns the report only, not assembly or training.
    trained = (out / "model/metrics.json").stat().st_mtime_ns
    config["report"] = {"title": "TCGA-shaped cohort, second look"}
    (tmp_path / "tcga.yaml").write_text("# edited\n" + yaml.safe_dump(config))
    assert run_workflow_in(tmp_path, "tcga.yaml") == 0
    assert (out / "model/metrics.json").stat().st_mtime_ns == trained
    assert "TCGA-shaped cohort, second look" in (out / "report.html").read_text()
