"""One patient's explanation, read back from the files ``explain`` wrote (the report reads the same ones):
``modality_contributions.tsv`` (risk, percentile, risk group, response probability, per-modality
contributions) and ``attributions.zarr`` (per-feature attributions and the patient's values)."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _normalised(patient_id: str) -> str:
    """Case and leading zeros of numbers ignored: how a near match is recognised."""
    return re.sub(r"(?<!\d)0+(?=\d)", "", patient_id.lower())


def check_sources(explain_dir: str | Path, *, model_dir: str | Path | None = None, store=None) -> None:
    """Raise when the attributions in ``explain_dir`` came from another model run than ``model_dir`` or another
    cohort store than ``store`` (a MuData), by the fingerprints ``explain`` recorded."""
    import anndata as ad
    import zarr

    from multimodal.explain import model_fingerprint
    from multimodal.store import sort_mappings

    path = Path(explain_dir) / "attributions.zarr"
    try:
        uns = sort_mappings(ad.io.read_elem(zarr.open_group(str(path / "uns" / "attribution"), mode="r")))
    except Exception as exc:  # zarr raises several types for a missing or damaged group
        raise MultimodalError(f"{path}: no uns/attribution ({type(exc).__name__}); run `multimodal explain`") from exc
    if model_dir is not None and uns.get("model_fingerprint") != model_fingerprint(model_dir):
        raise MultimodalError(f"{path}: the attributions were computed from another model run than {model_dir}")
    if store is not None:
        from multimodal.store import store_fingerprint

        if uns.get("store_fingerprint") != store_fingerprint(store):
            raise MultimodalError(f"{path}: the attributions were computed from another cohort store")


def patient_explanation(explain_dir: str | Path, patient_id: str, *, top_n: int = 10) -> dict:
    """Risk, its cohort percentile and tertile group, response probability, modality contributions and the
    ``top_n`` largest attributions (by absolute value, over all modalities) with the patient's values."""
    import anndata as ad

    explain_dir = Path(explain_dir)
    table = explain_dir / "modality_contributions.tsv"
    store = explain_dir / "attributions.zarr"
    for path in (table, store):
        if not path.exists():
            raise MultimodalError(f"{path}: not found; run `multimodal explain` first")
    contributions = pd.read_csv(table, sep="\t", dtype={"patient_id": str}, keep_default_na=True)
    if "patient_id" not in contributions:
        raise MultimodalError(f"{table}: no patient_id column")
    contributions = contributions.set_index("patient_id")
    if patient_id not in contributions.index:
        ids = [str(p) for p in contributions.index]
        key = _normalised(patient_id)
        near = [p for p in ids if _normalised(p) == key][:5]  # P2 for P0002, p0002 for P0002
        near += [p for p in difflib.get_close_matches(patient_id, ids, n=5, cutoff=0.5) if p not in near]
        near = near[:5]
        near += [p for p in ids if patient_id.lower() in p.lower() and p not in near][: 5 - len(near)]
        hint = f"; near matches: {', '.join(near)}" if near else f"; {len(ids)} patients, e.g. {', '.join(ids[:3])}"
        raise MultimodalError(f"{table}: unknown patient '{patient_id}'{hint}")
    row = contributions.loc[patient_id]
    modalities = sorted(p.name for p in (store / "mod").iterdir() if (p / "zarr.json").is_file())
    order = [c for c in contributions.columns if c in modalities] or modalities
    rows, modality_rows = [], []
    for name in order:
        modality_rows.append(
            {
                "modality": name,
                "has_modality": bool(pd.notna(row.get(name))),
                "attribution_sum": _number(row.get(name)),
                "group_contribution": _number(row.get(f"group_{name}")),
            }
        )
        adata = ad.read_zarr(str(store / "mod" / name))
        if patient_id not in adata.obs_names:
            continue
        i = adata.obs_names.get_loc(patient_id)
        attributions = np.asarray(adata.X[i], dtype=float).ravel()
        values = (
            np.asarray(adata.layers["value"][i], dtype=float).ravel()
            if "value" in adata.layers
            else np.full(len(attributions), np.nan)
        )
        var = adata.var
        for j, feature in enumerate(adata.var_names):
            rows.append(
                {
                    "modality": name,
                    "feature": str(feature),
                    "attribution": float(attributions[j]),
                    "value": _number(values[j]),
                    "direction_sign": str(var["direction_sign"].iloc[j]) if "direction_sign" in var else "",
                }
            )
    rows.sort(key=lambda r: -abs(r["attribution"]))
    top = [r for r in rows if r["attribution"] != 0][:top_n]
    return {
        "patient_id": patient_id,
        "fold": _number(row.get("fold")),
        "risk": _number(row.get("risk")),
        "risk_percentile": _number(row.get("risk_percentile")),
        "risk_group": "" if pd.isna(row.get("risk_group")) else str(row.get("risk_group", "")),
        "risk_group_rule": "tertiles of the held-out risk over the cohort",
        "response_prob": _number(row.get("response_prob")),
        "convergence_delta": _number(row.get("convergence_delta")),
        "modalities": modality_rows,
        "top_attributions": top,
        "explain_dir": str(explain_dir),
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_patient(summary: dict) -> str:
    """The explanation as terminal text: risk line, modality contributions, then the top attributions."""
    lines = [
        f"patient {summary['patient_id']}: predicted log relative hazard {_fmt(summary['risk'])} "
        f"(cohort percentile {_fmt(summary['risk_percentile'], '.0f')}, "
        f"{summary['risk_group'] or 'no'} risk group by tertiles)",
    ]
    if summary["response_prob"] is not None:
        lines.append(f"response probability {_fmt(summary['response_prob'], '.2f')}")
    lines.append("")
    lines.append(f"{'modality':<14} {'attribution':>12} {'group':>10}")
    for entry in summary["modalities"]:
        if entry["has_modality"]:
            lines.append(
                f"{entry['modality']:<14} {_fmt(entry['attribution_sum'], '+.3f'):>12} "
                f"{_fmt(entry['group_contribution'], '+.3f'):>10}"
            )
        else:
            lines.append(f"{entry['modality']:<14} {'absent':>12} {'':>10}")
    lines.append("")
    lines.append(f"top {len(summary['top_attributions'])} attributions (+ raises risk, - lowers it)")
    lines.append(f"{'modality':<14} {'feature':<28} {'attribution':>12} {'value':>12}")
    for r in summary["top_attributions"]:
        value = _fmt(r["value"], ".4g")
        lines.append(f"{r['modality']:<14} {r['feature'][:28]:<28} {r['attribution']:>+12.3f} {value:>12}")
    return "\n".join(lines)
