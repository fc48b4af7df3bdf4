"""Expression ingest: CPM + log1p via scanpy, raw counts kept, bad cells named, exclusions counted."""

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.expression import _table_modality, expression_matrix, read_counts_table, read_expression_inputs


def write_counts(path, text):
    path.write_text(text)
    return path


def samples(rna):
    ids = [f"P{i}" for i in range(1, len(rna) + 1)]
    return pd.DataFrame({"rna_sample": rna}, index=pd.Index(ids, name="patient_id"))


def test_normalised_values_and_raw_counts(tmp_path):
    path = write_counts(tmp_path / "c.tsv", "gene\tS1\tS2\tS9\nA\t10\t0\t5\nB\t30\t20\t5\nZ\t0\t0\t0\n")
    adata = expression_matrix(read_counts_table(path), samples(["S1", "S2", ""]))
    assert list(adata.obs_names) == ["P1", "P2"]
    assert list(adata.var_names) == ["A", "B"]  # Z is zero everywhere: dropped and counted
    np.testing.assert_array_equal(adata.layers["counts"], [[10, 30], [0, 20]])
    expected = np.log1p(np.array([[10, 30], [0, 20]]) / np.array([[40], [20]]) * 1e6)
    np.testing.assert_allclose(adata.X, expected, rtol=1e-5)
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions == {
        "patients_without_rna": 1,
        "rna_samples_not_in_samples_sheet": 1,
        "genes_zero_in_all_samples": 1,
        "genes_with_missing_values": 0,
        "duplicate_gene_rows_summed": 0,
        "genes_below_min_expression": 0,
        "summary_rows_removed": 0,
        "rna_samples_matched_by_barcode_prefix": 0,
    }


def test_duplicate_gene_rows_are_summed(tmp_path):
    path = write_counts(tmp_path / "c.tsv", "gene\tS1\nA\t1\nA\t2\nB\t3\n")
    adata = expression_matrix(read_counts_table(path), samples(["S1"]))
    np.testing.assert_array_equal(adata.layers["counts"], [[3, 3]])
    assert adata.uns["ingest"]["exclusions"]["duplicate_gene_rows_summed"] == 1


def test_negative_count_names_file_line_gene_and_sample(tmp_path):
    path = write_counts(tmp_path / "neg.tsv", "gene\tS1\tS2\nA\t1\t2\nB\t3\t-4\n")
    with pytest.raises(MultimodalError, match=r"neg\.tsv: line 3: gene 'B', sample 'S2': negative count"):
        read_counts_table(path)


def test_non_number_is_named(tmp_path):
    path = write_counts(tmp_path / "bad.tsv", "gene\tS1\nA\tmany\n")
    with pytest.raises(MultimodalError, match=r"bad\.tsv: line 2: gene 'A', sample 'S1': value 'many' is not a number"):
        read_counts_table(path)


def test_rna_sample_missing_from_table(tmp_path):
    path = write_counts(tmp_path / "c.tsv", "gene\tS1\nA\t1\n")
    with pytest.raises(MultimodalError, match=r"no column 'S7'.*patient P1"):
        expression_matrix(read_counts_table(path), samples(["S7"]), source=str(path))


def test_featurecounts_output_and_summary_rows(tmp_path):
    path = write_counts(
        tmp_path / "fc.txt",
        '# Program:featureCounts v2.0.6; Command:"featureCounts" "-a" "genes.gtf"\n'
        "Geneid\tChr\tStart\tEnd\tStrand\tLength\tS1.bam\tS2.bam\n"
        "A\tchr1\t1\t100\t+\t100\t5\t7\n"
        "B\tchr1;chr1\t200;300\t250;400\t-;-\t150\t0\t3\n"
        "__no_feature\t.\t.\t.\t.\t0\t11\t12\n"
        "C\tchr2\t1\t10\t+\t10\t1\t-2\n",
    )
    with pytest.raises(MultimodalError, match=r"fc\.txt: line 6: gene 'C', sample 'S2\.bam': negative count -2"):
        read_counts_table(path)
    path.write_text(path.read_text().replace("\t-2\n", "\t2\n"))
    counts = read_counts_table(path)
    assert list(counts.columns) == ["S1.bam", "S2.bam"]
    assert list(counts.index) == ["A", "B", "C"]
    adata = expression_matrix(counts, samples(["S1.bam", "S2.bam"]))
    assert adata.uns["ingest"]["exclusions"]["summary_rows_removed"] == 1
    np.testing.assert_array_equal(adata.layers["counts"], [[5, 0, 1], [7, 3, 2]])


