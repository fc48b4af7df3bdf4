"""Feature tables as modalities: numeric columns kept, text and diagnostics columns counted, bad cells named."""

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.table import feature_table

RADIOMICS_CSV = (
    "Image,Mask,Label,patient_id,diagnostics_Versions_PyRadiomics,general_info_VoxelNum,"
    "original_shape_VoxelVolume,original_firstorder_Mean,original_firstorder_Median\n"
    "a.nrrd,a_seg.nrrd,1,P1,v3.0.1,120,1500.5,33.1,30\n"
    "b.nrrd,b_seg.nrrd,1,P2,v3.0.1,80,900,,30\n"
    "c.nrrd,c_seg.nrrd,1,P3,v3.0.1,80,950,20,30\n"
    "d.nrrd,d_seg.nrrd,1,P9,v3.0.1,10,100,12,31\n"
)


def test_pyradiomics_style_export(tmp_path):
    path = tmp_path / "radiomics.csv"
    path.write_text(RADIOMICS_CSV)
    adata = feature_table(path, modality="imaging", patients=pd.Index(["P1", "P2", "P3", "P4"]))
    assert list(adata.obs_names) == ["P1", "P2", "P3"]
    assert list(adata.var_names) == ["original_shape_VoxelVolume", "original_firstorder_Mean"]
    np.testing.assert_allclose(adata.X[0], [1500.5, 33.1], rtol=1e-6)
    assert np.isnan(adata.X[1, 1])
    assert adata.uns["ingest"]["exclusions"] == {
        "patients_without_table_row": 1,
        "table_rows_not_in_samples_sheet": 1,
        "table_ids_matched_by_barcode_prefix": 0,
        "text_columns_dropped": 2,
        "all_missing_columns_dropped": 0,
        "diagnostics_columns_dropped": 2,  # diagnostics_* and pre-2.0 general_info_*
        "constant_columns_dropped": 2,  # Label, and a median equal for every patient of the cohort
        "missing_values": 1,
    }
    assert adata.uns["ingest"]["params"]["dropped_constant_columns"] == ["Label", "original_firstorder_Median"]


def test_a_text_cell_in_a_numeric_column_is_named(tmp_path):
    path = tmp_path / "cnv.tsv"
    path.write_text("patient_id\tMYC\tERBB2\nP1\t0.5\t1\nP2\t0.1\thigh\nP3\t0.2\t2\nP4\t0.3\t0\n")
    with pytest.raises(MultimodalError, match=r"cnv\.tsv: line 3: column 'ERBB2' value 'high' is not a number"):
        feature_table(path, modality="cnv", patients=pd.Index(["P1", "P2", "P3", "P4"]))


def test_all_missing_columns_are_named_so_and_a_table_of_strangers_stops(tmp_path):
    path = tmp_path / "cnv.tsv"
    path.write_text("patient_id\tMYC\tERBB2\tnotes\nP1\t0.5\t\tok\nP2\t0.1\tNA\tok\n")
    adata = feature_table(path, modality="cnv", patients=pd.Index(["P1", "P2"]))
    assert list(adata.var_names) == ["MYC"]
    exclusions = adata.uns["ingest"]["exclusions"]
    assert (exclusions["all_missing_columns_dropped"], exclusions["text_columns_dropped"]) == (1, 1)
    with pytest.raises(
        MultimodalError, match=r"cnv\.tsv: none of its 2 patient_id values .* \(table: 'P1'; sheet: 'XP1'\)"
    ):
        feature_table(path, modality="cnv", patients=pd.Index(["XP1", "XP2"]))


def test_table_rows_keyed_by_slide_barcodes_match_the_sheets_patients(tmp_path):
    path = tmp_path / "pathomics.tsv"
    path.write_text(
        "slide_id\tnuclei_density\ttil_fraction\n"
        "TCGA-05-4244-01Z-00-DX1\t0.5\t0.1\nTCGA-05-4249-01Z-00-DX1\t0.7\t0.3\nTCGA-99-0001-01Z-00-DX1\t0.2\t0.4\n"
    )
    patients = pd.Index(["TCGA-05-4244", "TCGA-05-4249", "TCGA-05-4250"])
    adata = feature_table(path, modality="pathology", patients=patients, id_column="slide_id")
    assert list(adata.obs_names) == ["TCGA-05-4244", "TCGA-05-4249"]
    np.testing.assert_allclose(adata.X[:, 0], [0.5, 0.7])
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["table_ids_matched_by_barcode_prefix"] == 2
    assert (exclusions["patients_without_table_row"], exclusions["table_rows_not_in_samples_sheet"]) == (1, 1)
