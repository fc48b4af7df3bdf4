"""One self-contained, offline HTML report of a cohort run: cohort, exclusions, metrics, risk groups, attributions.

The report reads three outputs of the pipeline and writes a single HTML file (inline CSS, plots as
base64 PNG, no scripts and no external URLs), atomically:

- the cohort store (``obs``, modality shapes and ``uns["provenance"]``);
- the model directory (``metrics.json``, ``predictions.tsv``, ``params.json``);
- the explain directory (``feature_importance.tsv``, ``modality_contributions.tsv``,
  ``uns["attribution"]`` of ``attributions.zarr``).

Sections: cohort summary, exclusions (every recorded count, zeros included), cross-validated
metrics, Kaplan-Meier curves of out-of-fold risk groups (high risk = risk above the median of the
patient's own fold's held-out patients), top features per modality, modality contributions with
the attribution method and its convergence, and provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
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
    ("contributions", "Modality contributions"),
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


class _Html(str):
    """A string that is already HTML: table and list helpers insert it as is instead of escaping it."""


def _esc(value: Any) -> str:
    """Escape ``value`` for HTML unless it is :class:`_Html`."""
    if isinstance(value, _Html):
        return str(value)
    return html.escape(str(value), quote=True)


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
) -> str:
    """An HTML table; every cell is escaped unless it is :class:`_Html`."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    rows = [list(r) for r in rows]
    row_classes = list(row_classes) if row_classes is not None else [None] * len(rows)
    out = [f'<table id="{_esc(table_id)}">' if table_id else "<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    out.append("<thead><tr>")
    for head, is_num in zip(headers, numeric, strict=True):
        out.append(f'<th class="num">{_esc(head)}</th>' if is_num else f"<th>{_esc(head)}</th>")
    out.append("</tr></thead>")
    out.append("<tbody>")
    for row, cls in zip(rows, row_classes, strict=True):
        out.append(f'<tr class="{_esc(cls)}">' if cls else "<tr>")
        for cell, is_num in zip(row, numeric, strict=True):
            out.append(f'<td class="num">{_esc(cell)}</td>' if is_num else f"<td>{_esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _kv(pairs: Iterable[tuple[str, Any]], *, dl_id: str | None = None) -> str:
    """A definition list of label/value pairs (values escaped unless :class:`_Html`)."""
    out = [f'<dl class="kv" id="{_esc(dl_id)}">' if dl_id else '<dl class="kv">']
    for key, value in pairs:
        out.append(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>")
    out.append("</dl>")
    return "\n".join(out)


def _figure(fig: Any, *, alt: str, caption: str) -> str:
    """Render a matplotlib figure as an inline base64 PNG inside ``<figure>``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


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
    from multimodal.store import configure_zarr_v3

    if not (path / "zarr.json").is_file():
        raise MultimodalError(f"{path}: missing (no zarr.json)")
    configure_zarr_v3()
    try:
        import zarr
        from anndata.io import read_elem

        group = zarr.open_group(str(path), mode="r")
        uns = read_elem(group["uns"]) if "uns" in group else {}
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
    mod_cols = [c for c in with_header.columns if c not in ("fold", "risk", "convergence_delta")]
    contributions = _read_tsv(
        contributions_path,
        required=(),
        numeric=["fold", "risk", "convergence_delta", *mod_cols],
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


def _group_table(obs: pd.DataFrame, column: str, *, table_id: str, label: str) -> str:
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


def _cohort_section(inp: _Inputs) -> str:
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
        f'<p class="note">Times are in {_esc(inp.time_unit)}.</p>'
        if inp.time_unit
        else '<p class="note">Times are in the unit of the clinical table.</p>',
    ]
    rows = []
    for name in _modalities(inp):
        has = obs[f"has_{name}"].fillna(False).astype(bool)
        n_features = inp.mod_shapes.get(name, (0, float("nan")))[1]
        rows.append([name, str(int(has.sum())), _pct(has.sum(), n), _count(n_features)])
    parts.append("<h3>Patients per modality</h3>")
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
            parts.append(f"<h3>Patients per {label}</h3>")
            parts.append(_group_table(obs, column, table_id=table_id, label=label))
    return "\n".join(parts)


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


def _exclusions_section(inp: _Inputs) -> str:
    exclusions = inp.provenance.get("exclusions")
    if not isinstance(exclusions, dict) or not exclusions:
        inp.warn(f"{inp.store}: provenance records no exclusions")
        return '<p class="warnings">The cohort store records no exclusion counts.</p>'
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
            rows.append([group, _Html(f"<code>{_esc(reason)}</code>"), text])
            classes.append("zero" if text == "0" else None)
    return _table(
        ["group", "reason", "count"],
        rows,
        numeric=[False, False, True],
        table_id="exclusions-table",
        caption="Every count recorded at ingest, zeros included. Counts name what they count "
        "(patients, records, samples or genes).",
        row_classes=classes,
    )


#: Below this many events in a held-out fold its C-index is flagged as unstable in the report.
FEW_EVENTS = 10


def _n_test(fold: dict) -> str:
    """Held-out patients, with those that have a survival outcome (the C-index's) when fewer."""
    n, with_outcome = fold.get("n_test"), fold.get("n_test_with_outcome")
    if with_outcome is None or _count(with_outcome) == _count(n):
        return _count(n)
    return f"{_count(n)} ({_count(with_outcome)} with outcome)"


def _metrics_section(inp: _Inputs) -> str:
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
            f'<p class="warnings">Few events behind a C-index ({listed}; fewer than {FEW_EVENTS}): such a '
            "fold's value can swing widely by chance. Read the pooled value and the spread, not one fold.</p>"
        )
    notes = [str(n) for n in (m.get("notes") or [])]
    if notes:
        items = "\n".join(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append(
            '<div class="warnings" id="model-notes"><strong>Adapted to this cohort</strong> (recorded in '
            f"metrics.json)\n<ul>\n{items}\n</ul>\n</div>"
        )
    parts.append(_baseline_block(m))
    parts.append(_evaluation_block(m))
    parts.append(_feature_selection_table(m))
    parts.append(_params_block(inp))
    return "\n".join(parts)


def _baseline_block(metrics: dict) -> str:
    """The penalised Cox reference fitted on the same folds and features, beside the fusion model."""
    cox = (metrics.get("baseline") or {}).get("penalised_cox")
    if not cox:
        return ""
    if cox.get("skipped"):
        return (
            '<p class="warnings" id="baseline-skipped">The penalised Cox reference was not fitted: '
            f"{_esc(cox['skipped'])}.</p>"
        )
    skipped = cox.get("skipped_folds") or {}
    skipped_note = (
        '<p class="warnings" id="baseline-skipped">The penalised Cox reference was skipped in '
        + "; ".join(f"fold {_esc(k)} ({_esc(v)})" for k, v in skipped.items())
        + "; its values are over the other folds.</p>"
        if isinstance(skipped, dict) and skipped
        else ""
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
    return table + ("\n" + skipped_note if skipped_note else "")


def _with_ci(entry: Any) -> str:
    """``0.712 (0.650-0.770)``: a metric and its bootstrap 95% CI from metrics.json; n/a where undefined."""
    if not isinstance(entry, dict):
        return "n/a"
    ci = entry.get("ci95")
    interval = f" ({_num(ci[0])} to {_num(ci[1])})" if isinstance(ci, list) and len(ci) == 2 else ""
    return _num(entry.get("value")) + interval


def _evaluation_block(metrics: dict) -> str:
    """Harrell's and Uno's C, time-dependent AUC, integrated Brier score, AUROC and AUPRC with bootstrap 95%
    CIs per fold and pooled, and the paired bootstrap of the C-index difference against the references."""
    evaluation = metrics.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("pooled"), dict):
        return ""
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
    return "\n".join(parts)


def _feature_selection_table(metrics: dict) -> str:
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
        return ""
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


def _params_block(inp: _Inputs) -> str:
    train = inp.params.get("train")
    if not isinstance(train, dict):
        return ""
    rows = [[key, json.dumps(value, sort_keys=True, default=str)] for key, value in train.items()]
    modalities = inp.params.get("modalities")
    if modalities:
        rows.append(["modalities used", ", ".join(str(x) for x in modalities)])
    return (
        "<details><summary>Model settings (params.json)</summary>\n"
        + _table(["setting", "value"], rows, table_id="model-params")
        + "\n</details>"
    )


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


def _risk_group_section(inp: _Inputs) -> str:
    from sksurv.nonparametric import kaplan_meier_estimator

    unit = f", {inp.time_unit}" if inp.time_unit else ""

    try:
        scored = _risk_groups(inp.predictions)
    except ValueError as exc:
        raise MultimodalError(f"{inp.model_dir / 'predictions.tsv'}: {exc}") from exc
    if scored.empty:
        inp.warn(f"{inp.model_dir / 'predictions.tsv'}: no patient has a risk score")
        return '<p class="warnings">No patient has an out-of-fold risk score.</p>'
    ok, time, event = _survival_arrays(scored["time"], scored["event"])
    groups = scored["group"].to_numpy()[ok]
    fig = _new_figure(6.4, 4.2)
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
    ax.set_xlabel(f"time ({inp.time_unit})" if inp.time_unit else "time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.legend(loc="lower left", frameon=False)
    ax.set_title(f"log-rank p = {_pvalue(p)}", fontsize=10)
    rule = (
        "Each held-out patient is high risk if its predicted risk exceeds the median risk of the held-out "
        "patients of its own cross-validation fold, else low risk (ties at the median are low risk)."
    )
    caption = (
        f"Kaplan-Meier curves of the out-of-fold risk groups; ticks mark censored patients. {rule} "
        f"Log-rank test: chi-square {_num(chisq, '.2f')}, p = {_pvalue(p)}" + (f" ({note})." if note else ".")
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
            + ([("note", note)] if note else []),
            dl_id="logrank",
        ),
        "<details><summary>Per-fold split</summary>\n"
        + _table(
            ["fold", "median held-out risk", "high risk", "low risk"],
            split_rows,
            numeric=[False, True, True, True],
            table_id="risk-group-splits",
        )
        + "\n</details>",
    ]
    return "\n".join(parts)


def _benefit_section(inp: _Inputs) -> str:
    """Predicted treatment benefit (``model.treatment``): its distribution by arm received, calibration of
    benefit by tertiles, the C-for-benefit with its bootstrap CI and, where a truth was given, the AUROC for
    the true benefiters; the assumption it rests on and the sign convention are stated first."""
    benefit = inp.metrics["benefit"]
    pred = inp.predictions
    reference = str(benefit.get("reference", ""))
    parts = [
        f"<p><strong>Assumption:</strong> {_esc(benefit.get('assumption', ''))}.</p>",
        f"<p><strong>Sign:</strong> {_esc(benefit.get('sign', ''))}. Model: {_esc(benefit.get('head', ''))}; "
        f"each held-out patient is scored under every arm by the fold's model, everything but the arm as "
        f"measured.</p>",
    ]
    for level, entry in (benefit.get("by_arm") or {}).items():
        column = f"benefit_{level}"
        heading = f"{level} against {reference}"
        parts.append(f"<h3>{_esc(heading)}</h3>")
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
    parts.append(f'<p class="note">C-for-benefit: {_esc(benefit.get("c_for_benefit_method", ""))}.</p>')
    return "\n".join(parts)


def _ordered(names: Iterable[str], inp: _Inputs) -> list[str]:
    names = list(dict.fromkeys(names))
    preferred = [str(m) for m in (inp.params.get("modalities") or [])] + list(MODALITY_ORDER)
    first = [m for m in dict.fromkeys(preferred) if m in names]
    return first + sorted(m for m in names if m not in first)


def _feature_label(feature: str, gene: str, width: int = 40) -> str:
    label = f"{feature} ({gene})" if gene and gene not in feature else feature
    return label if len(label) <= width else label[: width - 1] + "…"


def _features_section(inp: _Inputs, top_n: int) -> str:
    imp = inp.importance
    if imp.empty:
        inp.warn(f"{inp.explain_dir / 'feature_importance.tsv'}: no rows")
        return '<p class="warnings">feature_importance.tsv has no rows.</p>'
    gene_col = imp["gene_symbol"] if "gene_symbol" in imp.columns else pd.Series("", index=imp.index)
    parts = [
        f'<p class="note">The {top_n} features of each modality with the largest mean |attribution| over the '
        "held-out patients who have that modality. An attribution is a feature's share of a patient's predicted "
        "log relative hazard (Integrated Gradients from the training-fold mean patient). The signed mean "
        "attribution is also shown; it is near zero for a feature that raises the risk of some patients and lowers "
        "it for others, so it is not a direction of effect. Features no fold model used (screened out, or "
        "redundant with another) have zero attribution and are not listed.</p>"
    ]
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
            for _, r in top.iterrows()
        ]
        table = _table(
            ["rank", "feature", "gene symbol", "mean |attribution|", "mean attribution"],
            rows,
            numeric=[True, False, False, True, True],
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
        parts.append(f'<h3 id="features-{_esc(_slug(name))}">{_esc(name)}</h3>')
        parts.append(f'<div class="grid">\n{table}\n{figure}\n</div>')
    return "\n".join(parts)


def _contributions_section(inp: _Inputs) -> str:
    contrib = inp.contributions
    mod_cols = _ordered([c for c in contrib.columns if c not in ("fold", "risk", "convergence_delta")], inp)
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
    parts.append("<h3>Attribution method</h3>")
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
    return "\n".join(parts)


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


def _provenance_section(inp: _Inputs, generated: str) -> str:
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
                ("command", _Html(f"<code>{_esc(prov.get('command', 'n/a'))}</code>")),
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
            "<details><summary>Input files</summary>\n"
            + _table(cols, shown[cols].astype(str).to_numpy().tolist(), table_id="provenance-inputs")
            + (f'\n<p class="note">… and {more} more, listed in the store provenance.</p>' if more else "")
            + "\n</details>"
        )
    config_json = prov.get("config_json")
    if config_json:
        try:
            pretty = json.dumps(json.loads(config_json), indent=2, sort_keys=True)
        except (TypeError, json.JSONDecodeError):
            pretty = str(config_json)
        summary = "Configuration when the cohort store was assembled (this run's model settings: model/params.json)"
        parts.append(f"<details><summary>{summary}</summary>\n<pre>{_esc(pretty)}</pre>\n</details>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Entry point


def _template() -> string.Template:
    return string.Template(resources.files("multimodal.report").joinpath("template.html").read_text(encoding="utf-8"))


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
    sections = {
        "cohort": _cohort_section(inp),
        "exclusions": _exclusions_section(inp),
        "metrics": _metrics_section(inp),
        "risk-groups": _risk_group_section(inp),
        "features": _features_section(inp, top_n),
        "contributions": _contributions_section(inp),
        "provenance": _provenance_section(inp, generated),
    }
    if isinstance(inp.metrics.get("benefit"), dict):
        sections["benefit"] = _benefit_section(inp)
    shown = [(key, heading) for key, heading in SECTIONS if key in sections]
    body = []
    if inp.warnings:
        items = "\n".join(f"<li>{_esc(w)}</li>" for w in inp.warnings)
        body.append(f'<div class="warnings" id="warnings"><strong>Checks</strong>\n<ul>\n{items}\n</ul>\n</div>')
    for key, heading in shown:
        body.append(f'<section id="{key}">\n<h2>{_esc(heading)}</h2>\n{sections[key]}\n</section>')
    toc = "\n".join(f'<li><a href="#{key}">{_esc(heading)}</a></li>' for key, heading in shown)
    subtitle = "\n".join(
        f"<p>{_esc(label)}: <code>{_esc(path)}</code></p>"
        for label, path in (("cohort store", store), ("model", model_dir), ("attributions", explain_dir))
    )
    footer = (
        f"<p>Generated {_esc(generated)} by multimodal {_esc(__version__)}. "
        "Self-contained: no scripts, no external resources.</p>"
    )
    return _template().substitute(
        title=_esc(title),
        version=_esc(__version__),
        subtitle=subtitle,
        toc=toc,
        body="\n".join(body),
        footer=footer,
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
