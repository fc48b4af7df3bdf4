"""Cohort MAF input: the same counts as per-patient VCFs, and a workflow run on a user config
(simulation off, variants from a MAF, no RNA, no imaging)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
import yaml
from conftest import run_workflow_in

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import read_samples
from multimodal.ingest.variants import mutation_matrix, read_maf

MAF_CLASS = {
    "missense_variant": "Missense_Mutation",
    "stop_gained": "Nonsense_Mutation",
    "frameshift_variant": "Frame_Shift_Del",
    "inframe_deletion": "In_Frame_Del",
    "synonymous_variant": "Silent",
    "intron_variant": "Intron",
    "splice_region_variant&intron_variant": "Splice_Region",
}


def vcfs_to_maf(samples: pd.DataFrame, path: Path) -> Path:
    """A GDC-style MAF (version line, FILTER column) holding every record of the patients' VCFs."""
    rows = []
    for pid, vcf in samples["vcf"].items():
        with pysam.VariantFile(vcf) as handle:
            for record in handle:
                first = record.info["CSQ"][0].split("|")
                rows.append(
                    {
                        "Hugo_Symbol": first[3],
                        "Chromosome": record.chrom,
                        "Start_Position": record.pos,
                        "Variant_Classification": MAF_CLASS[first[1]],
                        "Tumor_Sample_Barcode": f"{pid}-01A-11D",
                        "FILTER": ";".join(record.filter.keys()),
                    }
                )
    with open(path, "w") as handle:
        handle.write("#version gdc-1.0.0\n")
        pd.DataFrame(rows).to_csv(handle, sep="\t", index=False)
    return path


def test_read_maf_counts_pass_protein_altering(tmp_path):
    path = tmp_path / "cohort.maf"
    path.write_text(
        "#version 2.4\n"
        "Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tFILTER\n"
        "TP53\tMissense_Mutation\tS1\tPASS\n"
        "TP53\tNonsense_Mutation\tS1\tPASS\n"
        "KRAS\tMissense_Mutation\tS1\tpanel_of_normals\n"
        "KRAS\tSilent\tS2\tPASS\n"
        "Unknown\tMissense_Mutation\tS2\tPASS\n"
    )
    records = read_maf(path)
    assert dict(records["S1"].gene_counts) == {"TP53": 2}
    assert records["S1"].excluded["filter_not_pass"] == 1
    assert dict(records["S2"].gene_counts) == {}
    assert records["S2"].excluded == {"not_protein_altering": 1, "no_gene_symbol": 1}


def test_maf_without_required_columns(tmp_path):
    path = tmp_path / "bad.maf"
    path.write_text("Gene\tClass\nTP53\tMissense_Mutation\n")
    with pytest.raises(MultimodalError, match=r"bad\.maf: MAF lacks column\(s\) \['Hugo_Symbol'"):
        read_maf(path)


def test_maf_and_vcf_give_the_same_matrix(tiny_cohort, tmp_path):
    samples = read_samples(tiny_cohort / "samples.tsv")
    maf = vcfs_to_maf(samples, tmp_path / "cohort.maf")
    from_vcf = mutation_matrix(samples, progress=False)
    by_maf = samples.assign(vcf="", maf_sample=[f"{p}-01A-11D" for p in samples.index])
    by_maf.loc[by_maf.index[0], "maf_sample"] = "NOT-IN-MAF"
    from_maf = mutation_matrix(by_maf, maf=maf, progress=False)
    assert list(from_maf.obs_names) == list(from_vcf.obs_names)
    np.testing.assert_array_equal(from_maf.X[1:], from_vcf.to_df().reindex(columns=from_maf.var_names).to_numpy()[1:])
    assert from_maf.X[0].sum() == 0  # kept, with zero counts, and counted
    exclusions = from_maf.uns["ingest"]["exclusions"]
    no_records = int((from_vcf.obs["n_records"].iloc[1:] == 0).sum())  # a MAF has no row for them
    assert exclusions["maf_samples_without_records"] == 1 + no_records
    # the first patient's real barcode is in the MAF only if its VCF had records
    assert exclusions["maf_samples_not_in_samples_sheet"] == int(from_vcf.obs["n_records"].iloc[0] > 0)