def test_repeated_sample_column_blank_lines_and_padded_header(tmp_path):
    path = write_counts(tmp_path / "dup.tsv", "gene\tS1\tS1\nA\t1\t2\n")
    with pytest.raises(MultimodalError, match=r"dup\.tsv: sample column 'S1' occurs more than once"):
        read_counts_table(path)
    path = write_counts(tmp_path / "gaps.tsv", "gene\t S1 \tS2\nA\t1\t2\n\nB\t3\t-1\n")
    with pytest.raises(MultimodalError, match=r"gaps\.tsv: line 4: gene 'B', sample 'S2': negative count"):
        read_counts_table(path)
    path.write_text("gene\t S1 \tS2\nA\t1\t2\n\nB\t3\t1\n")
    assert list(read_counts_table(path).columns) == ["S1", "S2"]


def test_r_write_table_output_and_reading_only_the_cohorts_samples(tmp_path):
    """R's write.table: quoted names, a header without the gene column; unclaimed samples are not parsed."""
    path = write_counts(tmp_path / "r.tsv", '"S1"\t"S2"\t"OTHER"\n"A"\t1\t2\tnot-a-number\n"B"\t3\t4\t5\n')
    counts = read_counts_table(path, sample_columns=["S1", "S2"])
    assert list(counts.columns) == ["S1", "S2"] and list(counts.index) == ["A", "B"]
    adata = expression_matrix(counts, samples(["S1", "S2"]))
    np.testing.assert_array_equal(adata.layers["counts"], [[1, 3], [2, 4]])
    assert adata.uns["ingest"]["exclusions"]["rna_samples_not_in_samples_sheet"] == 1


def test_missing_cells_leave_the_gene_out_and_are_counted(tmp_path):
    """PanCanAtlas-style RSEM table: SYMBOL|ENTREZ IDs, non-integer values, NA cells."""
    path = write_counts(
        tmp_path / "rsem.tsv",
        "gene_id\tS1\tS2\n?|100130426\t0.5\t1.25\nTP53|7157\t812.4\t95.1\nKRAS|3845\tNA\t20.2\n\nEGFR|1956\t300\t\n",
    )
    counts = read_counts_table(path)
    assert list(counts.index) == ["?|100130426", "TP53|7157"]
    adata = expression_matrix(counts, samples(["S1", "S2"]))
    assert list(adata.var["gene_symbol"]) == ["?|100130426", "TP53"]
    assert adata.uns["ingest"]["exclusions"]["genes_with_missing_values"] == 2
    assert adata.uns["ingest"]["params"]["integer_counts"] is False


def test_log_scale_table_is_refused_as_counts_and_read_as_log(tmp_path):
    """A UCSC Xena log2(x+1) / log2(TPM+0.001) table: normalising it again would be wrong."""
    text = "Ensembl_ID\tS1\tS2\nENSG00000141510.16\t11.2\t9.87\nENSG00000133703.11\t-9.9658\t3.1\n"
    path = write_counts(tmp_path / "xena.tsv", text)
    with pytest.raises(MultimodalError, match=r"negative count -9\.9658"):
        read_counts_table(path)
    counts = read_counts_table(path, nonnegative=False)
    with pytest.raises(MultimodalError, match=r"xena\.tsv: values look log-transformed .*expression_values: log"):
        expression_matrix(counts, samples(["S1", "S2"]), source=str(path))
    adata = expression_matrix(counts, samples(["S1", "S2"]), values="log")
    np.testing.assert_allclose(adata.X, [[11.2, -9.9658], [9.87, 3.1]], rtol=1e-6)
    assert "counts" not in adata.layers
    big = write_counts(tmp_path / "raw.tsv", "gene\tS1\tS2\nA\t1200\t3\nB\t5\t7\n")
    with pytest.raises(MultimodalError, match=r"values look like raw counts, not log-scale \(largest 1200\)"):
        expression_matrix(read_counts_table(big), samples(["S1", "S2"]), values="log")


