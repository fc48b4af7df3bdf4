"""The cohort store: one Zarr v3 store in the MuData layout per cohort (spec: docs/cohort-store.md).

- ``obs``: one row per patient (union over modalities): outcome (``time``, ``event``, ``response``),
  clinical covariates, ``site``;
- ``mod/<name>``: one AnnData per modality (``clinical``, ``variants``, ``expression``, ``imaging``);
- ``obsmap/<name>``: 1-based row into ``mod/<name>``, 0 = the patient lacks the modality;
- ``uns/provenance``: inputs with sha256, package versions, resolved config, command, exclusions.

Written atomically: built beside the final path, then renamed.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import warnings
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal import __version__, privacy
from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path, sha256sum

if TYPE_CHECKING:
    import anndata
    import mudata

    from multimodal.ingest.clinical import ClinicalSpec

log = logging.getLogger(__name__)

STORE_SPEC_VERSION = "0.3.0"
MODALITY_ORDER = ("clinical", "variants", "expression", "imaging")
TRACKED_PACKAGES = (
    "anndata",
    "mudata",
    "zarr",
    "scanpy",
    "numpy",
    "pandas",
    "scipy",
    "pysam",
    "nibabel",
    "torch",
    "lightning",
    "captum",
    "scikit-survival",
    "scikit-learn",
    "snakemake",
)


def configure_zarr_v3() -> None:
    """Make anndata/mudata write Zarr format 3 without per-array sharding warnings."""
    import anndata as ad
    import mudata as md

    ad.settings.zarr_write_format = 3
    ad.settings.auto_shard_zarr_v3 = False
    md.set_options(pull_on_update=False)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour shapes the results."""
    versions = {"python": platform.python_version(), "multimodal": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_chunks(paths: list[str | Path]) -> anndata.AnnData | None:
    """Concatenate per-chunk AnnData files of one modality; exclusion tallies are summed.

    Features absent from a chunk are zero there (a gene with no counted variant in those
    patients), which is right for counts; feature tables must have identical columns.
    """
    import anndata as ad

    parts = []
    for p in paths:
        try:
            parts.append(ad.read_h5ad(p))
        except (OSError, KeyError) as exc:
            raise MultimodalError(f"{p}: cannot read intermediate AnnData: {exc}") from exc
    if not parts:
        return None
    ingest = dict(parts[0].uns.get("ingest", {}))
    exclusions: Counter = Counter()
    n_in = 0
    for part in parts:
        exclusions.update({k: int(v) for k, v in part.uns.get("ingest", {}).get("exclusions", {}).items()})
        n_in += int(part.uns.get("ingest", {}).get("n_patients_in", part.n_obs))
    # the variant tables, taken before a single part's uns is cleared below
    tables = [p.uns["variant_table"] for p in parts if "variant_table" in p.uns]
    if len(parts) == 1:  # one file (expression, a cohort table): as concat would give it, without copying its matrices
        merged = parts[0]
        merged.uns = {}
    else:
        merged = ad.concat(parts, join="outer", fill_value=0, merge="first", uns_merge=None)
    if merged.obs_names.has_duplicates:
        raise MultimodalError(f"patient {merged.obs_names[merged.obs_names.duplicated()][0]} occurs in two chunks")
    merged.var = pd.concat([p.var for p in parts]).groupby(level=0).first().reindex(merged.var_names)
    if tables:  # the variant-level table of each chunk's patients (multimodal.ingest.variants)
        table = pd.concat(tables, ignore_index=True)
        # chunks write their string columns as categoricals; the store keeps plain string columns
        strings = {c: object for c in table if isinstance(table[c].dtype, pd.CategoricalDtype)}
        merged.uns["variant_table"] = table.astype(strings)
    ingest["exclusions"] = dict(exclusions)
    ingest["n_patients_in"] = n_in
    merged.uns["ingest"] = ingest
    return merged


def assemble_cohort(
    *,
    clinical: pd.DataFrame,
    clinical_modality: anndata.AnnData,
    modalities: dict[str, anndata.AnnData],
    samples: pd.DataFrame,
    clinical_path: str | Path = "clinical table",
    samples_path: str | Path = "samples sheet",
) -> mudata.MuData:
    """Join the clinical table and per-modality AnnData into one MuData keyed by patient.

    Every patient of the samples sheet must be in the clinical table; every modality row must be a
    patient of the samples sheet. The samples sheet defines the cohort: clinical rows of other patients
    (a pan-cancer outcome table beside one cancer's sheet) are left out, and counted by the caller.
    """
    import mudata as md

    configure_zarr_v3()
    in_clinical = set(clinical.index)
    lines = samples["sheet_line"] if "sheet_line" in samples else pd.Series(range(2, len(samples) + 2), samples.index)
    for pid, line in lines.items():
        if pid not in in_clinical:
            raise MultimodalError(
                f"{samples_path}: line {line}: patient {pid} is not in the clinical table {clinical_path}"
            )
    for name, adata in modalities.items():
        unknown = [p for p in adata.obs_names if p not in samples.index]
        if unknown:
            raise MultimodalError(f"{name}: patient {unknown[0]} is not in the samples sheet {samples_path}")

    clinical = clinical[clinical.index.isin(samples.index)]
    clinical_modality = clinical_modality[clinical_modality.obs_names.isin(samples.index)].copy()
    mods = {"clinical": clinical_modality}
    for name in MODALITY_ORDER[1:]:
        if name in modalities and modalities[name] is not None:
            mods[name] = modalities[name]
    for name, adata in modalities.items():
        if name not in mods and adata is not None:
            mods[name] = adata
    mdata = md.MuData(mods)
    mdata.uns["model_obs_features"] = {
        name: list(adata.uns["ingest"]["model_obs_features"])
        for name, adata in mods.items()
        if "model_obs_features" in adata.uns.get("ingest", {})
    }
    mdata.obs = clinical.reindex(mdata.obs_names).copy()
    for name, adata in mods.items():
        mdata.obs[f"has_{name}"] = np.isin(mdata.obs_names, adata.obs_names)
    return mdata


def cohort_exclusions(
    mdata: mudata.MuData, *, n_clinical_only: int = 0, has_response: bool = True
) -> dict[str, dict[str, int]]:
    """Every count of what was left out, per modality and for the cohort, by reason.

    ``has_response``: whether the clinical table has a response column (else none is counted missing).
    """
    out: dict[str, dict[str, int]] = {}
    for name, adata in mdata.mod.items():
        out[name] = {k: int(v) for k, v in adata.uns.get("ingest", {}).get("exclusions", {}).items()}
    obs = mdata.obs
    out["cohort"] = {
        "patients_in_clinical_not_in_samples_sheet": int(n_clinical_only),
        "patients_without_survival_outcome": int(
            len(obs) - outcome_counts(obs["time"], obs["event"])["n_with_outcome"]
        ),
    }
    if has_response:
        out["cohort"]["patients_without_response_outcome"] = int(obs["response"].isna().sum())
    for column in mdata.uns.get("tasks", {}):  # quality-of-life outcomes: missing values kept, counted
        if column in obs:
            out["cohort"][f"patients_without_{column}"] = int(obs[column].isna().sum())
    return out


def build_provenance(
    *,
    inputs: list[str | Path],
    config: dict | None,
    exclusions: dict[str, dict[str, int]],
    command: list[str] | None = None,
    shown=None,
) -> dict:
    """Input files with sha256, package versions, the resolved config, the command and exclusions; ``shown``
    rewrites each input path as recorded (the pseudonymisation of IDs in file names)."""
    from multimodal.verify import relative_command

    paths = list(dict.fromkeys(str(p) for p in inputs if p))
    files = pd.DataFrame({"path": [shown(p) if shown else p for p in paths], "sha256": [sha256sum(p) for p in paths]})
    return {
        "store_spec_version": STORE_SPEC_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": relative_command(command if command is not None else sys.argv),
        "versions": package_versions(),
        "inputs": files,
        "config_json": json.dumps(config or {}, sort_keys=True, default=str),
        "exclusions": exclusions,
    }


def write_cohort_store(mdata: mudata.MuData, path: str | Path, *, provenance: dict) -> Path:
    """Write ``mdata`` to ``path`` as a Zarr v3 MuData store, atomically."""
    configure_zarr_v3()
    settings = {name: adata.uns.get("ingest", {}).get("params") for name, adata in mdata.mod.items()}
    settings = {name: value for name, value in settings.items() if value is not None}
    provenance = dict(provenance, ingest_params_json=json.dumps(_plain(settings), sort_keys=True, default=str))
    mdata.uns["provenance"] = provenance
    for adata in mdata.mod.values():
        adata.uns.pop("ingest", None)  # folded into provenance (exclusions, ingest_params_json); modality uns lean
    path = Path(path)
    with atomic_path(path) as tmp:
        mdata.write_zarr(str(tmp))
    log.info("wrote cohort store %s (%d patients)", path, mdata.n_obs)
    return path


def sort_mappings(mapping: dict) -> dict:
    """Put the keys of ``mapping`` and of every dict nested in it in sorted order, in place; returns it.

    Zarr v3 lists a group's members in the order its concurrent reads complete, so a dict read back from a
    store (``uns``) comes in a different order from one process to the next; anything that iterates over
    it (the QoL tasks' target columns, the report's tables) must not inherit that: every reader of a store's
    ``uns`` goes through this.
    """
    items = sorted(mapping.items(), key=lambda item: str(item[0]))
    mapping.clear()
    for key, value in items:
        mapping[key] = sort_mappings(value) if isinstance(value, dict) else value
    return mapping


def read_cohort_store(path: str | Path) -> mudata.MuData:
    """Open a cohort store written by :func:`write_cohort_store`."""
    import mudata as md

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise MultimodalError(f"{path}: not a Zarr v3 cohort store (no zarr.json)")
    configure_zarr_v3()
    try:
        with warnings.catch_warnings():
            # Snakemake marks a directory output with a .snakemake_timestamp file, which zarr notes on every read
            warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
            mdata = md.read_zarr(str(path))
    except Exception as exc:  # zarr/anndata raise many types for a damaged store
        raise MultimodalError(f"{path}: cannot read cohort store: {type(exc).__name__}: {exc}") from exc
    sort_mappings(mdata.uns)
    for adata in mdata.mod.values():
        sort_mappings(adata.uns)
    version = str(mdata.uns.get("provenance", {}).get("store_spec_version", ""))
    if version.split(".")[0] != STORE_SPEC_VERSION.split(".")[0]:
        raise MultimodalError(
            f"{path}: cohort store spec version {version or 'missing'} is not readable by this multimodal "
            f"(reads {STORE_SPEC_VERSION.split('.')[0]}.x); rebuild the store with `multimodal assemble`"
        )
    return mdata


def survival_outcome(time, event) -> tuple[np.ndarray, np.ndarray]:
    """The one definition of a usable survival outcome: ``(has_outcome, is_event)`` per patient.

    A patient has a survival outcome when both its time and its event indicator are known (finite); an
    event counts only for such a patient (an event whose time is missing is neither trained on, nor
    evaluated, nor counted). Every count of events or of patients with an outcome (``multimodal inspect``,
    metrics.json, the report's tables and Kaplan-Meier curves) goes through :func:`outcome_counts`.
    """
    t = pd.to_numeric(pd.Series(np.asarray(time).ravel()), errors="coerce").to_numpy(float)
    e = pd.to_numeric(pd.Series(np.asarray(event).ravel()), errors="coerce").to_numpy(float)
    has = np.isfinite(t) & np.isfinite(e)
    return has, has & (np.nan_to_num(e) > 0)


def outcome_counts(time, event) -> dict[str, int]:
    """Patients with a usable survival outcome, their events and censored, by :func:`survival_outcome`."""
    has, is_event = survival_outcome(time, event)
    return {
        "n_with_outcome": int(has.sum()),
        "n_events": int(is_event.sum()),
        "n_censored": int(has.sum() - is_event.sum()),
    }


#: Provenance keys that describe the store's content and are the same on every rebuild; the rest
#: (``created``, ``command``, ``versions``, ``inputs`` paths, ``config_json`` with its paths) is not.
FINGERPRINT_PROVENANCE = ("store_spec_version", "exclusions")


def store_fingerprint(mdata: mudata.MuData) -> str:
    """A short hash naming one cohort store by its content only.

    Covers the patients, every modality's rows, features, matrices (``X``, layers, ``obsm``, ``varm``),
    ``obs``/``var`` column names and values, ``uns['model_obs_features']`` and the deterministic parts of
    the provenance (spec version, exclusion counts). It leaves out what differs between two identical
    builds: timestamps, command lines and paths, package versions, storage dtypes and chunking. So a
    rebuild from the same inputs anywhere has the same fingerprint, and a changed value changes it.

    The model records it at training; explain and report refuse a store that does not carry it, so a
    model is never explained or reported against another cohort's data, whatever the paths say.
    """
    import hashlib

    digest = hashlib.sha256()

    def text(label: str, value) -> None:
        digest.update(f"{label}\x1e{value}\x1f".encode())

    def frame(label: str, df: pd.DataFrame) -> None:
        text(f"{label}.index", json.dumps([str(v) for v in df.index]))
        for column in df.columns:
            values = df[column]
            text(f"{label}.column", str(column))
            if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
                _hash_array(digest, values.to_numpy(dtype=float, na_value=np.nan))
            else:
                cells = ["\x00NA" if pd.isna(v) else str(v) for v in values.astype(object)]
                text(f"{label}.values", json.dumps(cells))

    frame("obs", mdata.obs)
    for name in sorted(mdata.mod):
        adata = mdata.mod[name]
        text("modality", name)
        frame(f"{name}.obs", adata.obs)
        frame(f"{name}.var", adata.var)
        text(f"{name}.X", adata.shape)
        _hash_array(digest, adata.X)
        for kind, mapping in (("layers", adata.layers), ("obsm", adata.obsm), ("varm", adata.varm)):
            for key in sorted(mapping.keys()):
                text(f"{name}.{kind}", key)
                value = mapping[key]
                if isinstance(value, pd.DataFrame):
                    frame(f"{name}.{kind}.{key}", value)
                else:
                    _hash_array(digest, value)
    text("model_obs_features", json.dumps(_plain(mdata.uns.get("model_obs_features", {})), sort_keys=True))
    provenance = mdata.uns.get("provenance", {})
    for key in FINGERPRINT_PROVENANCE:
        text(f"provenance.{key}", json.dumps(_plain(provenance.get(key)), sort_keys=True, default=str))
    return digest.hexdigest()[:16]


def _hash_array(digest, values, *, block_cells: int = 4_000_000) -> None:
    """Feed a 1-D or 2-D array (dense or sparse) to ``digest`` by value: as float64 in row blocks, NaN and
    -0.0 canonical, so neither the storage dtype nor the sparse/dense form changes the hash."""
    if values is None:
        digest.update(b"none")
        return
    shape = tuple(int(s) for s in values.shape)
    digest.update(repr(shape).encode())
    if len(shape) == 0 or 0 in shape:
        return
    width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, block_cells // max(width, 1))
    for start in range(0, shape[0], step):
        block = values[start : start + step]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        try:
            block = block.astype(np.float64)
        except (TypeError, ValueError):  # text in an array: hashed as its strings
            digest.update(json.dumps([str(v) for v in np.ravel(block)]).encode())
            continue
        block = np.where(np.isnan(block), np.nan, block) + 0.0
        digest.update(np.ascontiguousarray(block).tobytes())


def _plain(value):
    """Nested dicts/lists of numpy scalars and arrays as plain Python (ints as int), for a stable JSON."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def summarize_store(mdata: mudata.MuData, *, path: str | Path = "") -> str:
    """A human-readable summary: patients, modalities, coverage, outcomes, exclusions, provenance."""
    obs = mdata.obs
    lines = [f"cohort store {path}".rstrip(), f"patients: {mdata.n_obs}"]
    if "site" in obs:
        lines.append("sites: " + ", ".join(f"{k} {v}" for k, v in obs["site"].value_counts().sort_index().items()))
    with_outcome, _ = survival_outcome(obs["time"], obs["event"])
    counts = outcome_counts(obs["time"], obs["event"])
    try:
        config = json.loads(str(mdata.uns.get("provenance", {}).get("config_json") or "{}")) or {}
    except json.JSONDecodeError:
        config = {}
    unit = str((config.get("clinical_columns") or {}).get("time_unit") or "")
    median = float(pd.to_numeric(obs["time"], errors="coerce")[with_outcome].median()) if with_outcome.any() else np.nan
    lines.append(
        f"survival: {counts['n_events']} events / {counts['n_with_outcome']} patients with outcome, median observed "
        f"time {f'{median:.1f}' if np.isfinite(median) else 'n/a'}{' ' + unit if unit else ''}"
    )
    if obs["response"].notna().any():
        lines.append(f"response: {int(obs['response'].sum())} responders / {int(obs['response'].notna().sum())}")
    lines.append("modalities:")
    for name, adata in mdata.mod.items():
        lines.append(f"  {name:<11} {adata.n_obs:>6} patients x {adata.n_vars:>6} features")
    prov = mdata.uns.get("provenance", {})
    exclusions = prov.get("exclusions", {})
    if exclusions:
        lines.append("exclusions:")
        # sorted: a dict read back from Zarr comes in the directory listing's order, which differs between copies
        for group, counts in sorted(exclusions.items()):
            for reason, n in sorted(counts.items()):
                if int(n):
                    lines.append(f"  {group}: {reason} = {int(n)}")
    if prov:
        lines.append(
            f"created {prov.get('created', '?')} by multimodal {prov.get('versions', {}).get('multimodal', '?')}"
            f", {len(prov.get('inputs', []))} input files fingerprinted"
        )
    return "\n".join(lines)


def build_cohort_store(
    out: str | Path,
    *,
    clinical_path: str | Path,
    samples_path: str | Path,
    modality_chunks: dict[str, list[str | Path]],
    clinical_spec: ClinicalSpec | None = None,
    cohort_files: list[str | Path] | None = None,
    config: dict | None = None,
    data_roots: list[str | Path] | None = None,
) -> Path:
    """Read the clinical table, samples sheet and per-modality chunk files; write the cohort store.

    Every input file (clinical table, samples sheet, the cohort-level ``cohort_files`` such as the
    counts table or a MAF, each VCF and image/mask the sheet names) is fingerprinted into the provenance.
    """
    from multimodal.ingest.clinical import ClinicalSpec, clinical_features, read_clinical
    from multimodal.ingest.samples import read_samples

    clinical_spec = clinical_spec or ClinicalSpec()
    samples = read_samples(samples_path, data_roots=data_roots)
    clinical = read_clinical(clinical_path, spec=clinical_spec)
    in_sheet = clinical.index.isin(samples.index)  # the sheet defines the cohort; other rows are counted
    n_clinical_only = int((~in_sheet).sum())
    clinical = clinical[clinical.index.isin(samples.index)]
    pseudonymiser = privacy.from_config(config)
    if pseudonymiser is not None:  # the chunks carry pseudonyms already (ingest); so must the sheet and table
        original_ids = list(samples.index)
        scrub = pseudonymiser.scrubber(original_ids)
        samples = samples.rename(index=scrub)  # its cells (file paths) are read below; obs text is scrubbed later
        clinical = clinical.rename(index=scrub)
    modalities = {name: read_chunks(paths) for name, paths in modality_chunks.items() if paths}
    mdata = assemble_cohort(
        clinical=clinical,
        clinical_modality=clinical_features(clinical, spec=clinical_spec),
        modalities={k: v for k, v in modalities.items() if v is not None},
        samples=samples,
        clinical_path=clinical_path,
        samples_path=samples_path,
    )
    if clinical_spec.qol_columns:  # which obs columns are quality-of-life tasks, and of which kind
        mdata.uns["tasks"] = {column: kind for column, kind in clinical_spec.qol_columns}
    inputs: list[str | Path] = [clinical_path, samples_path, *(cohort_files or [])]
    for column in ("vcf", "image", "mask", "rna_file"):
        inputs.extend(p for p in samples.get(column, ()) if p)
    if pseudonymiser is not None:
        for adata in [mdata, *mdata.mod.values()]:
            privacy.pseudonymise_anndata(adata, pseudonymiser, original_ids)
        privacy.write_mapping(pseudonymiser, original_ids)
    provenance = build_provenance(
        inputs=inputs,
        config=config,
        shown=scrub if pseudonymiser is not None else None,  # per-patient input file names carry the IDs
        exclusions=cohort_exclusions(
            mdata, n_clinical_only=n_clinical_only, has_response=clinical_spec.response_column is not None
        ),
    )
    return write_cohort_store(mdata, out, provenance=provenance)