@pytest.mark.slow
def test_workflow_on_a_user_config_with_a_maf_and_a_radiomics_table(tiny_cohort, tmp_path):
    from multimodal.ingest.imaging import imaging_matrix

    samples = read_samples(tiny_cohort / "samples.tsv")
    maf = vcfs_to_maf(samples, tmp_path / "cohort.maf")
    radiomics = imaging_matrix(samples, progress=False).to_df()
    radiomics.insert(0, "Image", "scan.nrrd")  # a text column, as exports carry
    radiomics.rename_axis("patient_id").reset_index().to_csv(tmp_path / "radiomics.csv", index=False)
    sheet = pd.DataFrame({"patient_id": samples.index, "maf_sample": [f"{p}-01A-11D" for p in samples.index]})
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    shutil.copy(tiny_cohort / "clinical.tsv", tmp_path / "clinical.tsv")
    config = {
        "samples": "samples.tsv",
        "clinical": "clinical.tsv",
        "maf": str(maf.name),
        "tables": {"imaging": "radiomics.csv"},
        "outdir": "results/maf only",  # a space: rule shell commands must quote paths
        "model": {"folds": 3, "epochs": 10},
        "explain": {"n_steps": 8},
    }
    (tmp_path / "my_cohort.yaml").write_text(yaml.safe_dump(config))
    code = run_workflow_in(tmp_path, "my_cohort.yaml")
    assert code == 0
    out = tmp_path / "results/maf only"
    summary = (out / "cohort_summary.txt").read_text()
    assert "variants" in summary and "expression" not in summary
    varying = int((radiomics.drop(columns="Image").nunique(dropna=True) > 1).sum())  # constant columns left out
    assert varying > 150  # the IBSI families, not the 50 features of store spec 0.1
    assert f"imaging     {len(radiomics):>6} patients x {varying:>6} features" in summary
    assert not (tmp_path / "demo").exists()  # the shipped demo settings did not leak into this config
    predictions = pd.read_csv(out / "model/predictions.tsv", sep="\t")
    assert len(predictions) == 60
    assert (out / "report.html").stat().st_size > 0


def test_read_maf_keeps_hash_and_quote_characters_inside_fields(tmp_path):
    """Only leading '#' lines are comments; a '#' or '"' inside a field (HGVS, free text) is data."""
    path = tmp_path / "cohort.maf"
    path.write_text(
        "#version gdc-1.0.0\n"
        "#filedate 20240101\n"
        "Hugo_Symbol\tHGVSc\tVariant_Classification\tTumor_Sample_Barcode\tCOMMENT\tFILTER\n"
        'TP53\tc.524G>A#1\tMissense_Mutation\tTCGA-05-4244-01A-01D-1105-08\t"open quote\tPASS\n'
        "PTEN\tc.1A>G\tStart_Codon_SNP\tTCGA-05-4244-01A-01D-1105-08\tsee #12\tPASS\n"
        "KRAS\tc.35G>T\tDe_novo_Start_OutOfFrame\tTCGA-05-4244-01A-01D-1105-08\t.\tPASS\n"
    )
    records = read_maf(path)
    assert list(records) == ["TCGA-05-4244-01A-01D-1105-08"]
    sample = records["TCGA-05-4244-01A-01D-1105-08"]
    assert dict(sample.gene_counts) == {"TP53": 1, "PTEN": 1}
    assert (sample.n_records, sample.n_pass, sample.excluded["not_protein_altering"]) == (3, 3, 1)


def test_maf_that_is_not_tab_separated_names_the_problem(tmp_path):
    path = tmp_path / "comma.maf"
    path.write_text("Hugo_Symbol,Variant_Classification,Tumor_Sample_Barcode\nTP53,Missense_Mutation,S1\n")
    with pytest.raises(MultimodalError, match=r"comma\.maf: MAF lacks column\(s\) .* tab-separated MAF header"):
        read_maf(path)