def test_gdc_star_table_gct_and_short_rows(tmp_path):
    """GDC STAR counts merged (gene_name, gene_type beside the IDs), a GCT file, a row cut short."""
    gdc = write_counts(
        tmp_path / "gdc.tsv",
        "gene_id\tgene_name\tgene_type\tTCGA-A\tTCGA-B\n"
        "N_unmapped\t\t\t100\t200\n"
        "ENSG00000141510.16\tTP53\tprotein_coding\t812\t95\n"
        "ENSG00000133703.11\tKRAS\tprotein_coding\t40\t0\n",
    )
    counts = read_counts_table(gdc)
    assert list(counts.columns) == ["TCGA-A", "TCGA-B"]
    adata = expression_matrix(counts, samples(["TCGA-A", "TCGA-B"]))
    assert list(adata.var_names) == ["ENSG00000141510", "ENSG00000133703"]  # version suffixes stripped
    assert list(adata.var["gene_symbol"]) == ["TP53", "KRAS"]
    assert adata.uns["ingest"]["exclusions"]["rna_samples_not_in_samples_sheet"] == 0
    gct = write_counts(
        tmp_path / "gtex.gct", "#1.2\n2\t2\nName\tDescription\tS1\tS2\nENSG1.1\tTP53\t5\t7\nENSG2.3\tKRAS\t1\t2\n"
    )
    adata = expression_matrix(read_counts_table(gct), samples(["S1", "S2"]))
    np.testing.assert_array_equal(adata.layers["counts"], [[5, 1], [7, 2]])
    assert list(adata.var["gene_symbol"]) == ["TP53", "KRAS"]
    short = write_counts(tmp_path / "short.tsv", "gene\tS1\tS2\nA\t1\t2\nB\t3\n")
    with pytest.raises(MultimodalError, match=r"short\.tsv: line 3: 2 fields, the header has 3"):
        read_counts_table(short, sample_columns=["S1"])


def test_a_sheet_without_rna_samples_is_a_clear_error(tmp_path):
    path = write_counts(tmp_path / "c.tsv", "gene\tS1\nA\t1\n")
    with pytest.raises(MultimodalError, match=r"no patient in the samples sheet has an rna_sample"):
        expression_matrix(read_counts_table(path, sample_columns=[]), samples([""]), source=str(path))


def test_rna_sample_may_be_a_unique_barcode_prefix(tmp_path):
    """A TCGA sheet names the patient; the table's columns are aliquots. Tumour + normal is ambiguous."""
    header = "gene\tTCGA-05-4244-01A-11R-1107-07\tTCGA-05-4249-01A-11R-1107-07\tTCGA-05-4249-11A-01R-1107-07\n"
    path = write_counts(tmp_path / "c.tsv", header + "A\t1\t2\t3\nB\t4\t5\t6\n")
    sheet = samples(["TCGA-05-4244", "TCGA-05-4249-01A"])
    counts = read_counts_table(path, sample_columns=list(sheet["rna_sample"]))
    assert list(counts.columns) == ["TCGA-05-4244-01A-11R-1107-07", "TCGA-05-4249-01A-11R-1107-07"]
    adata = expression_matrix(counts, sheet)
    np.testing.assert_array_equal(adata.layers["counts"], [[1, 4], [2, 5]])
    assert list(adata.obs["rna_sample"]) == list(counts.columns)
    assert adata.uns["ingest"]["exclusions"]["rna_samples_matched_by_barcode_prefix"] == 2
    with pytest.raises(MultimodalError, match=r"'TCGA-05-4249', which matches 2 expression sample columns"):
        read_counts_table(path, sample_columns=["TCGA-05-4249"])


# --- a cohort table read in row blocks (read_expression_inputs) equals the whole-frame path -----------------

