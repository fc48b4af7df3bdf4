"""Expression inputs in their real formats: Salmon quant.sf + tx2gene, featureCounts, bulk and single-cell
.h5ad written by anndata, 10x .h5 in Cell Ranger's HDF5 layout (read back by scanpy)."""

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multimodal.cli import main
from multimodal.errors import MultimodalError
from multimodal.ingest.expression import expression_matrix, read_counts_table, read_expression_inputs
from multimodal.ingest.expression_formats import (
    bulk_h5ad_modality,
    read_10x_h5_profile,
    read_h5ad_expression,
    strip_version,
)

SALMON_HEADER = "Name\tLength\tEffectiveLength\tTPM\tNumReads\n"


def write_quant(path: Path, rows: list[tuple[str, float, float]]) -> Path:
    """A Salmon quant.sf: (transcript, TPM, NumReads) rows, lengths made up."""
    lines = [SALMON_HEADER] + [f"{tx}\t1500\t1320.25\t{tpm}\t{reads}\n" for tx, tpm, reads in rows]
    path.write_text("".join(lines))
    return path


def write_10x_h5(path: Path, counts: np.ndarray, ids: list[str], names: list[str], barcodes: list[str]) -> Path:
    """Cell Ranger v3's filtered_feature_bc_matrix.h5: /matrix CSC (features x barcodes) and /matrix/features."""
    matrix = sp.csc_matrix(counts.T)  # features x barcodes, compressed by barcode as Cell Ranger stores it
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        group.create_dataset("data", data=matrix.data.astype(np.int32))
        group.create_dataset("indices", data=matrix.indices.astype(np.int64))
        group.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array(matrix.shape, dtype=np.int32))
        features = group.create_group("features")
        features.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        features.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(ids), dtype="S"))
        features.create_dataset("genome", data=np.array(["GRCh38"] * len(ids), dtype="S"))
        features.create_dataset("id", data=np.array(ids, dtype="S"))
        features.create_dataset("name", data=np.array(names, dtype="S"))
    return path


