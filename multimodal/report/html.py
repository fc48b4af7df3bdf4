"""One self-contained, offline HTML report of a cohort run: cohort, exclusions, metrics, risk groups, attributions.

Python computes the numbers and draws the figures; Jinja2 templates (``templates/``: ``report.html`` the
page, ``blocks.html`` one macro per kind of block, ``patient_view.js`` the per-patient view) lay them out,
autoescaped. The file has inline CSS, plots as base64 PNG or inline SVG, one inline script (the per-patient
view, drawn from JSON embedded beside it) and no external URL; it is written atomically. It reads:

- the cohort store (``obs``, modality shapes and ``uns["provenance"]``);
- the model directory (``metrics.json``, ``predictions.tsv``, ``params.json``, ``fold_<k>/baseline_hazard.tsv``);
- the explain directory (``feature_importance.tsv``, ``modality_contributions.tsv``, ``attributions.zarr``
  and, when present, ``modality_value.tsv`` and ``trust.json``; absent ones are said, not failed on);
- ``<outdir>/logs/run.log`` (``multimodal run``'s transcript) for every stage's command, when present.

Sections: cohort summary and missingness pattern, exclusions (every recorded count, zeros included),
cross-validated metrics with bootstrap CIs beside the references (and ``tasks``/``search`` of metrics.json when
present), Kaplan-Meier curves of out-of-fold risk groups (high risk = risk above the median of the patient's
own fold's held-out patients) with numbers at risk, log-rank p and hazard ratio, calibration at a horizon,
top features per modality with their direction, beeswarm direction plots, added value per modality and the
trust checks, modality contributions with the attribution method and its convergence, a per-patient view,
and provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal import __version__
from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path
from multimodal.store import outcome_counts, survival_outcome

log = logging.getLogger(__name__)

MODALITY_ORDER = ("clinical", "variants", "expression", "imaging")
SECTIONS = (
    ("cohort", "Cohort"),
    ("exclusions", "Exclusions"),
    ("metrics", "Cross-validated metrics"),
    ("risk-groups", "Risk groups"),
    ("benefit", "Who benefits"),  # only for a run with model.treatment
    ("features", "Top features"),
    ("direction", "Direction of effect"),
    ("value", "Added value per modality"),
    ("contributions", "Modality contributions"),
    ("patient", "Per patient"),
    ("provenance", "Provenance"),
)
HIGH, LOW = "high risk", "low risk"
GROUP_COLOURS = {HIGH: "#c0392b", LOW: "#2e6fa8"}
BAR_COLOUR = "#5b7a99"
KEY_PACKAGES = (
    "multimodal",
    "python",
    "torch",
    "lightning",
    "captum",
    "anndata",
    "mudata",
    "zarr",
    "scikit-survival",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
)
MAX_INPUT_ROWS = 500
_MISSING_TOKENS = {"", "na", "nan", "n/a", "null", "none"}


@dataclass(frozen=True)
class Code:
    """A table or list value shown as code (``<code>``) by the templates."""

    text: str

    def __str__(self) -> str:
        return self.text


Block = dict[str, Any]
"""One piece of a section for the templates (``templates/blocks.html``): ``{"kind": ..., ...}``."""


def _p(text: str, *, cls: str | None = None, block_id: str | None = None, strong: str | None = None) -> Block:
    """A paragraph (``cls`` "note" or "warnings"), optionally led by a bold ``strong`` phrase."""
    return {"kind": "p", "text": text, "cls": cls, "id": block_id, "strong": strong}


def _h3(text: str, *, block_id: str | None = None) -> Block:
    return {"kind": "h3", "text": text, "id": block_id}


def _details(summary: str, blocks: list[Block]) -> Block:
    return {"kind": "details", "summary": summary, "blocks": [b for b in blocks if b]}


def _grid(blocks: list[Block]) -> Block:
    return {"kind": "grid", "blocks": [b for b in blocks if b]}


def _list(items: Sequence[str], *, title: str, block_id: str, note: str = "") -> Block:
    return {"kind": "list", "items": [str(i) for i in items], "title": title, "id": block_id, "note": note}


def _pre(text: str) -> Block:
    return {"kind": "pre", "text": text}


def _num(value: Any, spec: str = ".3f") -> str:
    """Format a number; ``n/a`` for None, NaN, infinities and anything not numeric."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return format(v, spec) if math.isfinite(v) else "n/a"


def _count(value: Any) -> str:
    """Format a count as an integer; ``n/a`` when missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return str(int(v)) if math.isfinite(v) else "n/a"


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def _pvalue(p: float | None) -> str:
    """A p-value to three significant digits (``n/a`` when not computed)."""
    return _num(p, ".3g")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", str(name).lower()).strip("-") or "x"


# --------------------------------------------------------------------------------------------------
# HTML building blocks


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Sequence[bool] | None = None,
    table_id: str | None = None,
    caption: str | None = None,
    row_classes: Sequence[str | None] | None = None,
) -> Block:
    """A table for the templates; cells are text (escaped there) or :class:`Code`."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    rows = [list(r) for r in rows]
    row_classes = list(row_classes) if row_classes is not None else [None] * len(rows)
    if len(numeric) != len(headers) or len(row_classes) != len(rows) or any(len(r) != len(headers) for r in rows):
        raise ValueError(f"table {table_id}: rows, headers and flags disagree in length")
    return {
        "kind": "table",
        "id": table_id,
        "caption": caption,
        "headers": list(zip(headers, numeric, strict=True)),
        "rows": [(cls, list(zip(row, numeric, strict=True))) for row, cls in zip(rows, row_classes, strict=True)],
    }


def _kv(pairs: Iterable[tuple[str, Any]], *, dl_id: str | None = None) -> Block:
    """A definition list of label/value pairs (values text or :class:`Code`)."""
    return {"kind": "kv", "id": dl_id, "pairs": list(pairs)}


def _figure(fig: Any, *, alt: str, caption: str, figure_id: str | None = None) -> Block:
    """A matplotlib figure as an inline base64 PNG inside ``<figure>``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"kind": "figure", "uri": f"data:image/png;base64,{data}", "alt": alt, "caption": caption, "id": figure_id}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# --------------------------------------------------------------------------------------------------
# Reading inputs


@dataclass
class _Inputs:
    store: Path
    model_dir: Path
    explain_dir: Path
    obs: pd.DataFrame
    mod_shapes: dict[str, tuple[int, int]]
    provenance: dict
    metrics: dict
    params: dict
    predictions: pd.DataFrame
    importance: pd.DataFrame
    contributions: pd.DataFrame
    attribution: dict
    store_fingerprint: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def time_unit(self) -> str:
        """The survival-time unit from the run's configuration (``clinical_columns.time_unit``), or ""."""
        try:
            config = json.loads(self.provenance.get("config_json") or "{}")
        except (TypeError, json.JSONDecodeError):
            return ""
        return str(((config or {}).get("clinical_columns") or {}).get("time_unit") or "")

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise MultimodalError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MultimodalError(f"{path}: cannot read as JSON: {exc}") from exc


def _read_tsv(
    path: Path, *, required: Sequence[str], numeric: Sequence[str], index_col: str | None = None
) -> pd.DataFrame:
    """Read a tab-separated table as text, check its columns and parse ``numeric`` columns strictly.

    Empty cells and NA/NaN tokens become NaN; any other non-numeric value in a numeric column is an
    error naming the line.
    """
    if not path.is_file():
        raise MultimodalError(f"{path}: missing")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MultimodalError(f"{path}: cannot read as a tab-separated table: {exc}") from exc
    absent = [c for c in [*required, *([index_col] if index_col else [])] if c not in table.columns]
    if absent:
        raise MultimodalError(f"{path}: missing column(s) {', '.join(absent)}")
    for col in numeric:
        if col not in table.columns:
            continue
        text = table[col].str.strip()
        missing = text.str.lower().isin(_MISSING_TOKENS)
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = values.isna() & ~missing
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MultimodalError(f"{path}: line {row + 2}: column {col}: not a number: {table[col].iloc[row]!r}")
        table[col] = values.astype(float)
    if index_col:
        table = table.set_index(index_col)
    return table


def _read_store(path: Path) -> tuple[pd.DataFrame, dict[str, tuple[int, int]], dict, str]:
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(path)
    obs = mdata.obs.copy()
    absent = [c for c in ("time", "event") if c not in obs.columns]
    if absent:
        raise MultimodalError(f"{path}: obs lacks column(s) {', '.join(absent)}")
    for name, adata in mdata.mod.items():
        if f"has_{name}" not in obs.columns:
            obs[f"has_{name}"] = np.isin(obs.index, adata.obs_names)
    shapes = {name: (int(adata.n_obs), int(adata.n_vars)) for name, adata in mdata.mod.items()}
    from multimodal.store import store_fingerprint

    provenance = mdata.uns.get("provenance", {})
    return obs, shapes, dict(provenance) if isinstance(provenance, dict) else {}, store_fingerprint(mdata)


def _read_attribution(path: Path) -> dict:
    """``uns["attribution"]`` of the attributions store, read without loading the attribution matrices."""
    from multimodal.store import configure_zarr_v3, sort_mappings

    if not (path / "zarr.json").is_file():
        raise MultimodalError(f"{path}: missing (no zarr.json)")
    configure_zarr_v3()
    try:
        import zarr
        from anndata.io import read_elem

        group = zarr.open_group(str(path), mode="r")
        uns = sort_mappings(read_elem(group["uns"])) if "uns" in group else {}
    except Exception as exc:  # zarr/anndata raise many types for a damaged store
        raise MultimodalError(f"{path}: cannot read attribution store: {type(exc).__name__}: {exc}") from exc
    record = uns.get("attribution") if isinstance(uns, dict) else None
    if not isinstance(record, dict):
        raise MultimodalError(f"{path}: no uns['attribution'] record")
    return record


