"""Expression ingest: CPM + log1p via scanpy, raw counts kept, bad cells named, exclusions counted."""

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.expression import expression_matrix, read_counts_table


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
        "duplicate_gene_rows_summed": 0,
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
