"""Tests of the HTML report: every number traced back to the run's outputs, offline, well-formed, errors."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from multimodal.errors import MultimodalError
from multimodal.report import build_report

TOP_N = 5
TITLE = "tiny <cohort> & co"
SECTION_IDS = (
    "cohort",
    "exclusions",
    "metrics",
    "risk-groups",
    "features",
    "direction",
    "value",
    "contributions",
    "patient",
    "provenance",
)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_CACHE: dict[tuple[str, ...], tuple[Path, str, _Page]] = {}


class _Page(HTMLParser):
    """Checks that every element is closed in order; collects tables and definition lists by id, and URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: Counter = Counter()
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.dls: dict[str, dict[str, str]] = {}
        self._rows: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._text: list[str] | None = None
        self._dl: dict[str, str] | None = None
        self._dt = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        self.urls += [a[k] or "" for k in ("src", "href") if k in a]
        if "id" in a:
            self.ids.append(a["id"] or "")
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self._rows = self.tables.setdefault(a.get("id") or f"anonymous-{len(self.tables)}", [])
        elif tag == "tr" and self._rows is not None:
            self._row = []
        elif tag in ("td", "th", "dt", "dd"):
            self._text = []
        elif tag == "dl":
            self._dl = self.dls.setdefault(a.get("id") or f"anonymous-{len(self.dls)}", {})

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> while <{self.stack[-1] if self.stack else 'nothing'}> is open")
            if tag in self.stack:
                del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag) :]
            return
        self.stack.pop()
        text = "".join(self._text or []).strip()
        if tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "tr" and self._rows is not None and self._row is not None:
            self._rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._rows = None
        elif tag == "dt":
            self._dt = text
        elif tag == "dd" and self._dl is not None:
            self._dl[self._dt] = text
        elif tag == "dl":
            self._dl = None
        if tag in ("td", "th", "dt", "dd"):
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def body_rows(self, table_id: str) -> list[list[str]]:
        """The rows of a table without its header row."""
        return self.tables[table_id][1:]


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _build(tmp: Path, store: Path, model_dir: Path, explain_dir: Path, **kwargs) -> tuple[Path, str, _Page]:
    out = build_report(store=store, model_dir=model_dir, explain_dir=explain_dir, out=tmp / "report.html", **kwargs)
    text = out.read_text(encoding="utf-8")
    return out, text, _parse(text)


@pytest.fixture
def report(tiny_run, tmp_path_factory) -> tuple[Path, str, _Page]:
    """The report of the tiny run, built once per run."""
    key = tuple(str(tiny_run[k]) for k in ("store", "model_dir", "explain_dir"))
    if key not in _CACHE:
        _CACHE[key] = _build(
            tmp_path_factory.mktemp("report"),
            tiny_run["store"],
            tiny_run["model_dir"],
            tiny_run["explain_dir"],
            title=TITLE,
            top_n=TOP_N,
        )
    return _CACHE[key]


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else format(float(value), spec)