def _load(store: Path, model_dir: Path, explain_dir: Path) -> _Inputs:
    for label, directory in (("model directory", model_dir), ("explain directory", explain_dir)):
        if not directory.is_dir():
            raise MultimodalError(f"{directory}: {label} not found")
    metrics_path = model_dir / "metrics.json"
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("folds"), list):
        raise MultimodalError(f"{metrics_path}: no 'folds' list of per-fold metrics")
    params_path = model_dir / "params.json"
    params = _read_json(params_path) if params_path.is_file() else {}
    predictions = _read_tsv(
        model_dir / "predictions.tsv",
        required=("patient_id", "fold", "risk", "time", "event"),
        numeric=("fold", "risk", "response_prob", "time", "event", "response"),
    )
    importance = _read_tsv(
        explain_dir / "feature_importance.tsv",
        required=("modality", "feature", "mean_abs_attribution", "mean_attribution", "rank"),
        numeric=("mean_abs_attribution", "mean_attribution", "rank", "n_patients"),
    )
    contributions_path = explain_dir / "modality_contributions.tsv"
    with_header = _read_tsv(contributions_path, required=(), numeric=(), index_col="patient_id")
    text_columns = {"risk_group"}
    contributions = _read_tsv(
        contributions_path,
        required=(),
        numeric=[c for c in with_header.columns if c not in text_columns],
        index_col="patient_id",
    )
    attribution = _read_attribution(explain_dir / "attributions.zarr")
    obs, shapes, provenance, fingerprint = _read_store(store)
    inputs = _Inputs(
        store=store,
        model_dir=model_dir,
        explain_dir=explain_dir,
        obs=obs,
        mod_shapes=shapes,
        provenance=provenance,
        metrics=metrics,
        params=params if isinstance(params, dict) else {},
        predictions=predictions,
        importance=importance,
        contributions=contributions,
        attribution=attribution,
        store_fingerprint=fingerprint,
    )
    if not params_path.is_file():
        inputs.warn(f"{params_path}: missing; model settings are not shown")
    _check_consistency(inputs)
    return inputs


def _check_consistency(inp: _Inputs) -> None:
    """Record (never hide) disagreements between the store, the model run and the attributions."""
    n_store = len(inp.obs)
    n_model = inp.metrics.get("n_patients")
    if n_model is not None and _count(n_model) != str(n_store):
        inp.warn(f"the model run covers {_count(n_model)} patients but the cohort store has {n_store}")
    unknown = ~inp.predictions["patient_id"].isin(inp.obs.index)
    if unknown.any():
        inp.warn(
            f"{int(unknown.sum())} patient(s) in {inp.model_dir / 'predictions.tsv'} are not in the cohort store, "
            f"e.g. {inp.predictions['patient_id'][unknown].iloc[0]}"
        )
    store_counts = outcome_counts(inp.obs["time"], inp.obs["event"])
    for key, recorded_key, what in (
        ("n_with_outcome", "n_patients_with_survival_outcome", "patients with a survival outcome"),
        ("n_events", "n_events", "events"),
    ):
        recorded = inp.metrics.get(recorded_key)
        if recorded is not None and _count(recorded) != str(store_counts[key]):
            inp.warn(f"metrics.json records {_count(recorded)} {what} but the cohort store has {store_counts[key]}")
    n_scored = int(np.isfinite(inp.predictions["risk"]).sum())
    recorded = inp.metrics.get("n_patients_scored")
    if recorded is not None and _count(recorded) != str(n_scored):
        inp.warn(f"metrics.json records {_count(recorded)} patients scored but predictions.tsv has {n_scored} risks")
    explained = set(inp.contributions.index)
    scored = set(inp.predictions.loc[np.isfinite(inp.predictions["risk"]), "patient_id"])
    if explained != scored:
        inp.warn(
            f"attributions cover {len(explained)} patients, predictions score {len(scored)}; "
            f"{len(scored - explained)} scored patient(s) have no attribution, "
            f"{len(explained - scored)} attributed patient(s) have no risk score"
        )
    # Which store and model each part came from, by fingerprint (paths move; contents do not lie).
    from multimodal.explain import model_fingerprint

    store_print = inp.store_fingerprint
    for what, recorded in (
        (f"{inp.model_dir}: the model was trained", inp.params.get("store_fingerprint")),
        (f"{inp.explain_dir}: the attributions were computed", inp.attribution.get("store_fingerprint")),
    ):
        if recorded and store_print and recorded != store_print:
            raise MultimodalError(
                f"{what} on another cohort store (fingerprint {recorded}, {inp.store}: {store_print})"
            )
    recorded_model = inp.attribution.get("model_fingerprint")
    if recorded_model and recorded_model != model_fingerprint(inp.model_dir):
        raise MultimodalError(
            f"{inp.explain_dir}: the attributions were computed from another model run than {inp.model_dir} "
            f"(recorded in {inp.attribution.get('model_dir', '?')}); rerun `multimodal explain` on this model"
        )


# --------------------------------------------------------------------------------------------------
# Sections


def _modalities(inp: _Inputs) -> list[str]:
    """Modalities in the store, in the canonical order, then any others by name."""
    names = [c.removeprefix("has_") for c in inp.obs.columns if c.startswith("has_")]
    return [m for m in MODALITY_ORDER if m in names] + sorted(m for m in names if m not in MODALITY_ORDER)