def test_maf_patients_are_read_once_in_chunk_zero(tiny_cohort, tmp_path, monkeypatch):
    """With a MAF, chunks share out the VCF patients; every MAF patient is in chunk 0, each patient once."""
    import anndata as ad

    from multimodal.cli import main

    monkeypatch.chdir(tiny_cohort)
    samples = read_samples("samples.tsv")
    maf = vcfs_to_maf(samples, tmp_path / "cohort.maf")
    sheet = samples.assign(maf_sample="")
    from_maf = sheet.index[1::2]  # every other patient comes from the MAF instead of its VCF
    sheet.loc[from_maf, "vcf"] = ""
    sheet.loc[from_maf, "maf_sample"] = [f"{p}-01A-11D" for p in from_maf]
    sheet.rename_axis("patient_id").reset_index().to_csv(tmp_path / "mixed.tsv", sep="\t", index=False)
    parts = []
    for k in range(3):
        out = tmp_path / f"chunk_{k}.h5ad"
        args = ["ingest", "variants", "-q", "--samples", str(tmp_path / "mixed.tsv"), "--maf", str(maf)]
        assert main([*args, "--chunk", str(k), "--n-chunks", "3", "--out", str(out)]) == 0
        parts.append(ad.read_h5ad(out))
    assert set(from_maf) <= set(parts[0].obs_names)
    assert not set(from_maf) & (set(parts[1].obs_names) | set(parts[2].obs_names))
    names = [p for part in parts for p in part.obs_names]
    assert sorted(names) == sorted(samples.index) and len(set(names)) == len(names)
    whole = mutation_matrix(samples, progress=False).to_df()
    for part in parts:
        np.testing.assert_array_equal(part.to_df().to_numpy(), whole.loc[part.obs_names, part.var_names].to_numpy())
    without = sum(int(p.uns["ingest"]["exclusions"]["patients_without_variant_calls"]) for p in parts)
    assert without == int((samples["vcf"] == "").sum())


def test_maf_barcodes_resolve_by_unique_prefix_and_a_total_mismatch_stops(tmp_path):
    """TCGA sheets often give the patient or sample barcode; the MAF holds the aliquot barcode."""
    path = tmp_path / "cohort.maf"
    path.write_text(
        "Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\n"
        "TP53\tMissense_Mutation\tTCGA-05-4244-01A-01D-1105-08\n"
        "KRAS\tMissense_Mutation\tTCGA-05-4249-01A-01D-1105-08\n"
        "EGFR\tMissense_Mutation\tTCGA-05-4249-02A-01D-1105-08\n"
        "STK11\tNonsense_Mutation\tTCGA-55-0001-01A-11D-A00Q-08\n"
    )
    sheet = pd.DataFrame(
        {"vcf": "", "maf_sample": ["TCGA-05-4244", "TCGA-05-4249-02A", "TCGA-99-0000"]},
        index=pd.Index(["P1", "P2", "P3"], name="patient_id"),
    )
    adata = mutation_matrix(sheet, maf=path, progress=False)
    assert adata.to_df().loc["P1", "TP53_mut"] == 1 and adata.to_df().loc["P2", "EGFR_mut"] == 1
    assert adata.to_df().loc["P3"].sum() == 0
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["maf_samples_matched_by_barcode_prefix"] == 2
    assert exclusions["maf_samples_without_records"] == 1
    assert exclusions["maf_samples_not_in_samples_sheet"] == 2  # TCGA-05-4249-01A and TCGA-55-0001
    ambiguous = sheet.assign(maf_sample=["TCGA-05-4244", "TCGA-05-4249", "TCGA-99-0000"])
    with pytest.raises(
        MultimodalError, match=r"'TCGA-05-4249', which matches 2 MAF Tumor_Sample_Barcodes \(TCGA-05-4249-01A"
    ):
        mutation_matrix(ambiguous, maf=path, progress=False)
    unmatched = sheet.assign(maf_sample=["PT-1", "PT-2", "PT-3"])
    with pytest.raises(
        MultimodalError, match=r"cohort\.maf: none of the 3 maf_sample barcodes .* \(sheet: 'PT-1'; MAF"
    ):
        mutation_matrix(unmatched, maf=path, progress=False)


