"""Ingest stages: read raw inputs of each modality into per-modality AnnData matrices."""
