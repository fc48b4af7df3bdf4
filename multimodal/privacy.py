"""Keyed pseudonymisation of patient IDs at ingestion (config ``privacy``, off by default).

With ``privacy.pseudonymise: true`` every patient ID is replaced, as each ingest stage and the assemble
stage write their outputs, by ``ps`` + the first 20 hex digits of HMAC-SHA256(key, ID): the same ID gives
the same pseudonym in every stage and every run with the same key, and without the key a pseudonym cannot
be traced back (nor recomputed from a guessed ID). The key comes from ``privacy.key_file`` (its bytes,
surrounding whitespace stripped) or the environment variable named by ``privacy.key_env``; it is never
written anywhere, and the config records only where it came from. Text in the outputs that carries an ID
(sample barcodes such as ``P0001-01A``, input file names in the provenance) has the ID replaced where it
stands as a token (not inside a longer run of letters and digits). The table from original ID to
pseudonym is written only to ``privacy.mapping_out`` when set (a TSV, ``patient_id`` and ``pseudonym``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from multimodal.errors import MultimodalError

PREFIX = "ps"
DIGITS = 20


@dataclass
class Pseudonymiser:
    """HMAC-SHA256 pseudonyms of patient IDs under one key."""

    key: bytes = field(repr=False)
    mapping_out: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise MultimodalError("privacy: the pseudonymisation key must be at least 16 bytes")

    def pseudonym(self, patient_id: str) -> str:
        """The pseudonym of one ID."""
        digest = hmac.new(self.key, str(patient_id).encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{PREFIX}{digest[:DIGITS]}"

    def mapping(self, ids: Iterable[str]) -> dict[str, str]:
        """Original ID -> pseudonym for ``ids``."""
        return {str(i): self.pseudonym(str(i)) for i in dict.fromkeys(ids)}

    def scrubber(self, ids: Iterable[str]):
        """A function replacing every ID of ``ids`` standing as a token in a text by its pseudonym."""
        mapping = self.mapping(ids)
        if not mapping:
            return lambda text: text
        names = sorted(mapping, key=len, reverse=True)
        pattern = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9])")
        return lambda text: pattern.sub(lambda m: mapping[m.group(1)], text) if isinstance(text, str) else text


def from_config(config: dict | None) -> Pseudonymiser | None:
    """The pseudonymiser the config's ``privacy`` section asks for, or None when it is off."""
    section = (config or {}).get("privacy") or {}
    if not section.get("pseudonymise"):
        return None
    key = None
    key_file, key_env = section.get("key_file"), section.get("key_env")
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise MultimodalError(f"privacy.key_file {key_file}: cannot read the key ({exc.strerror})") from None
    elif key_env:
        value = os.environ.get(key_env)
        if not value:
            raise MultimodalError(f"privacy.key_env: the environment variable {key_env} is not set or empty")
        key = value.strip().encode("utf-8")
    else:
        raise MultimodalError("privacy.pseudonymise is on but neither privacy.key_file nor privacy.key_env is set")
    return Pseudonymiser(key=key, mapping_out=section.get("mapping_out"))


def pseudonymise_anndata(adata, pseudonymiser: Pseudonymiser, ids: Iterable[str] | None = None):
    """``adata`` with its obs names and every ID in its obs text columns replaced by pseudonyms (in place)."""
    import pandas as pd

    ids = list(adata.obs_names if ids is None else ids)
    scrub = pseudonymiser.scrubber(ids)
    names = [scrub(str(i)) for i in adata.obs_names]
    if names != [str(i) for i in adata.obs_names]:  # (a MuData assembled from pseudonymised parts has them)
        adata.obs_names = pd.Index(names, name=adata.obs_names.name)
    _scrub_frame(adata.obs, scrub)
    for key in list(adata.uns.keys()):  # e.g. the variant table's patient_id column
        adata.uns[key] = _scrub_value(adata.uns[key], scrub)
    return adata


def _scrub_frame(frame, scrub) -> None:
    """Every text column of a DataFrame, in place."""
    import pandas as pd

    for column in frame.columns:
        values = frame[column]
        if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype | pd.StringDtype):
            scrubbed = values.astype(object).map(scrub)
            frame[column] = scrubbed.astype(values.dtype) if isinstance(values.dtype, pd.StringDtype) else scrubbed


def _scrub_value(value, scrub):
    """``value`` (a uns entry: mapping, table, list, array or text) with the IDs in its text replaced."""
    import numpy as np
    import pandas as pd

    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, pd.DataFrame):
        value = value.copy()
        _scrub_frame(value, scrub)
        if value.index.dtype == object:
            value.index = pd.Index([scrub(str(i)) for i in value.index], name=value.index.name)
        return value
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v, scrub) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return np.array([_scrub_value(v, scrub) for v in value.ravel().tolist()], dtype=object).reshape(value.shape)
    return value


def pseudonymise_h5ad(path: str | Path, pseudonymiser: Pseudonymiser, ids: Iterable[str]) -> None:
    """Rewrite an ingest stage's .h5ad with pseudonymised patients (atomically)."""
    import anndata as ad

    from multimodal.fileio import atomic_path

    adata = ad.read_h5ad(path)
    pseudonymise_anndata(adata, pseudonymiser, ids)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def write_mapping(pseudonymiser: Pseudonymiser, ids: Iterable[str]) -> Path | None:
    """The ID -> pseudonym table, only where ``privacy.mapping_out`` says (TSV); None when it is not set."""
    if not pseudonymiser.mapping_out:
        return None
    from multimodal.fileio import atomic_path

    target = Path(pseudonymiser.mapping_out)
    rows = ["patient_id\tpseudonym", *(f"{i}\t{p}" for i, p in sorted(pseudonymiser.mapping(ids).items()))]
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return target