def test_maf_row_cut_short_is_named_not_read_as_pass(tmp_path):
    path = tmp_path / "cut.maf"
    path.write_text(
        "#version 2.4\n"
        "Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tFILTER\n"
        "TTN\tMissense_Mutation\tS1\tPASS\n"
        "TTN\tMissense_Mutation\tS1\n"
    )
    with pytest.raises(MultimodalError, match=r"cut\.maf: line 4: 3 fields, the header has 4"):
        read_maf(path)


def test_unknown_variant_classification_stops_naming_lines_values_and_the_accepted_classes(tmp_path):
    """A KRAS missense written as 'Missense' used to vanish: counted as not protein-altering."""
    path = tmp_path / "cohort.maf"
    path.write_text(
        "#version 2.4\n"
        "Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tFILTER\n"
        "TP53\tMissense_Mutation\tS1\tPASS\n"
        "KRAS\tMissense\tS1\tPASS\n"
        "\n"  # blank lines are skipped by the reader, not counted as rows: line numbers stay right
        "EGFR\tSplice_Region\tS1\tPASS\n"
        "BRAF\t\tS2\tLowQual\n"
    )
    with pytest.raises(MultimodalError) as info:
        read_maf(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: unknown Variant_Classification on 2 line(s): line 4 'Missense', line 7 ''; accepted: 3'Flank, "
    )
    for known in ("Splice_Region", "Translation_Start_Site", "Nonstop_Mutation", "IGR", "lincRNA", "RNA", "5'Flank"):
        assert known in message


def test_unknown_variant_classifications_name_the_first_ten_and_the_total(tmp_path):
    path = tmp_path / "cohort.maf.gz"
    rows = [f"G{i}\t{'Missense' if i % 2 else 'Silent'}\tS1" for i in range(30)]
    import gzip

    with gzip.open(path, "wt") as handle:
        handle.write("Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\n" + "\n".join(rows) + "\n")
    with pytest.raises(
        MultimodalError,
        match=r"on 15 line\(s\): line 3 'Missense', line 5 'Missense', .*line 21 "
        r"'Missense' \(the first 10 of 15\); accepted: ",
    ):
        read_maf(path)


def test_every_known_variant_classification_is_accepted_and_counted_by_its_kind(tmp_path):
    from multimodal.ingest.variants import MAF_KNOWN_CLASSES, MAF_PROTEIN_ALTERING, MAF_UNCLASSIFIED

    for name in (
        "Splice_Region",
        "Translation_Start_Site",
        "Nonstop_Mutation",
        "IGR",
        "Intron",
        "RNA",
        "3'UTR",
        "5'Flank",
        "lincRNA",
        "De_novo_Start_InFrame",
        "De_novo_Start_OutOfFrame",
        "Start_Codon_SNP",
        "Start_Codon_Del",
        "Stop_Codon_Ins",
        "Targeted_Region",
        "Silent",
        "Frame_Shift_Ins",
    ):
        assert name in MAF_KNOWN_CLASSES
    path = tmp_path / "cohort.maf"
    lines = [f"G{i}\t{c}\tS1" for i, c in enumerate(sorted(MAF_KNOWN_CLASSES))]
    lines.append("KRAS\tmissense_mutation\tS1")  # a known class in another case is that class
    path.write_text("Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\n" + "\n".join(lines) + "\n")
    sample = read_maf(path)["S1"]
    assert sum(sample.gene_counts.values()) == len(MAF_PROTEIN_ALTERING) + 1 and sample.gene_counts["KRAS"] == 1
    assert sample.excluded["unclassified"] == len(MAF_UNCLASSIFIED)
    n_other = len(MAF_KNOWN_CLASSES) - len(MAF_PROTEIN_ALTERING) - len(MAF_UNCLASSIFIED)
    assert sample.excluded["not_protein_altering"] == n_other