def sheet(rows: dict[str, dict[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    for column in ("rna_sample", "rna_file"):
        if column not in frame:
            frame[column] = ""
    frame.index.name = "patient_id"
    return frame


def test_strip_version_keeps_par_y_and_other_names():
    ids = pd.Index(["ENSG00000141510.17", "ENSG00000182378.14_PAR_Y", "ENSMUSG00000059552.13", "TP53", "A.1"])
    assert list(strip_version(ids)) == [
        "ENSG00000141510",
        "ENSG00000182378_PAR_Y",
        "ENSMUSG00000059552",
        "TP53",
        "A.1",
    ]


def test_salmon_quant_summed_to_genes_through_tx2gene(tmp_path):
    tx2gene = tmp_path / "tx2gene.tsv"
    tx2gene.write_text(
        "ENST00000269305.9\tENSG00000141510.17\n"
        "ENST00000445888.6\tENSG00000141510.17\n"
        "ENST00000256078.10\tENSG00000133703.14\n"
    )
    # two transcripts of TP53 (one written without its version), one of KRAS, one unknown transcript
    a = write_quant(
        tmp_path / "a.sf",
        [
            ("ENST00000269305.9", 10.5, 120.25),
            ("ENST00000445888", 4.5, 30.75),
            ("ENST00000256078.10", 5, 400),
            ("ENST00000999999.1", 1, 9),
        ],
    )
    b = write_quant(tmp_path / "b.sf", [("ENST00000269305.9", 2, 200), ("ENST00000256078.10", 0, 0)])
    samples = sheet({"P1": {"rna_file": str(a)}, "P2": {"rna_file": str(b)}, "P3": {"rna_file": ""}})
    adata = read_expression_inputs(samples, tx2gene=tx2gene)
    assert list(adata.obs_names) == ["P1", "P2"]
    counts = pd.DataFrame(adata.layers["counts"], index=adata.obs_names, columns=adata.var_names)
    assert counts.loc["P1", "ENSG00000141510"] == pytest.approx(151.0)  # 120.25 + 30.75
    assert counts.loc["P1", "ENSG00000133703"] == 400
    assert counts.loc["P2"].to_dict() == {"ENSG00000141510": 200.0, "ENSG00000133703": 0.0}
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["transcripts_not_in_tx2gene"] == 1
    assert exclusions["patients_without_rna"] == 1


def test_salmon_quant_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.sf"
    bad.write_text("Name\tLength\tTPM\tNumReads\nENST1\t100\t1\t2\n")
    with pytest.raises(MultimodalError, match=r"bad\.sf: line 1 is not Salmon's quant\.sf header"):
        read_expression_inputs(sheet({"P1": {"rna_file": str(bad)}}))
    negative = write_quant(tmp_path / "neg.sf", [("ENST1", 1, 5), ("ENST2", 1, -3)])
    with pytest.raises(MultimodalError, match=r"neg\.sf: line 3: NumReads '-3' is not a non-negative"):
        read_expression_inputs(sheet({"P1": {"rna_file": str(negative)}}))
    tx2gene = tmp_path / "t2g.tsv"
    tx2gene.write_text("ENST9\tENSG9\n")
    good = write_quant(tmp_path / "good.sf", [("ENST1", 1, 5)])
    with pytest.raises(MultimodalError, match=r"good\.sf: none of its 1 transcripts .* tx2gene"):
        read_expression_inputs(sheet({"P1": {"rna_file": str(good)}}), tx2gene=tx2gene)


def test_featurecounts_output_with_its_program_line_and_bam_columns(tmp_path):
    path = tmp_path / "counts.txt"
    path.write_text(
        '# Program:featureCounts v2.0.6; Command:"featureCounts" "-a" "genes.gtf" "-o" "counts.txt" '
        '"S1.bam" "S2.bam" \n'
        "Geneid\tChr\tStart\tEnd\tStrand\tLength\tS1.bam\tS2.bam\n"
        "ENSG00000141510.17\tchr17;chr17\t7661779;7668402\t7662014;7669690\t-;-\t1524\t812\t95\n"
        "ENSG00000133703.14\tchr12\t25205246\t25250929\t-\t5889\t40\t0\n"
        "ENSG00000000003.15\tchrX\t100627108\t100639991\t-\t4535\t0\t0\n"
    )
    samples = sheet({"P1": {"rna_sample": "S1.bam"}, "P2": {"rna_sample": "S2.bam"}})
    adata = read_expression_inputs(samples, counts=path)
    assert list(adata.var_names) == ["ENSG00000141510", "ENSG00000133703"]
    np.testing.assert_array_equal(adata.layers["counts"], [[812, 40], [95, 0]])
    assert adata.uns["ingest"]["exclusions"]["genes_zero_in_all_samples"] == 1


def test_bulk_h5ad_reads_the_counts_layer(tmp_path):
    counts = np.array([[10, 0, 5], [3, 7, 0]], dtype=np.float32)
    bulk = ad.AnnData(
        X=np.log1p(counts),
        obs=pd.DataFrame(index=["S1", "S2"]),
        var=pd.DataFrame({"gene_name": ["TP53", "KRAS", "EGFR"]}, index=["ENSG1.1", "ENSG2.4", "ENSG3.2"]),
    )
    bulk.layers["counts"] = counts
    path = tmp_path / "bulk.h5ad"
    bulk.write_h5ad(path)
    adata = read_expression_inputs(sheet({"P1": {"rna_sample": "S2"}, "P2": {"rna_sample": "S1"}}), counts=path)
    np.testing.assert_array_equal(adata.layers["counts"], [[3, 7, 0], [10, 0, 5]])
    assert list(adata.var["gene_symbol"]) == ["TP53", "KRAS", "EGFR"]


#: A bulk cohort: 6 samples (S2 and S5 claimed by no patient) x 8 genes. Gene rows 0, 2 and 7 are one gene after
#: version stripping (summed); rows 1 and 3 share the symbol KRAS under two IDs (two features); row 4 reaches
#: 10 in one cohort sample only (below the filter); row 5 is zero in every cohort sample (not in S2).
BULK_IDS = [
    "ENSG00000000001.1",
    "ENSG00000000002.3",
    "ENSG00000000001.2",
    "ENSG00000000004.1",
    "ENSG00000000005.1",
    "ENSG00000000006.1",
    "ENSG00000000007.2",
    "ENSG00000000001.9",
]
BULK_SYMBOLS = ["TP53", "KRAS", "TP53", "KRAS", "LOW", "ZERO", "MYC", "TP53"]
BULK_COUNTS = np.array(
    [
        [100, 17, 5, 30, 9, 0, 12, 1],
        [200, 0, 5, 40, 0, 0, 13, 1],
        [1, 1, 1, 1, 1, 50, 1, 1],
        [0, 3, 5, 50, 11, 0, 14, 1],
        [10, 20, 5, 60, 0, 0, 15, 1],
        [2, 2, 2, 2, 2, 2, 2, 2],
    ],
    dtype=np.float64,
)
#: Patients P1-P4 claim S4, S1, S0, S3 (not in file order); P5 has no RNA.
BULK_SHEET = {
    "P1": {"rna_sample": "S4"},
    "P2": {"rna_sample": "S1"},
    "P3": {"rna_sample": "S0"},
    "P4": {"rna_sample": "S3"},
    "P5": {"rna_sample": ""},
}


def write_bulk_h5ad(path: Path, counts: np.ndarray, kind: str, dtype=np.float32) -> Path:
    """``counts`` (samples x genes) as an anndata-written bulk .h5ad: X dense, CSR or CSC, of ``dtype``."""
    values = counts.astype(dtype)
    matrix = {"dense": values, "csr": sp.csr_matrix(values), "csc": sp.csc_matrix(values)}[kind]
    var = pd.DataFrame({"gene_name": BULK_SYMBOLS}, index=BULK_IDS)
    ad.AnnData(X=matrix, obs=pd.DataFrame(index=[f"S{i}" for i in range(len(counts))]), var=var).write_h5ad(path)
    return path


def assert_same_modality(a: ad.AnnData, b: ad.AnnData) -> None:
    """Two expression modalities equal bit for bit: matrices, layers, obs, var and ingest notes."""
    np.testing.assert_array_equal(a.X, b.X, strict=True)
    assert a.layers.keys() == b.layers.keys()
    for key in a.layers:
        np.testing.assert_array_equal(a.layers[key], b.layers[key], strict=True)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert a.uns["ingest"] == b.uns["ingest"]


@pytest.mark.parametrize("fraction", [False, True])  # True: float64 X with a value float32 rounds (staged as float64)
@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_bulk_h5ad_read_in_blocks_equals_the_frame_path(tmp_path, kind, fraction):
    counts = BULK_COUNTS.copy()
    if fraction:
        counts[1, 2] += 0.1  # S1's second TP53 row: 5.1, whose float32 is not 5.1 (the sum is made in float64)
    path = write_bulk_h5ad(tmp_path / "bulk.h5ad", counts, kind, np.float64 if fraction else np.float32)
    samples = sheet(BULK_SHEET)
    frame_path = expression_matrix(read_h5ad_expression(path), samples, source=str(path), min_count=10, min_samples=2)
    for block_cells in (1, 5, None):  # a cell, a row or a gene per block; the default (all at once)
        blocked = bulk_h5ad_modality(path, samples, min_count=10, min_samples=2, block_cells=block_cells)
        assert_same_modality(frame_path, blocked)
    via_inputs = read_expression_inputs(samples, counts=path, min_count=10, min_samples=2)
    np.testing.assert_array_equal(via_inputs.X, blocked.X, strict=True)
    # what the file holds, so that two equally wrong paths cannot pass
    assert list(blocked.obs_names) == ["P1", "P2", "P3", "P4"]
    assert list(blocked.var_names) == ["ENSG00000000001", "ENSG00000000002", "ENSG00000000004", "ENSG00000000007"]
    assert list(blocked.var["gene_symbol"]) == ["TP53", "KRAS", "KRAS", "MYC"]
    expected = np.array([[16, 20, 60, 15], [206, 0, 40, 13], [106, 17, 30, 12], [6, 3, 50, 14]], dtype=np.float64)
    expected[1, 0] += 0.1 if fraction else 0.0
    np.testing.assert_array_equal(blocked.layers["counts"], expected.astype(np.float32))
    assert blocked.uns["ingest"]["exclusions"] == {
        "patients_without_rna": 1,
        "rna_samples_not_in_samples_sheet": 2,
        "genes_zero_in_all_samples": 1,
        "genes_with_missing_values": 0,
        "duplicate_gene_rows_summed": 2,
        "genes_below_min_expression": 1,
        "summary_rows_removed": 0,
        "rna_samples_matched_by_barcode_prefix": 0,
    }
    assert blocked.uns["ingest"]["params"]["integer_counts"] is not fraction


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_bad_cells_of_a_bulk_h5ad_are_named_as_the_frame_path_names_them(tmp_path, kind):
    counts = BULK_COUNTS.copy()
    counts[0, 1], counts[3, 4], counts[4, 6] = np.nan, -3, np.inf
    path = write_bulk_h5ad(tmp_path / "bad.h5ad", counts, kind)
    with pytest.raises(MultimodalError) as frame_error:
        read_h5ad_expression(path)
    with pytest.raises(MultimodalError) as err:
        bulk_h5ad_modality(path, sheet(BULK_SHEET), block_cells=5)
    assert str(err.value) == str(frame_error.value)
    assert str(err.value) == (
        f"{path}: X holds negative or non-finite values; raw counts expected (3 cells: "
        "obs 'S0', var 'ENSG00000000002.3': nan, obs 'S3', var 'ENSG00000000005.1': -3, "
        "obs 'S4', var 'ENSG00000000007.2': inf)"
    )
    counts = BULK_COUNTS.copy()
    counts[2, 0] = -1  # in S2, which no patient claims: the block path reads only the cohort's rows
    path = write_bulk_h5ad(tmp_path / "unclaimed.h5ad", counts, kind)
    with pytest.raises(MultimodalError, match=r"\(obs 'S2', var 'ENSG00000000001.1': -1\)$"):
        read_h5ad_expression(path)
    assert bulk_h5ad_modality(path, sheet(BULK_SHEET)).shape == (4, 5)
    twice = ad.read_h5ad(path)
    twice.obs_names = ["S0", "S1", "S2", "S3", "S4", "S1"]  # anndata writes it (with a warning)
    twice.write_h5ad(path)
    with pytest.raises(MultimodalError, match=r"obs name 'S1', an rna_sample of the samples sheet, names more than"):
        bulk_h5ad_modality(path, sheet(BULK_SHEET))
    not_h5ad = tmp_path / "text.h5ad"
    not_h5ad.write_text("gene\tS1\nA\t1\n")
    with pytest.raises(MultimodalError, match=r"text\.h5ad: cannot read as AnnData \(\.h5ad\): "):
        bulk_h5ad_modality(not_h5ad, sheet(BULK_SHEET))


def single_cell(tmp_path: Path) -> tuple[Path, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(3)
    n_cells, n_genes = 60, 8
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(rng.choice(["S1", "S2", "S3"], size=n_cells)),
            "cell_type": pd.Categorical(rng.choice(["T cell", "tumour"], size=n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    obs.loc["cell0", "sample"] = np.nan  # a cell not assigned to a sample: left out, counted
    var = pd.DataFrame(
        {"gene_symbol": [f"G{j}" for j in range(n_genes)]}, index=[f"ENSG{j:011d}.3" for j in range(n_genes)]
    )
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts)), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(counts)
    path = tmp_path / "sc.h5ad"
    adata.write_h5ad(path)
    return path, counts, obs


def test_single_cell_h5ad_summed_per_sample_and_per_cell_type(tmp_path):
    path, counts, obs = single_cell(tmp_path)
    frame = read_h5ad_expression(path)
    assert frame.attrs["cells_without_sample_or_cell_type"] == 1
    for sample in ("S1", "S2", "S3"):
        cells = (obs["sample"] == sample).to_numpy()
        np.testing.assert_array_equal(frame[sample].to_numpy(), counts[cells].sum(axis=0))
    assert frame.index[0] == "ENSG00000000000"  # version stripped
    by_type = read_h5ad_expression(path, cell_type_key="cell_type")
    cells = ((obs["sample"] == "S2") & (obs["cell_type"] == "tumour")).to_numpy()
    np.testing.assert_array_equal(
        by_type.loc[[f"tumour:ENSG{j:011d}" for j in range(8)], "S2"].to_numpy(), counts[cells].sum(axis=0)
    )
    assert by_type.shape == (16, 3)
    samples = sheet({"P1": {"rna_sample": "S1"}, "P2": {"rna_sample": "S3"}})
    adata = read_expression_inputs(samples, counts=path, cell_type_key="cell_type")
    assert adata.n_obs == 2 and adata.var.loc["T cell:ENSG00000000001", "gene_symbol"] == "G1"
    assert adata.uns["ingest"]["exclusions"]["cells_without_sample_or_cell_type"] == 1
    with pytest.raises(MultimodalError, match=r"sc\.h5ad: obs has no column 'celltype'"):
        read_h5ad_expression(path, cell_type_key="celltype")


def test_single_cell_h5ad_with_every_cell_assigned_is_summed_in_place(tmp_path):
    path, counts, obs = single_cell(tmp_path)
    labelled = ad.read_h5ad(path)[1:].copy()  # without cell0, the one cell lacking a sample
    labelled.write_h5ad(path)
    frame = read_h5ad_expression(path)
    assert frame.attrs["cells_without_sample_or_cell_type"] == 0 and frame.attrs["cells_aggregated"] == 59
    for sample in ("S1", "S2", "S3"):
        cells = (obs["sample"] == sample).to_numpy()
        np.testing.assert_array_equal(frame[sample].to_numpy(), counts[cells].sum(axis=0))


def test_10x_h5_read_by_scanpy_and_summed_over_cells(tmp_path):
    counts = np.array([[0, 3, 1], [2, 0, 0], [5, 1, 0], [0, 0, 4]], dtype=np.int32)  # 4 cells x 3 genes
    ids = ["ENSG00000141510.17", "ENSG00000133703", "ENSG00000146648"]
    names = ["TP53", "KRAS", "EGFR"]
    path = write_10x_h5(tmp_path / "s1.h5", counts, ids, names, [f"AAAC{i}-1" for i in range(4)])
    sums, symbols, n_cells = read_10x_h5_profile(path)
    assert n_cells == 4
    assert sums.to_dict() == {"ENSG00000141510": 7.0, "ENSG00000133703": 4.0, "ENSG00000146648": 5.0}
    assert symbols["ENSG00000133703"] == "KRAS"
    other = write_10x_h5(tmp_path / "s2.h5", counts[:2], ids, names, ["TTTG1-1", "TTTG2-1"])
    adata = read_expression_inputs(sheet({"P1": {"rna_file": str(path)}, "P2": {"rna_file": str(other)}}))
    np.testing.assert_array_equal(adata.layers["counts"], [[7, 4, 5], [2, 3, 1]])
    assert list(adata.var["gene_symbol"]) == names
    not_10x = tmp_path / "other.h5"
    with h5py.File(not_10x, "w") as handle:
        handle.create_dataset("x", data=[1, 2])
    with pytest.raises(MultimodalError, match=r"other\.h5: cannot read as a 10x Cell Ranger"):
        read_10x_h5_profile(not_10x)


def test_low_expression_filter_and_duplicates_after_version_stripping(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text(
        "gene\tS1\tS2\tS3\n"
        "ENSG00000000001.1\t100\t200\t0\n"
        "ENSG00000000001.2\t5\t5\t5\n"  # the same gene after stripping: summed
        "ENSG00000000002.1\t9\t0\t1\n"  # >= 10 in no sample: below the filter
        "ENSG00000000003.1\t10\t10\t0\n"  # >= 10 in two samples: kept
    )
    samples = sheet({"P1": {"rna_sample": "S1"}, "P2": {"rna_sample": "S2"}, "P3": {"rna_sample": "S3"}})
    adata = expression_matrix(read_counts_table(path), samples, min_count=10, min_samples=2)
    assert list(adata.var_names) == ["ENSG00000000001", "ENSG00000000003"]
    np.testing.assert_array_equal(adata.layers["counts"][:, 0], [105, 205, 5])
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["genes_below_min_expression"] == 1 and exclusions["duplicate_gene_rows_summed"] == 1


def test_cli_reads_per_patient_files_and_refuses_two_inputs(tmp_path):
    a = write_quant(tmp_path / "a.sf", [("ENST1", 1, 50), ("ENST2", 1, 7)])
    b = write_quant(tmp_path / "b.sf", [("ENST1", 1, 20), ("ENST2", 1, 70)])
    samples = tmp_path / "samples.tsv"
    samples.write_text(f"patient_id\trna_file\nP1\t{a}\nP2\t{b}\n")
    out = tmp_path / "expression.h5ad"
    argv = ["ingest", "expression", "-q", "--samples", str(samples), "--out", str(out), "--data-root", str(tmp_path)]
    assert main(argv) == 0
    adata = ad.read_h5ad(out)
    np.testing.assert_array_equal(adata.layers["counts"], [[50, 7], [20, 70]])
    table = tmp_path / "counts.tsv"
    table.write_text("gene\tP1\nA\t1\n")
    assert main([*argv, "--counts", str(table)]) != 0