def _copy_model(src: Path, dst: Path) -> Path:
    """The model directory's top-level files (fold checkpoints are not needed by the report)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    return dst


def _logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Two-group log-rank test written out: (chi-square, p)."""
    o_minus_e = var = 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d, d1 = ((time == t) & event).sum(), ((time == t) & event & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    chisq = o_minus_e**2 / var
    return chisq, float(scipy.stats.chi2.sf(chisq, 1))


# --------------------------------------------------------------------------------------------------


def test_report_is_well_formed_with_every_section(report) -> None:
    out, text, page = report
    assert out.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert page.errors == [] and page.stack == []
    for tag in ("html", "head", "body", "main", "style"):
        assert page.tags[tag] == 1, tag
    head = text.split("<head>", 1)[1].split("</head>", 1)[0]
    assert head.count("<title>") == 1  # the others are SVG dot tooltips
    assert page.tags["section"] == len(SECTION_IDS)
    assert set(SECTION_IDS) <= set(page.ids)
    assert len(page.ids) == len(set(page.ids)), "duplicate element ids"
    assert f"<title>{html.escape(TITLE)}</title>" in text
    images = [u for u in page.urls if u.startswith("data:")]
    assert page.tags["img"] == len(images) >= 3  # KM curves, one chart per modality, contributions
    for uri in images:
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_no_external_resources(report) -> None:
    _, text, page = report
    for url in page.urls:
        assert url.startswith(("#", "data:image/png;base64,")), url
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", text, re.IGNORECASE)
    assert page.tags["link"] == 0 and page.tags["iframe"] == 0
    # two inline scripts only: the per-patient data (JSON) and the code that draws the view
    assert page.tags["script"] == 2 and text.count("<script") == 2
    assert re.findall(r"<script[^>]*>", text) == ['<script type="application/json" id="patient-data">', "<script>"]


def test_metrics_match_metrics_json(report, tiny_run) -> None:
    _, _, page = report
    metrics = json.loads((tiny_run["model_dir"] / "metrics.json").read_text())
    rows = page.body_rows("fold-metrics")
    assert len(rows) == len(metrics["folds"]) + 2
    for row, fold in zip(rows, metrics["folds"], strict=False):
        assert row == [
            str(fold["fold"]),
            str(fold["n_train"]),
            str(fold["n_test"]),
            str(fold["n_events"]),
            _fmt(fold["c_index"]),
            _fmt(fold["auroc"]),
        ]
    mean_row, pooled_row = rows[-2], rows[-1]
    assert mean_row[0] == "mean ± SD"
    assert mean_row[4] == f"{_fmt(metrics['mean']['c_index'])} ± {_fmt(metrics['sd']['c_index'])}"
    pooled = metrics["pooled_out_of_fold"]
    assert pooled_row == [
        "pooled out-of-fold",
        "",
        str(pooled["n_test"]),
        str(pooled["n_events"]),
        _fmt(pooled["c_index"]),
        _fmt(pooled["auroc"]),
    ]
    patients = page.dls["metrics-patients"]
    assert patients["patients scored out-of-fold"] == str(metrics["n_patients_scored"])
    assert patients["patients in model run"] == str(metrics["n_patients"])


def test_cohort_counts_match_store(report, tiny_run) -> None:
    from multimodal.store import read_cohort_store

    _, _, page = report
    obs = read_cohort_store(tiny_run["store"]).obs
    outcomes = page.dls["cohort-outcomes"]
    assert outcomes["patients"] == str(len(obs))
    has_outcome = obs["time"].notna() & obs["event"].notna()
    events = int(obs.loc[has_outcome, "event"].sum())  # an event counts only with a time
    assert outcomes["events"] == str(events)
    assert outcomes["censored"] == str(int(has_outcome.sum()) - events)
    assert outcomes["responders"].startswith(
        f"{int((obs['response'] == 1).sum())} of {int(obs['response'].notna().sum())}"
    )
    modalities = {row[0]: row for row in page.body_rows("cohort-modalities")}
    has_cols = [c for c in obs.columns if c.startswith("has_")]
    assert set(modalities) == {c.removeprefix("has_") for c in has_cols}
    for col in has_cols:
        n = int(obs[col].sum())
        assert modalities[col.removeprefix("has_")][1:3] == [str(n), f"{100 * n / len(obs):.1f}%"]
    sites = {row[0]: int(row[1]) for row in page.body_rows("cohort-sites")}
    assert sites == {str(k): int(v) for k, v in obs["site"].value_counts().items() if v}


def test_every_exclusion_count_is_listed_zeros_included(report, tiny_run) -> None:
    from multimodal.store import read_cohort_store

    _, _, page = report
    exclusions = read_cohort_store(tiny_run["store"]).uns["provenance"]["exclusions"]
    expected = sorted((g, r, str(int(n))) for g, counts in exclusions.items() for r, n in counts.items())
    shown = sorted(tuple(row) for row in page.body_rows("exclusions-table"))
    assert shown == expected
    assert any(n == "0" for _, _, n in expected), "the tiny run should record at least one zero count"


def test_risk_groups_split_each_fold_at_its_median(report, tiny_run) -> None:
    _, _, page = report
    pred = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t", dtype={"patient_id": str})
    pred = pred[np.isfinite(pred["risk"])].reset_index(drop=True)
    high = np.zeros(len(pred), dtype=bool)
    for _, idx in pred.groupby("fold").groups.items():
        risk = pred.loc[idx, "risk"].to_numpy()
        high[idx] = risk > np.median(risk)
    rows = {row[0]: row for row in page.body_rows("risk-groups-table")}
    n_high, n_low = int(rows["high risk"][1]), int(rows["low risk"][1])
    assert (n_high, n_low) == (int(high.sum()), int((~high).sum()))
    metrics = json.loads((tiny_run["model_dir"] / "metrics.json").read_text())
    assert n_high + n_low == metrics["n_patients_scored"] == int(rows["total"][1])
    assert n_high > 0 and n_low > 0

    ok = (pred["time"].notna() & pred["event"].notna()).to_numpy()
    time, event, group = pred["time"].to_numpy(float)[ok], pred["event"].to_numpy(float)[ok] > 0, high[ok]
    assert int(rows["high risk"][3]) == int(event[group].sum())
    assert int(rows["low risk"][3]) == int(event[~group].sum())
    chisq, p = _logrank(time, event, group)
    logrank = page.dls["logrank"]
    assert float(logrank["log-rank chi-square"]) == pytest.approx(chisq, abs=0.006)
    assert float(logrank["log-rank p"]) == pytest.approx(p, rel=6e-3)
    splits = page.body_rows("risk-group-splits")
    assert sum(int(r[2]) for r in splits) == n_high and sum(int(r[3]) for r in splits) == n_low


def test_top_features_per_modality_match_feature_importance(report, tiny_run) -> None:
    _, _, page = report
    imp = pd.read_csv(tiny_run["explain_dir"] / "feature_importance.tsv", sep="\t", keep_default_na=False)
    assert imp["modality"].nunique() >= 3
    for modality, group in imp.groupby("modality"):
        group = group.assign(rank=group["rank"].astype(int)).sort_values("rank")
        rows = page.body_rows(f"top-features-{modality}")
        assert len(rows) == min(TOP_N, len(group))
        first = group.iloc[0]
        assert rows[0][:5] == [
            "1",
            first["feature"],
            first["gene_symbol"],
            _fmt(float(first["mean_abs_attribution"]), ".3g"),
            _fmt(float(first["mean_attribution"]), ".3g"),
        ]
        assert [r[1] for r in rows] == group["feature"].head(TOP_N).tolist()


def test_modality_contributions_and_attribution_method(report, tiny_run) -> None:
    import mudata as md

    from multimodal.store import configure_zarr_v3

    _, _, page = report
    contrib = pd.read_csv(tiny_run["explain_dir"] / "modality_contributions.tsv", sep="\t", index_col="patient_id")
    rows = {row[0]: row for row in page.body_rows("modality-contributions")}
    not_modalities = {"fold", "risk", "convergence_delta", "risk_percentile", "risk_group", "response_prob"}
    modalities = [c for c in contrib.columns if c not in not_modalities and not c.startswith("group_")]
    assert set(rows) == set(modalities)
    for name in modalities:
        values = contrib[name].dropna()
        assert rows[name][1:3] == [str(len(values)), _fmt(values.abs().mean(), ".3g")]
    configure_zarr_v3()
    record = md.read_zarr(str(tiny_run["explain_dir"] / "attributions.zarr")).uns["attribution"]
    method = page.dls["attribution-method"]
    assert method["method"] == record["method"]
    assert method["mean |convergence delta|"] == _fmt(record["convergence_delta_mean_abs"], ".2e")
    assert method["max |convergence delta|"] == _fmt(record["convergence_delta_max_abs"], ".2e")


def test_provenance_section(report, tiny_run) -> None:
    from multimodal.store import read_cohort_store

    _, _, page = report
    prov = read_cohort_store(tiny_run["store"]).uns["provenance"]
    summary = page.dls["provenance-summary"]
    assert summary["input files fingerprinted (sha256)"] == str(len(prov["inputs"])) != "0"
    assert summary["command"] == prov["command"]
    assert summary["store created"] == prov["created"]
    versions = dict(page.body_rows("provenance-versions"))
    assert versions == {k: str(v) for k, v in prov["versions"].items()}


# --------------------------------------------------------------------------------------------------
# Tampered inputs


def test_strings_from_data_are_escaped_and_output_replaced(tiny_run, tmp_path) -> None:
    explain = tmp_path / "explain"
    shutil.copytree(tiny_run["explain_dir"], explain)
    imp = pd.read_csv(explain / "feature_importance.tsv", sep="\t", keep_default_na=False, dtype=str)
    evil = '<script>alert("x")</script>'
    row = imp.index[(imp["modality"] == imp["modality"].iloc[0]) & (imp["rank"] == "1")][0]
    imp.loc[row, ["feature", "gene_symbol"]] = [evil, "<b>&amp;"]
    imp.to_csv(explain / "feature_importance.tsv", sep="\t", index=False)
    (tmp_path / "report.html").write_text("old report")

    out, text, page = _build(tmp_path, tiny_run["store"], tiny_run["model_dir"], explain, top_n=TOP_N)
    assert text.count("<script") == 2 and "<b>" not in text  # the report's own two inline scripts
    assert evil not in text and "&lt;script&gt;alert(" in text
    first = page.body_rows(f"top-features-{imp.loc[row, 'modality']}")[0]
    assert first[1:3] == [evil, "<b>&amp;"]
    assert page.errors == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.html")]


def test_nan_metrics_render_as_na(tiny_run, tmp_path) -> None:
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    metrics = json.loads((model / "metrics.json").read_text())
    metrics["folds"][0]["auroc"] = float("nan")
    metrics["pooled_out_of_fold"]["c_index"] = float("nan")
    (model / "metrics.json").write_text(json.dumps(metrics))  # writes the JSON token NaN
    _, _, page = _build(tmp_path, tiny_run["store"], model, tiny_run["explain_dir"])
    rows = page.body_rows("fold-metrics")
    assert rows[0][5] == "n/a" and rows[0][4] == _fmt(metrics["folds"][0]["c_index"])
    assert rows[-1][4] == "n/a" and rows[-1][5] == _fmt(metrics["pooled_out_of_fold"]["auroc"])


@pytest.mark.parametrize(
    ("where", "name", "message"),
    [
        ("model", "metrics.json", "missing"),
        ("model", "predictions.tsv", "missing"),
        ("explain", "feature_importance.tsv", "missing"),
        ("explain", "modality_contributions.tsv", "missing"),
        ("explain", "attributions.zarr", "missing"),
    ],
)
def test_missing_input_names_the_path(tiny_run, tmp_path, where, name, message) -> None:
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    explain = tmp_path / "explain"
    explain.mkdir()
    for f in tiny_run["explain_dir"].iterdir():
        if f.is_file():
            shutil.copy2(f, explain / f.name)
    if name != "attributions.zarr":
        shutil.copytree(tiny_run["explain_dir"] / "attributions.zarr", explain / "attributions.zarr")
    missing = (model if where == "model" else explain) / name
    if missing.is_dir():
        shutil.rmtree(missing)
    elif missing.exists():
        missing.unlink()
    out = tmp_path / "out" / "report.html"
    with pytest.raises(MultimodalError, match=re.escape(f"{missing}: {message}")):
        build_report(store=tiny_run["store"], model_dir=model, explain_dir=explain, out=out)
    assert not out.exists()


def test_unreadable_inputs_name_the_path(tiny_run, tmp_path) -> None:
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    (model / "metrics.json").write_text("{not json")
    with pytest.raises(MultimodalError, match=re.escape(f"{model / 'metrics.json'}: cannot read as JSON")):
        build_report(
            store=tiny_run["store"], model_dir=model, explain_dir=tiny_run["explain_dir"], out=tmp_path / "r.html"
        )
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model2")
    pred = (model / "predictions.tsv").read_text().splitlines()
    fields = pred[1].split("\t")
    fields[2] = "high"  # the risk column
    (model / "predictions.tsv").write_text("\n".join([pred[0], "\t".join(fields), *pred[2:]]) + "\n")
    with pytest.raises(MultimodalError, match=re.escape(f"{model / 'predictions.tsv'}: line 2: column risk")):
        build_report(
            store=tiny_run["store"], model_dir=model, explain_dir=tiny_run["explain_dir"], out=tmp_path / "r.html"
        )
    with pytest.raises(MultimodalError, match=re.escape(f"{tmp_path / 'nowhere.zarr'}: ")):
        build_report(
            store=tmp_path / "nowhere.zarr",
            model_dir=tiny_run["model_dir"],
            explain_dir=tiny_run["explain_dir"],
            out=tmp_path / "r.html",
        )


def test_report_counts_features_left_out_per_fold(tiny_run, tmp_path):
    import json as _json

    from multimodal.report.html import build_report

    out = build_report(
        store=tiny_run["store"],
        model_dir=tiny_run["model_dir"],
        explain_dir=tiny_run["explain_dir"],
        out=tmp_path / "r.html",
    )
    html = out.read_text()
    page = _parse(html)
    assert 'id="feature-selection"' in html
    metrics = _json.loads((tiny_run["model_dir"] / "metrics.json").read_text())
    counts = metrics["folds"][0]["features"]["expression"]
    assert (
        counts["features"]
        == counts["constant_or_sparse"] + counts["redundant"] + counts["not_screened_in"] + counts["used"]
    )
    assert counts["used"] == 20  # max_features for expression in the fixture
    row = next(r for r in page.body_rows("feature-selection") if r[:2] == ["0", "expression"])
    assert row[2] == str(counts["features"])


def test_report_shows_the_penalised_cox_reference(tiny_run, tmp_path):
    import json as _json

    from multimodal.report.html import build_report

    html = build_report(
        store=tiny_run["store"],
        model_dir=tiny_run["model_dir"],
        explain_dir=tiny_run["explain_dir"],
        out=tmp_path / "r.html",
    ).read_text()
    cox = _json.loads((tiny_run["model_dir"] / "metrics.json").read_text())["baseline"]["penalised_cox"]
    assert 'id="baseline-comparison"' in html
    assert f"{cox['pooled_c_index']:.3f}" in html.split('id="baseline-comparison"')[1].split("</table>")[0]


def test_parts_from_another_run_are_refused_and_a_moved_model_is_not(tiny_run, tmp_path) -> None:
    """Store, model and attributions are matched by fingerprint, not by path."""
    moved = _copy_model(tiny_run["model_dir"], tmp_path / "moved")
    _, text, _ = _build(tmp_path, tiny_run["store"], moved, tiny_run["explain_dir"])
    assert "computed from model directory" not in text and "another model run" not in text
    other = _copy_model(tiny_run["model_dir"], tmp_path / "other")
    predictions = pd.read_csv(other / "predictions.tsv", sep="\t")
    predictions["risk"] = predictions["risk"] * 1.01  # another training run of the same store
    predictions.to_csv(other / "predictions.tsv", sep="\t", index=False)
    with pytest.raises(MultimodalError, match="attributions were computed from another model run"):
        build_report(
            store=tiny_run["store"], model_dir=other, explain_dir=tiny_run["explain_dir"], out=tmp_path / "r.html"
        )
    params = json.loads((moved / "params.json").read_text())
    params["store_fingerprint"] = "0123456789abcdef"
    (moved / "params.json").write_text(json.dumps(params))
    with pytest.raises(MultimodalError, match="the model was trained on another cohort store"):
        build_report(
            store=tiny_run["store"], model_dir=moved, explain_dir=tiny_run["explain_dir"], out=tmp_path / "r.html"
        )
    assert not (tmp_path / "r.html").exists()


def test_a_fold_with_few_events_is_flagged(tiny_run, tmp_path) -> None:
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    metrics = json.loads((model / "metrics.json").read_text())
    metrics["folds"][1]["n_events"] = 3
    (model / "metrics.json").write_text(json.dumps(metrics))
    _, text, _ = _build(tmp_path, tiny_run["store"], model, tiny_run["explain_dir"])
    assert "Few events behind a C-index (fold 1: 3;" in text


def test_features_no_model_used_are_not_listed_among_the_top(tiny_run, tmp_path) -> None:
    imp = pd.read_csv(tiny_run["explain_dir"] / "feature_importance.tsv", sep="\t")
    assert (imp["mean_abs_attribution"] == 0).any()  # unused features exist (screened out or redundant)
    _, _, page = _build(tmp_path, tiny_run["store"], tiny_run["model_dir"], tiny_run["explain_dir"])
    for name in imp["modality"].unique():
        rows = page.body_rows(f"top-features-{name}")
        assert rows and all(float(r[3]) > 0 for r in rows)


def test_event_counts_of_metrics_and_store_that_disagree_are_flagged(tiny_run, tmp_path) -> None:
    """A model run that counted events without a survival time (133 where the store has 122) is named."""
    from multimodal.store import outcome_counts, read_cohort_store

    obs = read_cohort_store(tiny_run["store"]).obs
    counts = outcome_counts(obs["time"], obs["event"])
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["n_events"] == counts["n_events"]
    metrics["n_events"] = counts["n_events"] + 11
    (model / "metrics.json").write_text(json.dumps(metrics))
    _, text, _ = _build(tmp_path, tiny_run["store"], model, tiny_run["explain_dir"])
    warning = f"metrics.json records {counts['n_events'] + 11} events but the cohort store has {counts['n_events']}"
    assert warning in text.split('id="warnings"')[1].split("</div>")[0]


# --------------------------------------------------------------------------------------------------
# Sections of issue 11


def _patient_data(text: str) -> dict:
    raw = text.split('<script type="application/json" id="patient-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(raw)


def test_report_is_rendered_from_jinja_templates_shipped_with_the_package() -> None:
    from importlib import resources

    templates = resources.files("multimodal.report").joinpath("templates")
    names = {p.name for p in templates.iterdir()}
    assert {"report.html", "blocks.html", "patient_view.js"} <= names
    source = Path(__file__).resolve().parents[1] / "multimodal/report/html.py"
    assert "<table" not in source.read_text() and "<section" not in source.read_text()


def test_embedded_json_cannot_close_its_script_element() -> None:
    from multimodal.report.html import _script_json

    text = str(_script_json({"feature": "</script><script>alert(1)</script>", "x": float("nan")}))
    assert "</script" not in text.lower() and "<!--" not in text
    assert json.loads(text) == {"feature": "</script><script>alert(1)</script>", "x": None}


def test_missingness_pattern_counts_each_patient_once(report, tiny_run) -> None:
    from multimodal.store import read_cohort_store

    _, _, page = report
    mdata = read_cohort_store(tiny_run["store"])
    names = page.tables["missingness-patterns"][0][:-2]
    has = pd.DataFrame({m: mdata.obs.index.isin(mdata.mod[m].obs_names) for m in names}, index=mdata.obs.index)
    expected = {tuple("yes" if v else "–" for v in k): int(n) for k, n in has.value_counts().items()}
    shown = {tuple(r[:-2]): int(r[-2]) for r in page.body_rows("missingness-patterns")}
    assert shown == expected and sum(shown.values()) == len(mdata.obs)
    assert len(shown) >= 2  # the tiny cohort has patients without imaging or RNA


def test_km_numbers_at_risk_and_hazard_ratio(report, tiny_run) -> None:
    _, text, page = report
    pred = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    high = (pred["risk"] > pred.groupby("fold")["risk"].transform("median")).to_numpy()
    times = [float(t) for t in page.tables["numbers-at-risk"][0][1:]]
    rows = {r[0]: [int(x) for x in r[1:]] for r in page.body_rows("numbers-at-risk")}
    for name, sel in (("high risk", high), ("low risk", ~high)):
        assert rows[name] == [int((pred["time"][sel] >= t).sum()) for t in times]
    logrank = page.dls["logrank"]
    hr = float(logrank["hazard ratio, high against low risk"])
    low, high_ci = (float(x) for x in logrank["hazard ratio 95% CI"].split(" to "))
    assert low < hr < high_ci
    assert hr > 1  # the tiny run's model ranks better than chance (pooled C > 0.5): high risk dies sooner


def test_calibration_uses_each_folds_breslow_baseline_hazard(report, tiny_run) -> None:
    _, _, page = report
    pred = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    folds = pd.read_csv(tiny_run["model_dir"] / "folds.tsv", sep="\t")
    for k in sorted(pred["fold"].unique()):
        h0 = pd.read_csv(tiny_run["model_dir"] / f"fold_{k}" / "baseline_hazard.tsv", sep="\t")
        assert (np.diff(h0["cumulative_hazard"]) > 0).all() and (h0["cumulative_hazard"] > 0).all()
        train = pred[pred["patient_id"].isin(folds.loc[folds["fold"] != k, "patient_id"])]
        assert h0["time"].tolist() == sorted(train.loc[train["event"] > 0, "time"].unique().tolist())
    rows = page.body_rows("calibration-table")
    assert sum(int(r[1]) for r in rows) == int(pred["time"].notna().sum())
    predicted = [float(r[3]) for r in rows]
    assert predicted == sorted(predicted) and all(0 < p < 1 for p in predicted)  # group 1: lowest survival
    for r in rows:
        low, high = (float(x) for x in r[5].split(" to "))
        assert low <= float(r[4]) <= high


def test_direction_beeswarm_dots_carry_patient_and_value(report, tiny_run) -> None:
    import anndata as ad

    _, text, page = report
    imp = pd.read_csv(tiny_run["explain_dir"] / "feature_importance.tsv", sep="\t")
    variants = ad.read_zarr(str(tiny_run["explain_dir"] / "attributions.zarr" / "mod" / "variants"))
    top = imp[imp["modality"] == "variants"].sort_values("rank")["feature"].iloc[0]
    svg = text.split('id="swarm-variants"', 1)[1].split("</svg>", 1)[0]
    used = int((imp.loc[imp["modality"] == "variants", "mean_abs_attribution"] > 0).sum())
    assert svg.count("<circle") == variants.n_obs * min(TOP_N, used)
    j = variants.var_names.get_loc(top)
    pid = variants.obs_names[0]
    value = float(np.asarray(variants.layers["value"][0, j]))
    assert html.escape(f"{pid}: {top} = {value:.4g}, attribution {float(variants.X[0, j]):.3g}") in svg
    rows = {r[0]: r for r in page.body_rows("direction-table-variants")}
    assert rows[top][1] == _fmt(imp.set_index(["modality", "feature"]).loc[("variants", top), "direction"], ".3g")


def test_modality_value_table_matches_explain_output(report, tiny_run) -> None:
    _, _, page = report
    value = pd.read_csv(tiny_run["explain_dir"] / "modality_value.tsv", sep="\t").set_index("modality")
    rows = {r[0]: r for r in page.body_rows("modality-value")}
    assert set(rows) == set(value.index)
    for name, r in rows.items():
        assert r[3] == _fmt(value.loc[name, "drop"])
        assert r[4] == f"{_fmt(value.loc[name, 'drop_ci_low'])} to {_fmt(value.loc[name, 'drop_ci_high'])}"
    assert "modality-value-figure" in page.ids


def test_per_patient_data_matches_attributions(report, tiny_run) -> None:
    import anndata as ad

    _, text, page = report
    data = _patient_data(text)
    contrib = pd.read_csv(tiny_run["explain_dir"] / "modality_contributions.tsv", sep="\t", index_col="patient_id")
    assert sorted(data["patients"]) == sorted(contrib.index)
    pid = sorted(contrib.index)[3]
    patient = data["patients"][pid]
    for m in data["modalities"]:
        expected = contrib.loc[pid, m]
        got = patient["contrib"][m]
        assert (got is None and np.isnan(expected)) or got == pytest.approx(expected)
    everything = []
    for path in sorted(p for p in (tiny_run["explain_dir"] / "attributions.zarr" / "mod").iterdir() if p.is_dir()):
        a = ad.read_zarr(str(path))
        if pid in a.obs_names:
            i = a.obs_names.get_loc(pid)
            x, v = np.asarray(a.X[i]).ravel(), np.asarray(a.layers["value"][i]).ravel()
            everything += [(path.name, f, float(v[j]), float(x[j])) for j, f in enumerate(a.var_names) if x[j] != 0]
    best = sorted(everything, key=lambda e: -abs(e[3]))[:TOP_N]
    assert [t[:2] for t in patient["top"]] == [list(b[:2]) for b in best]
    assert [t[3] for t in patient["top"]] == pytest.approx([b[3] for b in best])
    assert patient["rest"] == pytest.approx(sum(e[3] for e in everything) - sum(b[3] for b in best), abs=1e-6)
    assert '<option value="' + pid + '">' in text


def test_tasks_and_search_from_metrics_are_rendered(tiny_run, tmp_path) -> None:
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")
    metrics = json.loads((model / "metrics.json").read_text())
    metrics["tasks"] = {
        "fatigue": {
            "kind": "binary",
            "pooled": {"auroc": {"value": 0.71, "ci95": [0.6, 0.8]}, "n": 60},
            "folds": [{"fold": 0, "auroc": 0.7, "n": 20}, {"fold": 1, "auroc": 0.72, "n": 20}],
        }
    }
    from multimodal.model.search import FoldSearch, SearchSpec, search_summary

    spec = SearchSpec(enabled=True, space={"dropout": [0.1, 0.3], "learning_rate": [0.001, 0.01]})
    chosen = [({}, 0, 100, 0.61), ({"dropout": 0.3, "learning_rate": 0.01}, 3, 40, 0.6349)]
    records = [(0, k, FoldSearch(c, i, e, inner, rows=[])) for k, (c, i, e, inner) in enumerate(chosen)]
    metrics["search"] = search_summary(spec, records)  # as cross_validate writes it
    (model / "metrics.json").write_text(json.dumps(metrics))
    _, _, page = _build(tmp_path, tiny_run["store"], model, tiny_run["explain_dir"])
    assert page.tables["task-fatigue"][0] == ["fold", "auroc", "n"]
    assert page.body_rows("task-fatigue")[-1] == ["pooled", "0.710 (0.600 to 0.800)", "60"]
    assert page.tables["search-choices"][0] == ["fold", "chosen settings", "epochs", "mean inner C"]
    assert page.body_rows("search-choices") == [
        ["0", "the run's own settings", "100", "0.610"],
        ["1", '{"dropout": 0.3, "learning_rate": 0.01}', "40", "0.635"],
    ]


def test_attributions_without_the_new_files_still_render(tiny_run, tmp_path) -> None:
    """Older explain outputs (no modality_value.tsv, trust.json, value layer; no baseline hazards): the
    sections say what is missing instead of failing."""
    model = _copy_model(tiny_run["model_dir"], tmp_path / "model")  # top-level files only: no fold_<k>/
    explain = tmp_path / "explain"
    shutil.copytree(tiny_run["explain_dir"], explain)
    (explain / "modality_value.tsv").unlink()
    (explain / "trust.json").unlink()
    for layer in (explain / "attributions.zarr" / "mod").glob("*/layers/value"):
        shutil.rmtree(layer)
    for meta in (explain / "attributions.zarr" / "mod").glob("*/layers/zarr.json"):
        shutil.rmtree(meta.parent)
    _, text, page = _build(tmp_path, tiny_run["store"], model, explain)
    assert page.errors == []
    assert "modality_value.tsv is absent" in text
    assert "Direction plots need the patients&#x27; feature values" in text
    assert "No calibration: the model directory has no fold_&lt;k&gt;/baseline_hazard.tsv" in text
    assert 'id="patient-view"' in text


def test_references_beside_the_fusion_model_with_bootstrap_cis(report, tiny_run) -> None:
    from sksurv.metrics import concordance_index_censored

    _, _, page = report
    pred = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    rows = {r[0]: r for r in page.body_rows("reference-ci")}
    assert set(rows) == {"fusion model", "penalised Cox (elastic net) reference", "clinical-only Cox reference"}
    for column, label in (("risk", "fusion model"), ("risk_clinical_cox", "clinical-only Cox reference")):
        c = concordance_index_censored(pred["event"].to_numpy() > 0, pred["time"].to_numpy(), pred[column].to_numpy())
        assert rows[label][1:3] == [str(len(pred)), _fmt(c[0])]
        low, high = (float(x) for x in rows[label][3].split(" to "))
        assert low < c[0] < high