def test_maf_filters_from_t_depth_and_t_alt_count_and_the_variant_table(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = tmp_path / "cohort.maf"
    path.write_text(
        "#version 2.4\n"
        "Hugo_Symbol\tChromosome\tStart_Position\tVariant_Classification\tTumor_Sample_Barcode\tHGVSp_Short\t"
        "FILTER\tt_depth\tt_alt_count\n"
        "TP53\tchr17\t7675088\tMissense_Mutation\tS1-01A\tp.R175H\tPASS\t100\t40\n"
        "KRAS\tchr12\t25245350\tMissense_Mutation\tS1-01A\tp.G12D\tPASS\t9\t5\n"  # depth 9 < 10
        "EGFR\tchr7\t55191822\tMissense_Mutation\tS1-01A\tp.L858R\tPASS\t200\t6\n"  # VAF 0.03 < 0.05
        "PTEN\tchr10\t87933147\tNonsense_Mutation\tS1-01A\tp.R130*\tclustered_events\t80\t40\n"
        "PTEN\tchr10\t87933150\tNonsense_Mutation\tS2-01A\tp.Q17*\tclustered_events;germline\t80\t40\n"
        "BRAF\tchr7\t140753336\tMissense_Mutation\tS2-01A\tp.V600E\tPASS\t\t\n"  # no depth given
        "NRAS\tchr1\t114716126\tMissense_Mutation\tS2-01A\tp.Q61K\tPASS\t50\t25\n"
    )
    genes = tmp_path / "genes.txt"
    genes.write_text("TP53\nKRAS\nEGFR\nPTEN\nBRAF\n")
    filters = VariantFilters.from_settings(filter=["PASS", "clustered_events"], min_depth=10, min_vaf=0.05, genes=genes)
    samples = pd.DataFrame(
        {"vcf": ["", ""], "maf_sample": ["S1", "S2"]}, index=pd.Index(["P1", "P2"], name="patient_id")
    )
    adata = mutation_matrix(samples, maf=path, filters=filters, progress=False)
    counts = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var["gene_symbol"])
    assert counts.loc["P1"][counts.loc["P1"] > 0].to_dict() == {"PTEN": 1.0, "TP53": 1.0}
    assert counts.loc["P2"].sum() == 0
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["records_below_min_depth"] == 1
    assert exclusions["records_below_min_vaf"] == 1
    assert exclusions["records_missing_depth"] == 1
    assert exclusions["records_filter_not_pass"] == 1
    assert exclusions["records_gene_not_in_allow_list"] == 1
    table = adata.uns["variant_table"].set_index("gene")
    assert table.loc["TP53", ["patient_id", "hgvsp", "outcome"]].tolist() == ["P1", "p.R175H", "counted"]
    assert table.loc["TP53", "vaf"] == pytest.approx(0.4) and table.loc["TP53", "pos"] == 7675088
    assert table.loc["NRAS", "outcome"] == "gene_not_in_allow_list"
    with pytest.raises(MultimodalError, match=r"bare\.maf: ingest\.variant_filters .* \['t_depth', 't_alt_count'\]"):
        bare = tmp_path / "bare.maf"
        bare.write_text("Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\nTP53\tSilent\tS1\n")
        read_maf(bare, filters=filters)


def test_maf_row_with_an_extra_field_is_named(tmp_path):
    path = tmp_path / "long.maf"
    path.write_text(
        "#version 2.4\n"
        "Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tFILTER\n"
        "TTN\tMissense_Mutation\tS1\tPASS\n"
        "\n"
        "TTN\tMissense_Mutation\tS1\tPASS\textra\n"
    )
    with pytest.raises(MultimodalError, match=r"long\.maf: line 5: 5 fields, the header has 4"):
        read_maf(path)