#: gene_name column, duplicate symbols, version suffixes (two rows one gene, integer and fractional), NA cells,
#: zero and low-expression genes, HTSeq/STAR summary rows (one negative: tolerated there), a blank line, a count
#: above float32's exact integers, a column no patient claims.
BLOCKED_TABLE = (
    "gene\tgene_name\tS1\tS2\tS3\tS4\tS9\n"
    "ENSG00000000001.5\tTP53\t100\t200\t0\t7\t1\n"
    "ENSG00000000002.1\tKRAS\t1.1\t2.2\t0.7\t3.3\t0\n"
    "ENSG00000000003.2\tTP53\t16777217\t3\t4\t5\t6\n"
    "__no_feature\t\t9\t9\t9\t-1\t9\n"
    "ENSG00000000004.1\tEGFR\tNA\t1\t2\t3\t4\n"
    "ENSG00000000001.7\tTP53\t5\t5\t5\t5\t5\n"
    "\n"
    "ENSG00000000005.1\tMYC\t0\t0\t0\t0\t8\n"
    "ENSG00000000006.3\tLOW\t1\t0\t2\t0\t0\n"
    "ENSG00000000002.4\tKRAS\t0.3\t0.1\t1e-7\t2.2\t0\n"
    "ENSG00000000007.1\t\t60\t61\t62\t63\t0\n"
    "N_unmapped\t\t50\t50\t50\t50\t50\n"
    "ENSG00000000008.1\tBRCA1\t1\t2\t3\t\t5\n"
)


def assert_same_modality(a, b):
    """Two expression modalities equal bit for bit: matrices, layers, obs, var and ingest notes."""
    np.testing.assert_array_equal(a.X, b.X, strict=True)
    assert a.layers.keys() == b.layers.keys()
    for key in a.layers:
        np.testing.assert_array_equal(a.layers[key], b.layers[key], strict=True)
        assert a.layers[key].flags.c_contiguous and b.layers[key].flags.c_contiguous
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert a.uns["ingest"] == b.uns["ingest"]


@pytest.mark.parametrize("block_cells", [1, 9, 1 << 22])  # one row per block, two rows, the whole table
def test_table_read_in_blocks_equals_the_frame_path(tmp_path, block_cells):
    path = write_counts(tmp_path / "c.tsv", BLOCKED_TABLE)
    sheet = samples(["S1", "S2", "S3", "S4", ""])
    frame_path = expression_matrix(
        read_counts_table(path, sample_columns=["S1", "S2", "S3", "S4"]),
        sheet,
        source=str(path),
        min_count=2,
        min_samples=2,
    )
    blocked = _table_modality(path, sheet, values="counts", min_count=2, min_samples=2, block_cells=block_cells)
    assert_same_modality(frame_path, blocked)
    # what the table holds, so that two equally wrong paths cannot pass
    assert list(blocked.var_names) == ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000007"]
    assert list(blocked.var["gene_symbol"]) == ["TP53", "KRAS", "TP53", "ENSG00000000007"]
    counts = blocked.layers["counts"]
    np.testing.assert_array_equal(counts[:, 0], [105, 205, 5, 12])
    np.testing.assert_array_equal(counts[:, 1], np.float32([1.1 + 0.3, 2.2 + 0.1, 0.7 + 1e-7, 3.3 + 2.2]))
    assert counts[0, 2] == np.float32(16777217)  # rounded once, from the float64 value
    assert blocked.uns["ingest"]["exclusions"] == {
        "patients_without_rna": 1,
        "rna_samples_not_in_samples_sheet": 1,
        "genes_zero_in_all_samples": 1,
        "genes_with_missing_values": 2,
        "duplicate_gene_rows_summed": 2,
        "genes_below_min_expression": 1,
        "summary_rows_removed": 2,
        "rna_samples_matched_by_barcode_prefix": 0,
    }
    assert blocked.uns["ingest"]["params"]["integer_counts"] is False
    via_inputs = read_expression_inputs(sheet, counts=path, min_count=2, min_samples=2)
    np.testing.assert_array_equal(via_inputs.X, blocked.X, strict=True)
    assert via_inputs.uns["ingest"]["params"]["input"] == str(path)


def test_log_scale_table_in_blocks_equals_the_frame_path(tmp_path):
    path = write_counts(
        tmp_path / "log.tsv",
        "gene\tS1\tS2\tS3\nA.1\t1.5\t2.25\t-0.5\nB\t3\t3\t3\nA.1\t0.1\t0\t7.7\nC|42\t0\t9.125\t1\n",
    )
    sheet = samples(["S1", "S2", "S3"])
    expected = expression_matrix(read_counts_table(path, nonnegative=False), sheet, source=str(path), values="log")
    blocked = _table_modality(path, sheet, values="log", block_cells=3)
    assert_same_modality(expected, blocked)
    assert list(blocked.var_names) == ["A.1", "C|42"]  # B is constant: left out
    assert "counts" not in blocked.layers
    np.testing.assert_array_equal(blocked.X[:, 0], np.float32([1.6, 2.25, 7.2]))