def _survival_arrays(time: pd.Series, event: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(usable mask, time, event as bool) of the rows with a survival outcome, as the store defines it
    (:func:`multimodal.store.survival_outcome`: an event counts only with a time)."""
    ok, is_event = survival_outcome(time, event)
    t = pd.to_numeric(time, errors="coerce").to_numpy(float)
    return ok, t[ok], is_event[ok]


def _km_median(t: np.ndarray, s: np.ndarray) -> float:
    """First time at which a Kaplan-Meier curve reaches 0.5 or below; NaN when it never does."""
    below = np.flatnonzero(s <= 0.5)
    return float(t[below[0]]) if below.size else float("nan")


def _median_follow_up(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan-Meier method (censoring is the event)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    if time.size == 0 or event.all():
        return float("nan")
    t, s = kaplan_meier_estimator(~event, time)
    return _km_median(np.asarray(t), np.asarray(s))


def _group_table(obs: pd.DataFrame, column: str, *, table_id: str, label: str) -> Block:
    values = obs[column].astype(object).where(obs[column].notna(), "(missing)").astype(str)
    ok, is_event = survival_outcome(obs["time"], obs["event"])
    response = pd.to_numeric(obs["response"], errors="coerce") if "response" in obs else None
    rows = []
    for level in sorted(values.unique()):
        sel = (values == level).to_numpy()
        row = [level, str(int(sel.sum())), _pct(sel.sum(), len(obs)), str(int((sel & ok).sum()))]
        row.append(str(int((sel & is_event).sum())))
        if response is not None:
            row.append(f"{int(np.nansum(response[sel]))} / {int(response[sel].notna().sum())}")
        rows.append(row)
    headers = [label, "patients", "% of cohort", "with survival outcome", "events"]
    if response is not None:
        headers.append("responders / with response")
    return _table(headers, rows, numeric=[False] + [True] * (len(headers) - 1), table_id=table_id)


def _cohort_section(inp: _Inputs) -> list[Block]:
    obs = inp.obs
    n = len(obs)
    ok, time, event = _survival_arrays(obs["time"], obs["event"])
    n_events = int(event.sum())
    parts = [
        _kv(
            [
                ("patients", str(n)),
                ("with survival outcome", f"{int(ok.sum())} ({_pct(ok.sum(), n)})"),
                ("events", str(n_events)),
                ("censored", str(int(ok.sum()) - n_events)),
                ("without survival outcome", str(n - int(ok.sum()))),
                ("median follow-up (reverse Kaplan-Meier)", _num(_median_follow_up(time, event), ".1f")),
                ("median observed time", _num(np.median(time) if time.size else float("nan"), ".1f")),
            ]
            + _response_pairs(obs),
            dl_id="cohort-outcomes",
        ),
        _p(
            f"Times are in {inp.time_unit}." if inp.time_unit else "Times are in the unit of the clinical table.",
            cls="note",
        ),
    ]
    rows = []
    for name in _modalities(inp):
        has = obs[f"has_{name}"].fillna(False).astype(bool)
        n_features = inp.mod_shapes.get(name, (0, float("nan")))[1]
        rows.append([name, str(int(has.sum())), _pct(has.sum(), n), _count(n_features)])
    parts.append(_h3("Patients per modality"))
    parts.append(
        _table(
            ["modality", "patients", "% of cohort", "features"],
            rows,
            numeric=[False, True, True, True],
            table_id="cohort-modalities",
        )
    )
    for column, label, table_id in (("site", "site", "cohort-sites"), ("arm", "arm", "cohort-arms")):
        if column in obs.columns:
            parts.append(_h3(f"Patients per {label}"))
            parts.append(_group_table(obs, column, table_id=table_id, label=label))
    parts += _missingness_blocks(inp)
    return parts


def _response_pairs(obs: pd.DataFrame) -> list[tuple[str, str]]:
    if "response" not in obs.columns:
        return [("responders", "n/a (no response column)")]
    response = pd.to_numeric(obs["response"], errors="coerce")
    known = response.notna()
    responders = int((response[known] > 0).sum())
    return [
        ("responders", f"{responders} of {int(known.sum())} with response ({_pct(responders, known.sum())})"),
        ("non-responders", str(int(known.sum()) - responders)),
        ("without response outcome", str(int((~known).sum()))),
    ]


def _exclusions_section(inp: _Inputs) -> list[Block]:
    exclusions = inp.provenance.get("exclusions")
    if not isinstance(exclusions, dict) or not exclusions:
        inp.warn(f"{inp.store}: provenance records no exclusions")
        return [_p("The cohort store records no exclusion counts.", cls="warnings")]
    order = ["cohort", *MODALITY_ORDER]
    groups = [g for g in order if g in exclusions] + sorted(g for g in exclusions if g not in order)
    rows, classes = [], []
    for group in groups:
        counts = exclusions[group]
        if not isinstance(counts, dict) or not counts:
            rows.append([group, "(none recorded)", "n/a"])
            classes.append("zero")
            continue
        for reason, value in sorted(counts.items()):
            text = _count(value)
            rows.append([group, Code(str(reason)), text])
            classes.append("zero" if text == "0" else None)
    return [
        _table(
            ["group", "reason", "count"],
            rows,
            numeric=[False, False, True],
            table_id="exclusions-table",
            caption="Every count recorded at ingest, zeros included. Counts name what they count "
            "(patients, records, samples or genes).",
            row_classes=classes,
        )
    ]


#: Below this many events in a held-out fold its C-index is flagged as unstable in the report.
FEW_EVENTS = 10


def _n_test(fold: dict) -> str:
    """Held-out patients, with those that have a survival outcome (the C-index's) when fewer."""
    n, with_outcome = fold.get("n_test"), fold.get("n_test_with_outcome")
    if with_outcome is None or _count(with_outcome) == _count(n):
        return _count(n)
    return f"{_count(n)} ({_count(with_outcome)} with outcome)"


def _metrics_section(inp: _Inputs) -> list[Block]:
    m = inp.metrics
    rows, classes = [], []
    for fold in m["folds"]:
        rows.append(
            [
                _count(fold.get("fold")),
                _count(fold.get("n_train")),
                _n_test(fold),
                _count(fold.get("n_events")),
                _num(fold.get("c_index")),
                _num(fold.get("auroc")),
            ]
        )
        classes.append(None)
    mean, sd = m.get("mean") or {}, m.get("sd") or {}
    rows.append(
        [
            "mean ± SD",
            "",
            "",
            "",
            f"{_num(mean.get('c_index'))} ± {_num(sd.get('c_index'))}",
            f"{_num(mean.get('auroc'))} ± {_num(sd.get('auroc'))}",
        ]
    )
    classes.append("summary")
    pooled = m.get("pooled_out_of_fold") or {}
    rows.append(
        [
            "pooled out-of-fold",
            "",
            _count(pooled.get("n_test")),
            _count(pooled.get("n_events")),
            _num(pooled.get("c_index")),
            _num(pooled.get("auroc")),
        ]
    )
    classes.append("summary")
    parts = [
        _table(
            ["fold", "n train", "n test", "n events", "C-index", "AUROC"],
            rows,
            numeric=[False, True, True, True, True, True],
            table_id="fold-metrics",
            caption="Harrell's C-index of the predicted risk (survival) and AUROC of the predicted response "
            "probability, on each fold's held-out patients; pooled = all out-of-fold predictions together.",
            row_classes=classes,
        ),
        _kv(
            [
                ("patients in cohort store", str(len(inp.obs))),
                ("patients in model run", _count(m.get("n_patients"))),
                ("patients scored out-of-fold", _count(m.get("n_patients_scored"))),
                ("scored patients with survival outcome", _count(m.get("n_patients_with_survival_outcome"))),
            ],
            dl_id="metrics-patients",
        ),
    ]
    few = [f for f in m["folds"] if isinstance(f.get("n_events"), int | float) and f["n_events"] < FEW_EVENTS]
    if few:
        listed = ", ".join(f"fold {_count(f.get('fold'))}: {_count(f.get('n_events'))}" for f in few)
        parts.append(
            _p(
                f"Few events behind a C-index ({listed}; fewer than {FEW_EVENTS}): such a fold's value can swing "
                "widely by chance. Read the pooled value and the spread, not one fold.",
                cls="warnings",
            )
        )
    notes = [str(n) for n in (m.get("notes") or [])]
    if notes:
        parts.append(
            _list(notes, title="Adapted to this cohort", note="(recorded in metrics.json)", block_id="model-notes")
        )
    parts += _baseline_block(m)
    parts += _evaluation_block(m)
    parts += _reference_ci_block(inp)
    parts += _tasks_blocks(m)
    parts += _search_blocks(m)
    parts.append(_feature_selection_table(m))
    parts.append(_params_block(inp))
    return [b for b in parts if b]


def _baseline_block(metrics: dict) -> list[Block]:
    """The penalised Cox reference fitted on the same folds and features, beside the fusion model."""
    cox = (metrics.get("baseline") or {}).get("penalised_cox")
    if not cox:
        return []
    if cox.get("skipped"):
        return [
            _p(
                f"The penalised Cox reference was not fitted: {cox['skipped']}.",
                cls="warnings",
                block_id="baseline-skipped",
            )
        ]
    skipped = cox.get("skipped_folds") or {}
    skipped_note = (
        _p(
            "The penalised Cox reference was skipped in "
            + "; ".join(f"fold {k} ({v})" for k, v in skipped.items())
            + "; its values are over the other folds.",
            cls="warnings",
            block_id="baseline-skipped",
        )
        if isinstance(skipped, dict) and skipped
        else None
    )
    mean, sd, pooled = metrics.get("mean") or {}, metrics.get("sd") or {}, metrics.get("pooled_out_of_fold") or {}
    rows = [
        ["fusion model", f"{_num(mean.get('c_index'))} ± {_num(sd.get('c_index'))}", _num(pooled.get("c_index"))],
        [
            "penalised Cox (reference)",
            f"{_num(cox.get('mean_c_index'))} ± {_num(cox.get('sd_c_index'))}",
            _num(cox.get("pooled_c_index")),
        ],
    ]
    clinical = (metrics.get("baseline") or {}).get("clinical_cox")
    if isinstance(clinical, dict) and not clinical.get("skipped"):
        rows.append(
            [
                "clinical-only Cox (reference)",
                f"{_num(clinical.get('mean_c_index'))} ± {_num(clinical.get('sd_c_index'))}",
                _num(clinical.get("pooled_c_index")),
            ]
        )
    table = _table(
        ["model", "C-index mean ± SD over folds", "C-index pooled"],
        rows,
        numeric=[False, True, True],
        table_id="baseline-comparison",
        caption=f"Reference on the same folds: {cox.get('model', '')}; features: {cox.get('features', '')}.",
    )
    return [table] + ([skipped_note] if skipped_note else [])


def _with_ci(entry: Any) -> str:
    """``0.712 (0.650-0.770)``: a metric and its bootstrap 95% CI from metrics.json; n/a where undefined."""
    if not isinstance(entry, dict):
        return "n/a"
    ci = entry.get("ci95")
    interval = f" ({_num(ci[0])} to {_num(ci[1])})" if isinstance(ci, list) and len(ci) == 2 else ""
    return _num(entry.get("value")) + interval


def _evaluation_block(metrics: dict) -> list[Block]:
    """Harrell's and Uno's C, time-dependent AUC, integrated Brier score, AUROC and AUPRC with bootstrap 95%
    CIs per fold and pooled, and the paired bootstrap of the C-index difference against the references."""
    evaluation = metrics.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("pooled"), dict):
        return []
    settings = evaluation.get("settings") or {}
    times = [t for t in settings.get("auc_times") or [] if isinstance(t, int | float)]
    sets = [(f"fold {_count(f.get('fold'))}", f.get("evaluation")) for f in metrics["folds"]]
    sets.append(("pooled out-of-fold", evaluation["pooled"]))
    rows, classes = [], []
    for label, entry in sets:
        if not isinstance(entry, dict):
            continue
        auc = {a.get("time"): a for a in entry.get("time_auc") or [] if isinstance(a, dict)}
        rows.append(
            [label, _with_ci(entry.get("harrell_c")), _with_ci(entry.get("uno_c"))]
            + [_with_ci(auc.get(t)) for t in times]
            + [_with_ci(entry.get(m)) for m in ("integrated_brier", "auroc", "auprc")]
        )
        classes.append("summary" if label.startswith("pooled") else None)
    headers = ["held-out set", "Harrell's C", "Uno's C"] + [f"AUC at {_num(t, '.4g')}" for t in times]
    headers += ["integrated Brier", "AUROC", "AUPRC"]
    parts = [
        _table(
            headers,
            rows,
            numeric=[False] + [True] * (len(headers) - 1),
            table_id="metrics-ci",
            caption=f"Bootstrap 95% CIs ({_count(settings.get('bootstrap_resamples'))} seeded resamples of each "
            f"held-out set's patients). Uno's C truncated at {_num(settings.get('uno_tau'), '.4g')}; time-dependent "
            "(cumulative/dynamic) AUC and the integrated Brier score weight by the inverse probability of censoring; "
            "survival functions from a Breslow baseline hazard fitted on each training fold. Lower Brier is better.",
            row_classes=classes,
        )
    ]
    diffs = evaluation["pooled"].get("c_index_difference") or {}
    names = {"penalised_cox": "penalised Cox", "clinical_cox": "clinical-only Cox"}
    diff_rows = [
        [f"fusion model minus {names.get(k, k)}", _with_ci(v), _count(v.get("n"))]
        for k, v in diffs.items()
        if isinstance(v, dict)
    ]
    if diff_rows:
        parts.append(
            _table(
                ["comparison (pooled out-of-fold)", "Harrell's C difference (95% CI)", "patients"],
                diff_rows,
                numeric=[False, True, True],
                table_id="c-index-difference",
                caption="Paired bootstrap: both models scored on the same resampled patients; a CI excluding 0 "
                "means the difference is unlikely to be chance.",
            )
        )
    return parts


def _feature_selection_table(metrics: dict) -> Block | None:
    """Features each fold's training rows left out, by step and modality (nothing dropped unseen)."""
    steps = ["features", "constant_or_sparse", "redundant", "not_screened_in", "used"]
    headers = ["fold", "modality", "features", "constant or sparse", "redundant", "not screened in", "used"]
    counted = [c for f in metrics["folds"] for c in (f.get("features") or {}).values() if isinstance(c, dict)]
    if any(c.get("too_few_training_patients") for c in counted):
        steps.insert(1, "too_few_training_patients")
        headers.insert(3, "modality in < 2 training patients")
    rows = []
    for fold in metrics["folds"]:
        for modality, counts in (fold.get("features") or {}).items():
            rows.append([_count(fold.get("fold")), modality, *[_count(counts.get(step, 0)) for step in steps]])
            if any("feature_budget" in f for f in metrics["folds"]):  # the most the modality may use
                rows[-1].append(_count((fold.get("feature_budget") or {}).get(modality)))
    if not rows:
        return None
    if any("feature_budget" in f for f in metrics["folds"]):
        headers.append("budget")
    return _table(
        headers,
        rows,
        numeric=[False, False] + [True] * (len(headers) - 2),
        table_id="feature-selection",
        caption="Feature selection fitted on each fold's training patients only: features constant or non-zero in "
        "too few patients, near-duplicates of an earlier feature (|Spearman| above the threshold), and features "
        "outside the univariate Cox screening limit are left out of that fold's model.",
    )


def _params_block(inp: _Inputs) -> Block | None:
    train = inp.params.get("train")
    if not isinstance(train, dict):
        return None
    rows = [[key, json.dumps(value, sort_keys=True, default=str)] for key, value in train.items()]
    modalities = inp.params.get("modalities")
    if modalities:
        rows.append(["modalities used", ", ".join(str(x) for x in modalities)])
    return _details("Model settings (params.json)", [_table(["setting", "value"], rows, table_id="model-params")])


def _risk_groups(predictions: pd.DataFrame) -> pd.DataFrame:
    """Split scored patients into high/low risk at the median risk of their own fold's held-out patients.

    ``predictions`` needs ``fold`` and ``risk``; rows without a finite risk are dropped. Returns the
    scored rows with ``fold_median_risk`` and ``group`` (``"high risk"`` when risk > the fold median,
    else ``"low risk"``) added.
    """
    scored = predictions[np.isfinite(predictions["risk"].to_numpy(float))].copy()
    if scored["fold"].isna().any():
        raise ValueError("a patient with a risk score has no fold")
    scored["fold_median_risk"] = scored.groupby("fold")["risk"].transform("median")
    scored["group"] = np.where(scored["risk"] > scored["fold_median_risk"], HIGH, LOW)
    return scored


def _logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float, str]:
    """(chi-square, p, note) of the log-rank test between groups; NaN with a reason when not computable."""
    from sksurv.compare import compare_survival

    if len(np.unique(group)) < 2:
        return float("nan"), float("nan"), "only one group has patients with a survival outcome"
    if not event.any():
        return float("nan"), float("nan"), "no events"
    y = np.empty(len(time), dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = event, time
    try:
        chisq, p = compare_survival(y, group)
    except (ValueError, ZeroDivisionError) as exc:
        return float("nan"), float("nan"), f"not computable: {exc}"
    return float(chisq), float(p), ""


def _hazard_ratio(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> tuple[float, float, float, str]:
    """(HR, CI low, CI high, note) of the high-risk group against the low-risk group: a Cox model of the group
    indicator (lifelines); NaN with a reason when not estimable."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    if len(np.unique(high)) < 2 or not event.any():
        return float("nan"), float("nan"), float("nan"), "needs events in two groups"
    frame = pd.DataFrame({"time": time, "event": event.astype(int), "high_risk": high.astype(int)})
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
    except (ConvergenceError, ValueError, np.linalg.LinAlgError) as exc:
        return float("nan"), float("nan"), float("nan"), f"not estimable: {exc}"
    summary = fit.summary.loc["high_risk"]
    return (
        float(summary["exp(coef)"]),
        float(summary["exp(coef) lower 95%"]),
        float(summary["exp(coef) upper 95%"]),
        "",
    )


def _risk_group_section(inp: _Inputs) -> list[Block]:
    from sksurv.nonparametric import kaplan_meier_estimator

    unit = f", {inp.time_unit}" if inp.time_unit else ""

    try:
        scored = _risk_groups(inp.predictions)
    except ValueError as exc:
        raise MultimodalError(f"{inp.model_dir / 'predictions.tsv'}: {exc}") from exc
    if scored.empty:
        inp.warn(f"{inp.model_dir / 'predictions.tsv'}: no patient has a risk score")
        return [_p("No patient has an out-of-fold risk score.", cls="warnings")]
    ok, time, event = _survival_arrays(scored["time"], scored["event"])
    groups = scored["group"].to_numpy()[ok]
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    rows = []
    for name in (HIGH, LOW):
        n_group = int((scored["group"] == name).sum())
        sel = groups == name
        median = float("nan")
        if sel.any():
            t, s = kaplan_meier_estimator(event[sel], time[sel])
            t, s = np.asarray(t), np.asarray(s)
            median = _km_median(t, s)
            label = f"{name} (n = {int(sel.sum())})"
            ax.step(np.r_[0.0, t], np.r_[1.0, s], where="post", color=GROUP_COLOURS[name], label=label)
            censored = time[sel][~event[sel]]
            if censored.size:
                at = np.searchsorted(t, censored, side="right") - 1
                ax.plot(censored, np.where(at >= 0, s[np.clip(at, 0, None)], 1.0), "|", color=GROUP_COLOURS[name])
        median_text = _num(median, ".1f") if math.isfinite(median) or not sel.any() else "not reached"
        rows.append([name, str(n_group), str(int(sel.sum())), str(int(event[sel].sum())), median_text])
    rows.append(["total", str(len(scored)), str(int(ok.sum())), str(int(event.sum())), ""])
    chisq, p, note = _logrank(time, event, groups)
    hr, hr_low, hr_high, hr_note = _hazard_ratio(time, event, groups == HIGH)
    at_risk_times = [float(x) for x in ax.get_xticks() if 0 <= x <= (time.max() if time.size else 0)]
    at_risk_rows = []
    for row_i, name in enumerate((HIGH, LOW)):
        sel = groups == name
        counts = [int((time[sel] >= x).sum()) for x in at_risk_times]
        at_risk_rows.append([name, *map(str, counts)])
        for x, c in zip(at_risk_times, counts, strict=True):
            ax.annotate(
                str(c),
                (x, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -42 - 13 * row_i),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=GROUP_COLOURS[name],
            )
        ax.annotate(
            name,
            (0, 0),
            xycoords="axes fraction",
            xytext=(-8, -42 - 13 * row_i),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color=GROUP_COLOURS[name],
        )
    ax.annotate(
        "at risk",
        (0, 0),
        xycoords="axes fraction",
        xytext=(-8, -30),
        textcoords="offset points",
        ha="right",
        fontsize=8,
    )
    ax.set_xlabel(f"time ({inp.time_unit})" if inp.time_unit else "time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.legend(loc="lower left", frameon=False)
    ax.set_title(
        f"log-rank p = {_pvalue(p)}; HR {_num(hr, '.2f')} ({_num(hr_low, '.2f')} to {_num(hr_high, '.2f')})",
        fontsize=10,
    )
    rule = (
        "Each held-out patient is high risk if its predicted risk exceeds the median risk of the held-out "
        "patients of its own cross-validation fold, else low risk (ties at the median are low risk)."
    )
    caption = (
        f"Kaplan-Meier curves of the out-of-fold risk groups; ticks mark censored patients. {rule} "
        f"Log-rank test: chi-square {_num(chisq, '.2f')}, p = {_pvalue(p)}"
        + (f" ({note})." if note else ".")
        + f" Hazard ratio of high against low risk (Cox, lifelines): {_num(hr, '.2f')} (95% CI {_num(hr_low, '.2f')} "
        f"to {_num(hr_high, '.2f')}). Numbers at risk below the axis."
    )
    splits = scored.groupby("fold").agg(
        median=("fold_median_risk", "first"),
        high=("group", lambda g: int((g == HIGH).sum())),
        low=("group", lambda g: int((g == LOW).sum())),
    )
    split_rows = [
        [_count(fold), _num(median, ".4g"), str(int(high)), str(int(low))]
        for fold, median, high, low in splits.itertuples(name=None)
    ]
    parts = [
        _figure(fig, alt="Kaplan-Meier curves of high and low predicted risk groups", caption=caption),
        _table(
            ["group", "patients scored", "with survival outcome", "events", f"median survival (KM{unit})"],
            rows,
            numeric=[False, True, True, True, True],
            table_id="risk-groups-table",
            caption=rule,
            row_classes=[None, None, "summary"],
        ),
        _kv(
            [("log-rank chi-square", _num(chisq, ".2f")), ("log-rank p", _pvalue(p))]
            + ([("note", note)] if note else [])
            + [
                ("hazard ratio, high against low risk", _num(hr, ".2f")),
                ("hazard ratio 95% CI", f"{_num(hr_low, '.2f')} to {_num(hr_high, '.2f')}"),
            ]
            + ([("hazard ratio note", hr_note)] if hr_note else []),
            dl_id="logrank",
        ),
        _table(
            ["group", *[_num(x, ".4g") for x in at_risk_times]],
            at_risk_rows,
            numeric=[False] + [True] * len(at_risk_times),
            table_id="numbers-at-risk",
            caption=f"Numbers at risk (patients still followed) at each time{unit and ' (' + inp.time_unit + ')'}.",
        ),
        _details(
            "Per-fold split",
            [
                _table(
                    ["fold", "median held-out risk", "high risk", "low risk"],
                    split_rows,
                    numeric=[False, True, True, True],
                    table_id="risk-group-splits",
                )
            ],
        ),
    ]
    parts += _calibration_blocks(inp, scored)
    return parts


def _benefit_section(inp: _Inputs) -> str:
    """The "Who benefits" section as HTML (:func:`_benefit_blocks`, laid out by the templates)."""
    return render_blocks(_benefit_blocks(inp))


def _benefit_blocks(inp: _Inputs) -> list[Block]:
    """Predicted treatment benefit (``model.treatment``): its distribution by arm received, calibration of
    benefit by tertiles, the C-for-benefit with its bootstrap CI and, where a truth was given, the AUROC for
    the true benefiters; the assumption it rests on and the sign convention are stated first."""
    benefit = inp.metrics["benefit"]
    pred = inp.predictions
    reference = str(benefit.get("reference", ""))
    parts = [
        _p(f"{benefit.get('assumption', '')}.", strong="Assumption:"),
        _p(
            f"{benefit.get('sign', '')}. Model: {benefit.get('head', '')}; each held-out patient is scored under "
            "every arm by the fold's model, everything but the arm as measured.",
            strong="Sign:",
        ),
    ]
    for level, entry in (benefit.get("by_arm") or {}).items():
        column = f"benefit_{level}"
        heading = f"{level} against {reference}"
        parts.append(_h3(heading))
        if column in pred and "arm" in pred:
            values = pd.to_numeric(pred[column], errors="coerce")
            fig = _new_figure(6.4, 3.2)
            ax = fig.add_subplot()
            arms = [a for a in (reference, level) if (pred["arm"] == a).any()]
            data = [values[(pred["arm"] == a) & values.notna()].to_numpy() for a in arms]
            if any(len(d) for d in data):
                ax.hist(data, bins=30, label=[f"received {a}" for a in arms], color=["#2e6fa8", "#c0392b"][: len(arms)])
                ax.axvline(0.0, color="black", linewidth=0.8)
                ax.set_xlabel(f"predicted benefit of {level} (log hazard, reference minus {level})")
                ax.set_ylabel("patients")
                ax.legend(frameon=False)
                parts.append(
                    _figure(
                        fig,
                        alt=f"distribution of predicted benefit of {level} by arm received",
                        caption="Out-of-fold predicted benefit per patient, by the arm received; right of 0 the "
                        f"model expects {level} to lower the patient's hazard.",
                    )
                )
        rows, pairs = (
            [],
            [("patients (both arms)", _count(entry.get("n_patients"))), ("treated", _count(entry.get("n_treated")))],
        )
        for name, label in (("model", "fusion model"), ("cox_interaction", "Cox with arm x feature terms")):
            result = entry.get(name)
            if not isinstance(result, dict):
                continue
            ci = result.get("c_for_benefit_ci")
            ci_text = f" (95% CI {_num(ci[0])}-{_num(ci[1])})" if isinstance(ci, list) and len(ci) == 2 else ""
            pairs.append(
                (
                    f"C-for-benefit, {label}",
                    f"{_num(result.get('c_for_benefit'))}{ci_text} over {_count(result.get('n_informative_pairs'))} "
                    f"informative of {_count(result.get('n_pairs'))} matched pairs",
                )
            )
            for group in result.get("calibration") or []:
                lo, hi = (group.get("predicted_range") or [None, None])[:2]
                rows.append(
                    [
                        label,
                        _count(group.get("group")),
                        f"{_num(lo)} to {_num(hi)}",
                        _count(group.get("n")),
                        _count(group.get("n_treated")),
                        _count(group.get("n_events")),
                        _num(group.get("mean_predicted_benefit")),
                        _num(group.get("observed_minus_log_hr")),
                        _num(group.get("km_difference")),
                    ]
                )
        truth = entry.get("truth")
        if isinstance(truth, dict):
            pairs += [
                ("true benefiters", f"{_count(truth.get('n_benefiters'))}: {truth.get('benefiters', '')}"),
                ("AUROC for true benefiters, fusion model", _num(truth.get("auroc_model"))),
                ("AUROC for true benefiters, Cox with arm x feature terms", _num(truth.get("auroc_cox_interaction"))),
                ("AUROC for true benefiters, oracle (true benefit)", _num(truth.get("auroc_oracle"))),
                ("C-for-benefit, oracle (true benefit)", _num(truth.get("oracle_c_for_benefit"))),
            ]
        parts.append(_kv(pairs, dl_id=f"benefit-{_slug(level)}"))
        if rows:
            parts.append(
                _table(
                    [
                        "model",
                        "tertile",
                        "predicted benefit",
                        "patients",
                        "treated",
                        "events",
                        "mean predicted",
                        "observed -log HR",
                        f"KM difference at {_num(benefit.get('km_time'), '.3g')}",
                    ],
                    rows,
                    numeric=[False, True, False, True, True, True, True, True, True],
                    table_id=f"benefit-calibration-{_slug(level)}",
                    caption="Calibration of benefit: tertiles of predicted benefit; observed benefit is minus the "
                    f"log hazard ratio of {level} against {reference} within the tertile, and the Kaplan-Meier "
                    f"survival of {level} minus {reference} at the median observed time. Calibrated: observed "
                    "-log HR close to the mean predicted.",
                )
            )
    parts.append(_p(f"C-for-benefit: {benefit.get('c_for_benefit_method', '')}.", cls="note"))
    return parts


def _ordered(names: Iterable[str], inp: _Inputs) -> list[str]:
    names = list(dict.fromkeys(names))
    preferred = [str(m) for m in (inp.params.get("modalities") or [])] + list(MODALITY_ORDER)
    first = [m for m in dict.fromkeys(preferred) if m in names]
    return first + sorted(m for m in names if m not in first)


def _feature_label(feature: str, gene: str, width: int = 40) -> str:
    label = f"{feature} ({gene})" if gene and gene not in feature else feature
    return label if len(label) <= width else label[: width - 1] + "…"


def _features_section(inp: _Inputs, top_n: int) -> list[Block]:
    imp = inp.importance
    if imp.empty:
        inp.warn(f"{inp.explain_dir / 'feature_importance.tsv'}: no rows")
        return [_p("feature_importance.tsv has no rows.", cls="warnings")]
    gene_col = imp["gene_symbol"] if "gene_symbol" in imp.columns else pd.Series("", index=imp.index)
    parts = [
        _p(
            f"The {top_n} features of each modality with the largest mean |attribution| over the held-out patients "
            "who have that modality. An attribution is a feature's share of a patient's predicted log relative hazard "
            f"({inp.attribution.get('method', 'attribution method')}; see Modality contributions). The signed mean "
            "attribution is near zero for a feature that raises the risk of some patients and lowers it for others, so "
            "it is not a direction of effect; the direction column (where the attributions carry it) is how the "
            "attribution moves with the feature's value: carriers minus non-carriers for 0/1 and mutation features, "
            "else the rank correlation of value and attribution. Features no fold model used (screened out, or "
            "redundant with another) have zero attribution and are not listed.",
            cls="note",
        )
    ]
    has_direction = {"direction", "direction_sign"} <= set(imp.columns)
    for name in _ordered(imp["modality"], inp):
        sub = imp[imp["modality"] == name].assign(_gene=gene_col[imp["modality"] == name])
        sub = sub.sort_values(["rank", "mean_abs_attribution"], ascending=[True, False], kind="stable")
        used = sub[sub["mean_abs_attribution"].fillna(0) > 0]
        top = used.head(top_n)
        n_patients = _count(top["n_patients"].iloc[0]) if "n_patients" in top.columns and len(top) else "n/a"
        rows = [
            [
                _count(r["rank"]),
                r["feature"],
                r["_gene"],
                _num(r["mean_abs_attribution"], ".3g"),
                _num(r["mean_attribution"], ".3g"),
            ]
            + ([_num(r["direction"], ".3g"), _direction_text(r)] if has_direction else [])
            for _, r in top.iterrows()
        ]
        headers = ["rank", "feature", "gene symbol", "mean |attribution|", "mean attribution"]
        headers += ["direction", "effect"] if has_direction else []
        table = _table(
            headers,
            rows,
            numeric=[True, False, False, True, True] + ([True, False] if has_direction else []),
            table_id=f"top-features-{_slug(name)}",
            caption=f"top {len(top)} of {len(sub)} features ({len(used)} used by a fold model); {n_patients} patients",
        )
        fig = _new_figure(5.2, 0.26 * max(len(top), 1) + 0.9)
        ax = fig.add_subplot()
        values = top["mean_abs_attribution"].to_numpy(float)[::-1]
        labels = [_feature_label(f, g) for f, g in zip(top["feature"], top["_gene"], strict=True)][::-1]
        ax.barh(np.arange(len(values)), np.nan_to_num(values), color=BAR_COLOUR)
        ax.set_yticks(np.arange(len(values)), labels, fontsize=8)
        ax.set_xlabel("mean |attribution|")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.set_title(name, fontsize=10)
        figure = _figure(
            fig,
            alt=f"bar chart of the top {len(top)} {name} features by mean absolute attribution",
            caption=f"{name}: the top {len(top)} features by mean |attribution|.",
        )
        parts.append(_h3(name, block_id=f"features-{_slug(name)}"))
        parts.append(_grid([table, figure]))
    return parts


def _direction_text(row: pd.Series) -> str:
    """``raises risk (carrier difference)``: the direction sign and how it was measured."""
    sign = str(row.get("direction_sign") or "").replace("_", " ") or "n/a"
    kind = str(row.get("direction_kind") or "").replace("_", " ")
    return f"{sign} ({kind})" if kind else sign


def _contributions_section(inp: _Inputs) -> list[Block]:
    contrib = inp.contributions
    mod_cols = _ordered(_contribution_modalities(contrib.columns), inp)
    rows, names, means = [], [], []
    for name in mod_cols:
        values = contrib[name].to_numpy(float)
        present = values[np.isfinite(values)]
        mean_abs = float(np.mean(np.abs(present))) if present.size else float("nan")
        mean_signed = float(np.mean(present)) if present.size else float("nan")
        rows.append([name, str(present.size), _num(mean_abs, ".3g"), _num(mean_signed, ".3g")])
        names.append(name)
        means.append(mean_abs)
    parts = [
        _table(
            ["modality", "patients with modality", "mean |summed attribution|", "mean summed attribution"],
            rows,
            numeric=[False, True, True, True],
            table_id="modality-contributions",
            caption="Per patient, the attributions of a modality's features are summed; the mean of its absolute "
            "value is taken over the patients who have that modality.",
        )
    ]
    if names:
        fig = _new_figure(5.2, 0.35 * len(names) + 0.9)
        ax = fig.add_subplot()
        ax.barh(np.arange(len(names)), np.nan_to_num(means[::-1]), color=BAR_COLOUR)
        ax.set_yticks(np.arange(len(names)), names[::-1])
        ax.set_xlabel("mean |summed attribution|")
        parts.append(
            _figure(
                fig,
                alt="bar chart of mean absolute summed attribution per modality",
                caption="Mean |summed attribution| per modality over patients having it.",
            )
        )
    att = inp.attribution
    risk_sd = float(np.nanstd(contrib["risk"].to_numpy(float))) if "risk" in contrib.columns else float("nan")
    delta_mean = att.get("convergence_delta_mean_abs")
    relative = _num(float(delta_mean) / risk_sd, ".2e") if _num(delta_mean) != "n/a" and risk_sd > 0 else "n/a"
    parts.append(_h3("Attribution method"))
    parts.append(
        _kv(
            [
                ("method", att.get("method", "n/a")),
                ("integration steps", _count(att.get("n_steps"))),
                ("integration rule", att.get("integration", "n/a")),
                ("target", att.get("target", "n/a")),
                ("baseline", att.get("baseline", "n/a")),
                ("mean |convergence delta|", _num(delta_mean, ".2e")),
                ("max |convergence delta|", _num(att.get("convergence_delta_max_abs"), ".2e")),
                ("mean |convergence delta| / SD of risk", relative),
            ],
            dl_id="attribution-method",
        )
    )
    if att.get("convergence_warning"):
        parts.append(_p(str(att["convergence_warning"]), cls="warnings", block_id="convergence-warning"))
    return parts


def _inputs_frame(raw: Any) -> pd.DataFrame:
    if isinstance(raw, pd.DataFrame):
        return raw
    if isinstance(raw, dict):
        try:
            return pd.DataFrame(raw)
        except ValueError:
            return pd.DataFrame({"path": list(raw)})
    if isinstance(raw, list | tuple):
        return pd.DataFrame({"path": [str(x) for x in raw]})
    return pd.DataFrame(columns=["path", "sha256"])


def _provenance_section(inp: _Inputs, generated: str) -> list[Block]:
    prov = inp.provenance
    if not prov:
        inp.warn(f"{inp.store}: no provenance record")
    versions = prov.get("versions") if isinstance(prov.get("versions"), dict) else {}
    files = _inputs_frame(prov.get("inputs"))
    parts = [
        _kv(
            [
                ("store created", prov.get("created", "n/a")),
                ("store spec version", prov.get("store_spec_version", "n/a")),
                ("store written by multimodal", versions.get("multimodal", "n/a")),
                ("command", Code(str(prov.get("command", "n/a")))),
                ("input files fingerprinted (sha256)", str(len(files))),
                ("report generated", generated),
                ("report written by multimodal", __version__),
            ],
            dl_id="provenance-summary",
        )
    ]
    keys = [k for k in KEY_PACKAGES if k in versions] + sorted(k for k in versions if k not in KEY_PACKAGES)
    parts.append(
        _table(
            ["package", "version"],
            [[k, versions[k]] for k in keys],
            table_id="provenance-versions",
            caption="Package versions recorded when the cohort store was written.",
        )
    )
    if len(files):
        shown = files.head(MAX_INPUT_ROWS)
        cols = [c for c in ("path", "sha256") if c in shown.columns] or list(shown.columns)
        more = len(files) - len(shown)
        parts.append(
            _details(
                "Input files",
                [
                    _table(cols, shown[cols].astype(str).to_numpy().tolist(), table_id="provenance-inputs"),
                    _p(f"… and {more} more, listed in the store provenance.", cls="note") if more else None,
                ],
            )
        )
    config_json = prov.get("config_json")
    if config_json:
        try:
            pretty = json.dumps(json.loads(config_json), indent=2, sort_keys=True)
        except (TypeError, json.JSONDecodeError):
            pretty = str(config_json)
        summary = "Configuration when the cohort store was assembled (this run's model settings: model/params.json)"
        parts.append(_details(summary, [_pre(pretty)]))
    parts += _stage_commands(inp)
    return parts


# --------------------------------------------------------------------------------------------------
# Sections added for issue 11: missingness, references with CIs, calibration, direction, added value, per patient

CONTRIBUTION_COLUMNS = {"fold", "risk", "risk_percentile", "risk_group", "response_prob", "convergence_delta"}


def _contribution_modalities(columns: Iterable[str]) -> list[str]:
    """The per-modality summed-attribution columns of modality_contributions.tsv (not fold, risk, group_*, ...)."""
    return [c for c in columns if c not in CONTRIBUTION_COLUMNS and not c.startswith("group_")]


def _missingness_blocks(inp: _Inputs) -> list[Block]:
    """Which combinations of modalities the patients have (an UpSet-like table and plot)."""
    names = _modalities(inp)
    if not names:
        return []
    has = pd.DataFrame({m: inp.obs[f"has_{m}"].fillna(False).astype(bool).to_numpy() for m in names})
    patterns = has.value_counts().sort_values(ascending=False, kind="stable")
    n = len(has)
    rows = [
        ["yes" if present else "–" for present in pattern] + [str(int(count)), _pct(count, n)]
        for pattern, count in patterns.items()
    ]
    table = _table(
        [*names, "patients", "% of cohort"],
        rows,
        numeric=[False] * len(names) + [True, True],
        table_id="missingness-patterns",
        caption="Modality combinations: each row is one pattern of which modalities a patient has; every patient "
        "is in exactly one row. The model handles a missing modality by masking it.",
    )
    fig = _new_figure(max(3.0, 0.5 * len(patterns) + 1.8), 3.4)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    x = np.arange(len(patterns))
    axes[0].bar(x, patterns.to_numpy(), color=BAR_COLOUR)
    axes[0].set_ylabel("patients")
    for i, pattern in enumerate(patterns.index):
        present = np.flatnonzero(np.asarray(pattern, dtype=bool))
        axes[1].scatter(np.full(len(names), i), np.arange(len(names)), color="#d9dee3", s=30)
        if present.size:
            axes[1].scatter(np.full(present.size, i), present, color="#1d2329", s=30)
            axes[1].plot([i, i], [present.min(), present.max()], color="#1d2329", linewidth=1.5)
    axes[1].set_yticks(np.arange(len(names)), names, fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_ylim(-0.6, len(names) - 0.4)
    figure = _figure(
        fig,
        alt="bar chart of patients per modality combination with a dot matrix of the modalities present",
        caption="Patients per modality combination (filled dots: modalities present).",
    )
    return [_h3("Missingness pattern"), _grid([table, figure])]


REFERENCE_COLUMNS = (
    ("risk", "fusion model"),
    ("risk_penalised_cox", "penalised Cox (elastic net) reference"),
    ("risk_clinical_cox", "clinical-only Cox reference"),
)


def _reference_ci_block(inp: _Inputs) -> list[Block]:
    """Pooled out-of-fold Harrell's C with its bootstrap 95% CI for the fusion model and each reference, on the
    same folds and patients, as training computed them (metrics.json ``evaluation.pooled``)."""
    pooled = ((inp.metrics or {}).get("evaluation") or {}).get("pooled") or {}
    references = pooled.get("reference_harrell_c") or {}
    entries = [("risk", {**(pooled.get("harrell_c") or {}), "n": pooled.get("n")})] + [
        (f"risk_{name}", entry) for name, entry in references.items()
    ]
    labels = dict(REFERENCE_COLUMNS)
    present = [(labels[c], entry) for c, entry in entries if c in labels and entry.get("value") is not None]
    if len(present) < 2:
        return []
    rows = []
    for label, entry in present:
        low, high = entry.get("ci95") or (None, None)
        rows.append([label, _count(entry.get("n")), _num(entry["value"]), f"{_num(low)} to {_num(high)}"])
    return [
        _table(
            ["model (same folds)", "patients", "Harrell's C pooled out-of-fold", "bootstrap 95% CI"],
            rows,
            numeric=[False, True, True, True],
            table_id="reference-ci",
            caption="Each model's held-out risks pooled over folds; seeded bootstrap resamples of the patients, "
            "the same resamples for every model (metrics.json). The references are fitted on the same training folds.",
        )
    ]


def _scalar_items(entry: Any) -> list[tuple[str, str]]:
    """The numbers and strings of a metrics.json entry, one level deep (nested value/ci95 pairs shown as such)."""
    if not isinstance(entry, dict):
        return []
    out = []
    for key, value in entry.items():
        if isinstance(value, dict) and "value" in value:
            out.append((str(key), _with_ci(value)))
        elif isinstance(value, bool | str):
            out.append((str(key), str(value)))
        elif isinstance(value, int | float) or value is None:
            out.append((str(key), _num(value, ".4g")))
    return out


def _tasks_blocks(metrics: dict) -> list[Block]:
    """metrics.json ``tasks`` (e.g. quality-of-life outcomes), whatever their metrics: pooled and per fold."""
    tasks = metrics.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return []
    parts: list[Block] = [_h3("Other outcomes (tasks)")]
    for name, task in tasks.items():
        if not isinstance(task, dict):
            continue
        pooled = _scalar_items(task.get("pooled"))
        folds = [f for f in task.get("folds") or [] if isinstance(f, dict)]
        keys = list(dict.fromkeys(k for f in folds for k, _ in _scalar_items(f)))
        rows = [[dict(_scalar_items(f)).get(k, "") for k in keys] for f in folds]
        rows.append([dict(pooled).get(k, "") if k != "fold" else "pooled" for k in keys])
        if keys:
            parts.append(
                _table(
                    keys,
                    rows,
                    numeric=[k != "fold" for k in keys],
                    table_id=f"task-{_slug(name)}",
                    caption=f"{name} ({task.get('kind', 'outcome')}): per held-out fold and pooled out-of-fold.",
                    row_classes=[None] * len(folds) + ["summary"],
                )
            )
        elif pooled:
            parts.append(_kv(pooled, dl_id=f"task-{_slug(name)}"))
    return parts if len(parts) > 1 else []


def _search_blocks(metrics: dict) -> list[Block]:
    """metrics.json ``search`` (:func:`multimodal.model.search.search_summary`): the settings each fold's inner
    search chose, with its epochs and mean inner C."""
    search = metrics.get("search")
    if not isinstance(search, dict) or not isinstance(search.get("per_fold"), list):
        return []
    rows = []
    repeated = any(entry.get("repeat") for entry in search["per_fold"] if isinstance(entry, dict))
    for entry in search["per_fold"]:
        if not isinstance(entry, dict):
            continue
        chosen = entry.get("chosen") or {}
        settings = json.dumps(_json_safe(chosen), sort_keys=True, default=str) if chosen else "the run's own settings"
        fold = f"{entry.get('fold')} (repeat {entry.get('repeat')})" if repeated else _count(entry.get("fold"))
        rows.append([fold, settings, _count(entry.get("epochs")), _num(entry.get("inner_c_index"))])
    if not rows:
        return []
    return [
        _details(
            f"Settings chosen per fold (inner search: {search.get('method', '')}, {search.get('select', 'best')})",
            [_table(["fold", "chosen settings", "epochs", "mean inner C"], rows, table_id="search-choices")],
        )
    ]


def _baseline_hazards(model_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each fold's Breslow baseline cumulative hazard at risk 0 (fold_<k>/baseline_hazard.tsv, from train)."""
    out = {}
    for path in sorted(model_dir.glob("fold_*/baseline_hazard.tsv")):
        try:
            k = int(path.parent.name.removeprefix("fold_"))
        except ValueError:
            continue
        table = _read_tsv(path, required=("time", "cumulative_hazard"), numeric=("time", "cumulative_hazard"))
        out[k] = (table["time"].to_numpy(float), table["cumulative_hazard"].to_numpy(float))
    return out


def _calibration_horizon(inp: _Inputs, time: np.ndarray) -> float:
    """The middle of metrics.json's time-dependent AUC times, else the median observed time."""
    times = ((inp.metrics.get("evaluation") or {}).get("settings") or {}).get("auc_times") or []
    times = sorted(float(t) for t in times if isinstance(t, int | float))
    if times:
        return times[len(times) // 2]
    return float(np.median(time)) if time.size else float("nan")


def _calibration_blocks(inp: _Inputs, scored: pd.DataFrame) -> list[Block]:
    """Predicted (in-fold Breslow baseline hazard) against Kaplan-Meier observed survival at a horizon, per
    group of predicted survival."""
    from lifelines import KaplanMeierFitter

    hazards = _baseline_hazards(inp.model_dir)
    parts: list[Block] = [_h3("Calibration", block_id="calibration")]
    if not hazards:
        return parts + [
            _p(
                "No calibration: the model directory has no fold_<k>/baseline_hazard.tsv (written by multimodal "
                "train since issue 11); retrain to see predicted against observed survival.",
                cls="note",
            )
        ]
    ok, time, event = _survival_arrays(scored["time"], scored["event"])
    rows_ok = scored[ok]
    horizon = _calibration_horizon(inp, time)
    predicted = np.full(len(rows_ok), np.nan)
    for k, (t0, h0) in hazards.items():
        sel = rows_ok["fold"].to_numpy(float) == k
        at = np.searchsorted(t0, horizon, side="right") - 1
        h = float(h0[at]) if at >= 0 else 0.0
        predicted[sel] = np.exp(-np.exp(rows_ok["risk"].to_numpy(float)[sel]) * h)
    keep = np.isfinite(predicted)
    if keep.sum() < 10 or not math.isfinite(horizon):
        return parts + [_p("Too few scored patients with a baseline hazard for a calibration table.", cls="note")]
    n_groups = 5 if keep.sum() >= 150 else 3
    order = pd.Series(predicted[keep]).rank(method="first").to_numpy()
    group = np.ceil(order * n_groups / keep.sum()).astype(int)  # 1 = lowest predicted survival
    t, e, pr = time[keep], event[keep], predicted[keep]
    rows, xs, ys, lows, highs = [], [], [], [], []
    for g in range(1, n_groups + 1):
        sel = group == g
        kmf = KaplanMeierFitter().fit(t[sel], e[sel])
        observed = float(kmf.predict(horizon))
        ci = kmf.confidence_interval_survival_function_
        before = ci.index.to_numpy(float) <= horizon
        low, high = ci.to_numpy(float)[before][-1] if before.any() else (1.0, 1.0)
        rows.append(
            [
                str(g),
                str(int(sel.sum())),
                str(int((e[sel] & (t[sel] <= horizon)).sum())),
                _num(pr[sel].mean()),
                _num(observed),
                f"{_num(low)} to {_num(high)}",
            ]
        )
        xs.append(pr[sel].mean())
        ys.append(observed)
        lows.append(low)
        highs.append(high)
    unit = f" {inp.time_unit}" if inp.time_unit else ""
    fig = _new_figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#9aa5b1", linewidth=1, linestyle="--")
    ys_a, lo_a, hi_a = np.array(ys), np.array(lows), np.array(highs)
    ax.errorbar(
        xs,
        ys_a,
        yerr=[np.clip(ys_a - lo_a, 0, None), np.clip(hi_a - ys_a, 0, None)],
        fmt="o",
        color=BAR_COLOUR,
        capsize=3,
    )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"predicted survival at {_num(horizon, '.4g')}{unit}")
    ax.set_ylabel("observed (Kaplan-Meier)")
    caption = (
        f"Calibration at {_num(horizon, '.4g')}{unit}: patients in {n_groups} equal groups of predicted survival "
        "(1 = lowest); predicted = mean of S0(t)^exp(risk) with each fold's Breslow baseline hazard from its "
        "training patients; observed = Kaplan-Meier survival of the group with its 95% CI. On the dashed line "
        "predictions match what happened."
    )
    table = _table(
        ["group", "patients", "events by horizon", "mean predicted survival", "observed survival (KM)", "95% CI"],
        rows,
        numeric=[True, True, True, True, True, True],
        table_id="calibration-table",
        caption=caption,
    )
    return parts + [
        _grid(
            [
                table,
                _figure(
                    fig,
                    alt="calibration plot of predicted against observed survival",
                    caption=caption,
                    figure_id="calibration-figure",
                ),
            ]
        )
    ]


def _read_attribution_matrices(inp: _Inputs) -> dict[str, Any]:
    """Each modality of attributions.zarr (AnnData: X attributions, layer ``value`` when written); {} when it
    cannot be read as such (the sections that need it say so)."""
    import anndata as ad

    from multimodal.store import configure_zarr_v3, sort_mappings

    root = inp.explain_dir / "attributions.zarr" / "mod"
    out = {}
    if not root.is_dir():
        return out
    configure_zarr_v3()
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out[path.name] = ad.read_zarr(str(path))
            sort_mappings(out[path.name].uns)
        except Exception as exc:  # noqa: BLE001 - a damaged modality is reported, the others still shown
            inp.warn(f"{path}: cannot read attributions: {type(exc).__name__}: {exc}")
    return out


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=float)


def _colour(fraction: float) -> str:
    """Blue (0) through light grey (0.5) to red (1); grey for NaN."""
    if not math.isfinite(fraction):
        return "#9aa5b1"
    stops = [(0.0, (46, 111, 168)), (0.5, (217, 217, 217)), (1.0, (192, 57, 43))]
    (a, ca), (b, cb) = (stops[0], stops[1]) if fraction <= 0.5 else (stops[1], stops[2])
    w = (fraction - a) / (b - a)
    return "#" + "".join(f"{round(x + (y - x) * w):02x}" for x, y in zip(ca, cb, strict=True))


def _direction_section(inp: _Inputs, matrices: dict[str, Any], top_n: int) -> list[Block]:
    """A beeswarm per modality: a dot per held-out patient and top feature, x = attribution, colour = value."""
    if not matrices:
        return [_p("No attribution matrices to draw (attributions.zarr has no modalities).", cls="note")]
    if not any("value" in a.layers for a in matrices.values()):
        return [
            _p(
                "Direction plots need the patients' feature values beside their attributions (layer 'value' of "
                "attributions.zarr, written by multimodal explain since issue 11); rerun explain to see them.",
                cls="note",
            )
        ]
    imp = inp.importance
    parts: list[Block] = [
        _p(
            "Each dot is a held-out patient: its attribution for the feature (right of the line raises the predicted "
            "risk) coloured by the patient's value of the feature. Red dots on the right mean high values raise risk.",
            cls="note",
        )
    ]
    n_show = min(top_n, 10)
    for name in _ordered(matrices, inp):
        adata = matrices[name]
        if "value" not in adata.layers or adata.n_obs == 0:
            continue
        sub = imp[imp["modality"] == name].sort_values("rank", kind="stable")
        sub = sub[sub["mean_abs_attribution"].fillna(0) > 0]
        features = [f for f in sub["feature"] if f in adata.var_names][:n_show]
        if not features:
            continue
        idx = [adata.var_names.get_loc(f) for f in features]
        attr = _dense(adata.X[:, idx])
        values = _dense(adata.layers["value"][:, idx])
        patients = list(adata.obs_names)
        limit = float(np.nanmax(np.abs(attr))) if np.isfinite(attr).any() else 1.0
        limit = limit or 1.0
        left, width, row_h = 190, 640, 26
        height = row_h * len(features) + 40
        scale = (width - left - 16) / (2 * limit)
        zero_x = left + limit * scale
        rows, table_rows = [], []
        rng = np.random.default_rng(0)
        for j, feature in enumerate(features):
            y0 = 14 + j * row_h
            a, v = attr[:, j], values[:, j]
            finite_v = np.isfinite(v)
            ranks = pd.Series(v).rank(pct=True).to_numpy()
            distinct = np.unique(v[finite_v])
            if distinct.size == 1:
                ranks = np.where(finite_v, 0.5, np.nan)
            elif distinct.size == 2:  # 0/1 (carrier or not): the two ends of the colour scale
                ranks = np.where(finite_v, (v == distinct[1]).astype(float), np.nan)
            jitter = rng.uniform(-row_h * 0.35, row_h * 0.35, size=len(a))
            dots = [
                {
                    "x": round(zero_x + float(a[i]) * scale, 1),
                    "y": round(y0 + float(jitter[i]), 1),
                    "colour": _colour(float(ranks[i])),
                    "title": f"{patients[i]}: {feature} = {_num(v[i], '.4g')}, attribution {_num(a[i], '.3g')}",
                }
                for i in range(len(a))
                if np.isfinite(a[i])
            ]
            rows.append({"y": y0, "label": _feature_label(feature, ""), "dots": dots})
            r = sub[sub["feature"] == feature].iloc[0]
            direction = [_num(r["direction"], ".3g"), _direction_text(r)] if "direction" in sub.columns else ["", ""]
            hi_mask = finite_v & (ranks > 0.5)
            lo_mask = finite_v & (ranks <= 0.5)
            table_rows.append(
                [
                    feature,
                    *direction,
                    _num(np.nanmean(a[hi_mask]) if hi_mask.any() else np.nan, ".3g"),
                    _num(np.nanmean(a[lo_mask]) if lo_mask.any() else np.nan, ".3g"),
                ]
            )
        ticks = [{"x": round(zero_x + t * scale, 1), "label": _num(t, ".2g")} for t in np.linspace(-limit, limit, 5)]
        parts.append(_h3(name, block_id=f"direction-{_slug(name)}"))
        parts.append(
            {
                "kind": "swarm",
                "id": f"swarm-{_slug(name)}",
                "width": width,
                "height": height,
                "left": left,
                "zero_x": round(zero_x, 1),
                "ticks": ticks,
                "rows": rows,
                "alt": f"beeswarm of the attributions of the top {len(features)} {name} features",
                "caption": f"{name}: attributions of the top {len(features)} features over {adata.n_obs} held-out "
                "patients.",
            }
        )
        parts.append(
            _table(
                [
                    "feature",
                    "direction",
                    "effect",
                    "mean attribution, upper half of values",
                    "mean attribution, lower half of values",
                ],
                table_rows,
                numeric=[False, True, False, True, True],
                table_id=f"direction-table-{_slug(name)}",
                caption="The numbers behind the plot: the direction from feature_importance.tsv and the mean "
                "attribution of the patients above and at or below the feature's median value.",
            )
        )
    return parts


def _value_section(inp: _Inputs) -> list[Block]:
    """Added value per modality (modality_value.tsv: masked C-index drop with a bootstrap CI, Shapley share) and
    the trust checks (trust.json)."""
    parts: list[Block] = []
    path = inp.explain_dir / "modality_value.tsv"
    if not path.is_file():
        parts.append(
            _p(f"{path.name} is absent: the attributions predate the added-value measure (rerun explain).", cls="note")
        )
    else:
        numeric = ("c_index_full", "c_index_masked", "drop", "drop_ci_low", "drop_ci_high", "shapley_share")
        table = _read_tsv(path, required=("modality", "drop"), numeric=numeric)
        names = _ordered(table["modality"], inp)
        table = table.set_index("modality").loc[names]
        rows = [
            [
                name,
                _num(r.get("c_index_full")),
                _num(r.get("c_index_masked")),
                _num(r.get("drop")),
                f"{_num(r.get('drop_ci_low'))} to {_num(r.get('drop_ci_high'))}",
                _num(r.get("shapley_share")),
            ]
            for name, r in table.iterrows()
        ]
        caption = (
            "Held-out Harrell's C of the fold models with every modality, and with this one masked at prediction "
            "(as for a patient without it); drop = full minus masked, with a paired bootstrap 95% CI: a CI above 0 "
            "means the modality adds predictive value. Shapley share: the modality's share of the summed "
            "|contribution| over modality groups."
        )
        parts.append(
            _table(
                [
                    "modality",
                    "C-index, all modalities",
                    "C-index, modality masked",
                    "drop",
                    "drop 95% CI",
                    "Shapley share",
                ],
                rows,
                numeric=[False, True, True, True, True, True],
                table_id="modality-value",
                caption=caption,
            )
        )
        drops = table["drop"].to_numpy(float)
        lows = table["drop_ci_low"].to_numpy(float) if "drop_ci_low" in table else drops
        highs = table["drop_ci_high"].to_numpy(float) if "drop_ci_high" in table else drops
        fig = _new_figure(5.2, 0.45 * len(names) + 1.0)
        ax = fig.add_subplot()
        y = np.arange(len(names))[::-1]
        ax.barh(y, np.nan_to_num(drops), color=BAR_COLOUR)
        err = np.vstack([np.clip(np.nan_to_num(drops - lows), 0, None), np.clip(np.nan_to_num(highs - drops), 0, None)])
        ax.errorbar(np.nan_to_num(drops), y, xerr=err, fmt="none", ecolor="#1d2329", capsize=3)
        ax.axvline(0, color="#1d2329", linewidth=0.8)
        ax.set_yticks(y, names)
        ax.set_xlabel("C-index drop when masked (95% CI)")
        parts[-1] = _grid(
            [
                parts[-1],
                _figure(
                    fig,
                    alt="bar chart of the C-index drop per masked modality",
                    caption="C-index drop when the modality is masked, with its CI.",
                    figure_id="modality-value-figure",
                ),
            ]
        )
    trust_path = inp.explain_dir / "trust.json"
    if trust_path.is_file():
        trust = _read_json(trust_path)
        parts.append(_h3("Can the attributions be trusted?", block_id="trust"))
        parts += _trust_blocks(trust if isinstance(trust, dict) else {})
    return parts


def _trust_blocks(trust: dict) -> list[Block]:
    """trust.json as tables: rank stability per modality, the randomisation check, planted precision@10."""
    parts: list[Block] = []
    stability = trust.get("rank_stability")
    if isinstance(stability, dict) and stability:
        keys = list(dict.fromkeys(k for v in stability.values() if isinstance(v, dict) for k in v))
        rows = [
            [name, *[_num(v.get(k), ".3g") if not isinstance(v.get(k), str) else v.get(k) for k in keys]]
            for name, v in stability.items()
            if isinstance(v, dict)
        ]
        if rows:
            parts.append(
                _table(
                    ["modality", *keys],
                    rows,
                    numeric=[False] + [True] * len(keys),
                    table_id="trust-stability",
                    caption="Rank stability of the feature importance across the fold models.",
                )
            )
    randomisation = trust.get("randomisation")
    if isinstance(randomisation, dict):
        pairs = [
            (
                k,
                json.dumps(_json_safe(v), default=str)
                if isinstance(v, dict | list)
                else _num(v, ".3g")
                if isinstance(v, int | float) and not isinstance(v, bool)
                else str(v),
            )
            for k, v in randomisation.items()
        ]
        parts.append(_h3("Model randomisation check"))
        parts.append(_kv(pairs, dl_id="trust-randomisation"))
    planted = trust.get("planted_precision_at_10")
    if isinstance(planted, dict) and planted:
        parts.append(
            _table(
                ["modality", "precision@10 of planted features"],
                [
                    [k, _num(v, ".2f") if not isinstance(v, dict) else _num(v.get("precision"), ".2f")]
                    for k, v in planted.items()
                ],
                numeric=[False, True],
                table_id="trust-planted",
                caption="Simulated cohort: share of each modality's top 10 features that the simulator planted.",
            )
        )
    return parts


def _patient_section(inp: _Inputs, matrices: dict[str, Any], top_n: int) -> tuple[list[Block], dict | None]:
    """The per-patient view (a select box; drawn by the inline script from the returned data) and its data:
    per held-out patient its risk, percentile, group, modality contributions and top attributions with values."""
    contrib = inp.contributions
    if contrib.empty or not matrices:
        return [_p("No per-patient attributions to show.", cls="note")], None
    mods = _ordered(_contribution_modalities(contrib.columns), inp)
    group_cols = [m for m in mods if f"group_{m}" in contrib.columns]
    risk = contrib["risk"].to_numpy(float) if "risk" in contrib.columns else np.full(len(contrib), np.nan)
    finite = np.sort(risk[np.isfinite(risk)])
    if "risk_percentile" in contrib.columns:
        percentile = pd.to_numeric(contrib["risk_percentile"], errors="coerce").to_numpy(float)
    else:
        percentile = 100.0 * np.searchsorted(finite, risk, side="right") / max(len(finite), 1)
    if "risk_group" in contrib.columns:
        groups = contrib["risk_group"].astype(str).to_numpy()
    else:
        groups = np.where(percentile > 200 / 3, "high", np.where(percentile > 100 / 3, "intermediate", "low"))
    response = (
        inp.predictions.set_index("patient_id")["response_prob"].reindex(contrib.index).to_numpy(float)
        if "response_prob" in inp.predictions.columns
        else np.full(len(contrib), np.nan)
    )
    # every patient's attributions over all modalities, with values where recorded
    entries: dict[str, list[tuple[str, str, float, float]]] = {str(p): [] for p in contrib.index}
    totals = dict.fromkeys(entries, 0.0)
    for name, adata in matrices.items():
        x = _dense(adata.X)
        values = _dense(adata.layers["value"]) if "value" in adata.layers else np.full(x.shape, np.nan)
        var = list(adata.var_names)
        for i, pid in enumerate(adata.obs_names):
            pid = str(pid)
            if pid not in entries:
                continue
            row = x[i]
            totals[pid] += float(np.nansum(row))
            best = np.argsort(-np.abs(np.nan_to_num(row)))[:top_n]
            entries[pid] += [(name, var[j], float(values[i, j]), float(row[j])) for j in best if row[j] != 0]
    patients = {}
    for i, pid in enumerate(map(str, contrib.index)):
        top = sorted(entries[pid], key=lambda e: -abs(e[3]))[:top_n]
        patients[pid] = {
            "fold": _count(contrib["fold"].iloc[i]) if "fold" in contrib.columns else "n/a",
            "risk": risk[i],
            "percentile": percentile[i],
            "risk_group": str(groups[i]),
            "response_prob": response[i],
            "delta": float(contrib["convergence_delta"].iloc[i]) if "convergence_delta" in contrib.columns else None,
            "contrib": {m: float(contrib[m].iloc[i]) for m in mods},
            "groups": {m: float(contrib[f"group_{m}"].iloc[i]) for m in group_cols},
            "top": [list(e) for e in top],
            "rest": totals[pid] - sum(e[3] for e in top),
        }
    order = sorted(patients)
    data = {"modalities": mods, "has_groups": bool(group_cols), "patients": patients}
    block = {
        "kind": "patient_view",
        "patients": order,
        "top": top_n,
        "has_groups": bool(group_cols),
        "group_method": str(inp.attribution.get("group_method", "")),
    }
    note = _p(
        "Choose a patient: their predicted risk and where it falls in the cohort, each modality's contribution, and "
        "the features that moved their prediction most, with their values. Attributions are from the fold model "
        "that did not see the patient. The same in the terminal: multimodal explain --patient ID.",
        cls="note",
    )
    return [note, block], data


_SHELL_COMMAND = re.compile(r"^Shell command: (.+)$")


def _stage_commands(inp: _Inputs) -> list[Block]:
    """Every stage's command: from the run transcript ``<outdir>/logs/run.log`` that ``multimodal run`` writes
    (Snakemake's ``rule``/``Shell command`` lines), else the store's own recorded command."""
    transcript = inp.model_dir.parent / "logs" / "run.log"
    rows = []
    if transcript.is_file():
        rule = None
        for line in transcript.read_text(encoding="utf-8", errors="replace").splitlines():
            started = re.match(r"^(?:local)?rule (\S+?):\s*$", line)
            if started:
                rule = started.group(1)
            command = _SHELL_COMMAND.match(line)
            if command and rule and command.group(1).strip() != "None":
                rows.append([rule, Code(command.group(1).strip())])
                rule = None
    if not rows:
        rows = [["assemble (cohort store)", Code(str(inp.provenance.get("command", "n/a")))]]
        source = (
            "the store's provenance (the other stages' commands are recorded when the pipeline runs through "
            "multimodal run, in <outdir>/logs/run.log)"
        )
    else:
        source = f"{transcript}"
    return [
        _h3("Stage commands"),
        _table(["stage", "command"], rows, table_id="stage-commands", caption=f"Every stage's command, from {source}."),
    ]


# --------------------------------------------------------------------------------------------------
# Entry point


def _environment() -> Any:
    """The Jinja2 environment of the report templates (autoescaping on; ``code`` test for :class:`Code`)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("multimodal.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.tests["code"] = lambda value: isinstance(value, Code)
    return env


def _finalize(value: Any) -> Any:
    """Escape every value the templates print as :func:`html.escape` does (``&#x27;``, ``&quot;``), as the report
    always has, so its text is the same byte for byte; markup the templates built is left as it is."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def render_blocks(blocks: Iterable[Block | None]) -> str:
    """The HTML of ``blocks`` as the report lays them out (``templates/blocks.html``)."""
    template = _environment().from_string(
        '{% from "blocks.html" import render %}{% for b in blocks %}{{ render(b) }}\n{% endfor %}'
    )
    return template.render(blocks=[b for b in blocks if b])


def _script_json(value: Any) -> Any:
    """``value`` as JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as \\u escapes, NaN as null."""
    from markupsafe import Markup

    text = json.dumps(_json_safe(value), separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    return value


def render_report(
    *,
    store: str | Path,
    model_dir: str | Path,
    explain_dir: str | Path,
    title: str = "multimodal report",
    top_n: int = 10,
) -> str:
    """Read the run's outputs and return the report as one self-contained HTML document (a string)."""
    if top_n < 1:
        raise MultimodalError(f"top_n must be at least 1, got {top_n}")
    inp = _load(Path(store), Path(model_dir), Path(explain_dir))
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    matrices = _read_attribution_matrices(inp)
    sections = {
        "cohort": _cohort_section(inp),
        "exclusions": _exclusions_section(inp),
        "metrics": _metrics_section(inp),
        "risk-groups": _risk_group_section(inp),
        "features": _features_section(inp, top_n),
        "direction": _direction_section(inp, matrices, top_n),
        "value": _value_section(inp),
        "contributions": _contributions_section(inp),
        "provenance": _provenance_section(inp, generated),
    }
    sections["patient"], patient_data = _patient_section(inp, matrices, top_n)
    if isinstance(inp.metrics.get("benefit"), dict):
        sections["benefit"] = _benefit_blocks(inp)
    shown = [
        {"key": key, "heading": heading, "blocks": [b for b in sections[key] if b]}
        for key, heading in SECTIONS
        if key in sections
    ]
    return (
        _environment()
        .get_template("report.html")
        .render(
            title=title,
            version=__version__,
            inputs=[("cohort store", str(store)), ("model", str(model_dir)), ("attributions", str(explain_dir))],
            sections=shown,
            warnings=inp.warnings,
            generated=generated,
            patient_data=_script_json(patient_data) if patient_data else None,
        )
    )


def build_report(
    *,
    store: str | Path,
    model_dir: str | Path,
    explain_dir: str | Path,
    out: str | Path,
    title: str = "multimodal report",
    top_n: int = 10,
) -> Path:
    """Write the HTML report of a run to ``out`` atomically and return ``out``.

    ``store`` is the cohort store, ``model_dir`` the output of cross-validation and ``explain_dir``
    that of the attributions; ``top_n`` features are listed per modality. Raises
    :class:`~multimodal.errors.MultimodalError` naming the file when an input is missing or unreadable.
    """
    document = render_report(store=store, model_dir=model_dir, explain_dir=explain_dir, title=title, top_n=top_n)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(document, encoding="utf-8")
    log.info("wrote report %s (%d bytes)", out, out.stat().st_size)
    return out