def test_bad_cells_in_a_later_block_are_named_as_the_frame_path_names_them(tmp_path):
    rows = "".join(f"G{g}\t{g}\t{g + 1}\n" for g in range(20)) + "\n"  # a blank line: line numbers still count it
    for bad, pattern in (("many", "value 'many' is not a number"), ("inf", "is not finite"), ("-3", "negative")):
        path = write_counts(tmp_path / "bad.tsv", "gene\tS1\tS2\n" + rows + f"X\t1\t{bad}\n")
        with pytest.raises(MultimodalError) as frame_error:
            read_counts_table(path)
        with pytest.raises(MultimodalError, match=rf"bad\.tsv: line 23: gene 'X', sample 'S2': .*{pattern}") as err:
            _table_modality(path, samples(["S1", "S2"]), values="counts", block_cells=4)
        assert str(err.value) == str(frame_error.value)
    many = "".join(f"B{g}\t-{g + 1}\t{'x' if g == 5 else 0}\n" for g in range(12))  # 12 negatives in 6 blocks, a text
    path = write_counts(tmp_path / "many.tsv", "gene\tS1\tS2\n" + rows + many)
    with pytest.raises(MultimodalError) as frame_error:
        read_counts_table(path)
    with pytest.raises(
        MultimodalError, match=r"line 28: gene 'B5', sample 'S2': value 'x' is not a number; 12 cells"
    ) as err:
        _table_modality(path, samples(["S1", "S2"]), values="counts", block_cells=4)
    assert str(err.value) == str(frame_error.value)
    assert "line 23 (gene 'B0', sample 'S1': '-1')" in str(err.value) and "and 2 more" in str(err.value)


def test_whole_number_duplicates_are_summed_from_the_float32_blocks(tmp_path):
    path = write_counts(
        tmp_path / "c.tsv",
        "gene\tS1\tS2\nENSG00000000001.1\t3\t16777216\nB\t1\t1\nENSG00000000001.2\t4\t1\nENSG00000000001.3\t0\t1\n",
    )
    sheet = samples(["S1", "S2"])
    expected = expression_matrix(read_counts_table(path), sheet, source=str(path))
    blocked = _table_modality(path, sheet, values="counts", block_cells=2)
    assert_same_modality(expected, blocked)
    np.testing.assert_array_equal(blocked.layers["counts"], np.float32([[7, 1], [16777218, 1]]))


@pytest.mark.parametrize("duplicates", [False, True])
def test_library_sizes_beyond_float32_sum_as_scanpy_sums_the_frame_paths_matrix(tmp_path, duplicates):
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(7)
    ids = [f"ENSG{g:011d}.1" for g in range(60)]
    if duplicates:
        ids[10] = "ENSG00000000003.2"  # summed into the fourth gene: pandas then gives a Fortran-ordered matrix
    table = pd.DataFrame(rng.integers(1, 3_000_000, (60, 12)) * 1.25, index=ids, columns=[f"S{i}" for i in range(12)])
    path = tmp_path / "big.tsv"
    table.to_csv(path, sep="\t", index_label="gene")
    sheet = samples(list(table.columns))
    expected = expression_matrix(read_counts_table(path), sheet, source=str(path))
    blocked = _table_modality(path, sheet, values="counts", block_cells=30)
    assert_same_modality(expected, blocked)
    counts = blocked.layers["counts"]
    layout = np.asfortranarray(counts) if duplicates else counts.copy()
    assert (np.asfortranarray(counts).sum(axis=1) != counts.sum(axis=1)).any()  # the order shows in float32
    np.testing.assert_array_equal(blocked.obs["library_size"], layout.sum(axis=1).astype(np.float64))
    reference = ad.AnnData(layout)
    sc.pp.normalize_total(reference, target_sum=1e6)
    sc.pp.log1p(reference)
    np.testing.assert_array_equal(blocked.X, reference.X)
