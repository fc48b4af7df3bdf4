"""GSE7390 breast cancer cohort through `multimodal run`: fusion C-index against the elastic-net Cox reference.

A real cohort that needs no download: scikit-survival ships GSE7390 (Desmedt et al. 2007, 198
node-negative, untreated breast cancer patients; 76 genes of the 76-gene signature as log-scale
microarray values, and age, ER status, grade and tumour size; distant metastasis-free survival,
``t.tdm`` in days and ``e.tdm``) as ``sksurv.datasets.load_breast_cancer``. This script writes, in a
scratch working directory, the files a user would hand over:

- ``samples.tsv``: the samples sheet, one patient ID per row (``GSE7390-001`` ...) and no file columns;
- ``clinical.tsv``: ID, time, event, age, er, grade, size;
- ``genes.tsv``: a patients x genes table, given as ``tables: {expression: genes.tsv}``;
- ``gse7390.yaml``: ``config/config.yaml`` with ``simulate.enabled: false``, these files,
  ``clinical_columns`` mapped, ``model.folds`` set and the rest of the model section as shipped;

then runs ``multimodal run --config gse7390.yaml`` (the CLI, as a user would) and prints, from
``model/metrics.json``: the fusion model's mean Harrell's C over folds ± SD (and pooled out-of-fold),
the elastic-net Cox reference and the clinical-only Cox reference on the same folds, the paired
bootstrap difference fusion - reference with its 95% CI, the per-fold figures and the wall time.

It exits 1 when the fusion model's mean C is below the elastic-net reference's (issue 10's
criterion: "the model's mean C-index is >= the elastic-net Cox baseline's in the same run").

Usage: python benchmarks/gse7390_benchmark.py [--folds 5] [--cores 2] [--workdir DIR] [--keep]
       [--config-override model.linear=true --config-override model.neural_weight=0.5 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE = "expression"  # the modality the genes table becomes (the shipped max_features has a budget for it)


def write_inputs(workdir: Path) -> tuple[int, int, int]:
    """The user's files: samples sheet, clinical table, genes table. Returns patients, events, genes."""
    import pandas as pd
    from sksurv.datasets import load_breast_cancer

    features, outcome = load_breast_cancer()
    ids = [f"GSE7390-{i + 1:03d}" for i in range(len(features))]
    clinical_names = ["age", "er", "grade", "size"]
    genes = features.drop(columns=clinical_names)
    pd.DataFrame({"patient_id": ids}).to_csv(workdir / "samples.tsv", sep="\t", index=False)
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "dmfs_days": outcome["t.tdm"],
            "dmfs_event": outcome["e.tdm"].astype(int),
            **{name: features[name].to_numpy() for name in clinical_names},
        }
    )
    clinical.to_csv(workdir / "clinical.tsv", sep="\t", index=False)
    genes.index = pd.Index(ids, name="patient_id")
    genes.to_csv(workdir / "genes.tsv", sep="\t", float_format="%.6g")
    return len(ids), int(outcome["e.tdm"].sum()), genes.shape[1]


def write_config(workdir: Path, *, folds: int, overrides: list[str]) -> Path:
    """The shipped config pointed at the user's files, with ``KEY=VALUE`` overrides (dotted keys, YAML values)."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config |= {
        "samples": "samples.tsv",
        "clinical": "clinical.tsv",
        "expression": None,
        "maf": None,
        "tables": {TABLE: "genes.tsv"},
        "outdir": "results/gse7390",
    }
    config["simulate"]["enabled"] = False
    config["clinical_columns"] = {
        "id_column": "patient_id",
        "time_column": "dmfs_days",
        "event_column": "dmfs_event",
        "time_unit": "days",
        "response_column": None,
        "site_column": None,
        "covariates": ["age", "er", "grade", "size"],
        "categorical": ["er", "grade"],
    }
    config["model"]["folds"] = folds
    config["report"]["title"] = "GSE7390 (scikit-survival load_breast_cancer)"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config-override {item!r}: expected KEY=VALUE, e.g. model.linear=true")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = workdir / "gse7390.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def report(metrics: dict, wall_s: float) -> int:
    """Print one line per model and the verdict; 0 when fusion mean C >= the elastic-net's, else 1."""
    baseline = metrics.get("baseline") or {}
    pooled_eval = (metrics.get("evaluation") or {}).get("pooled") or {}
    diffs = pooled_eval.get("c_index_difference") or {}
    fusion_mean = metrics["mean"]["c_index"]
    print(
        f"fusion model            mean C {fmt(fusion_mean)} ± {fmt(metrics['sd']['c_index'])} over "
        f"{metrics['n_folds_defined']['c_index']} folds "
        f"(pooled {fmt(metrics['pooled_out_of_fold']['c_index'])})"
    )
    labels = {"penalised_cox": "elastic-net Cox ref.", "clinical_cox": "clinical-only Cox ref."}
    for name, label in labels.items():
        entry = baseline.get(name)
        if not entry:
            continue
        if entry.get("skipped"):
            print(f"{label:23s} {entry['skipped']}")
            continue
        line = (
            f"{label:23s} mean C {fmt(entry.get('mean_c_index'))} ± {fmt(entry.get('sd_c_index'))} over "
            f"{entry.get('n_folds_fitted')} folds (pooled {fmt(entry.get('pooled_c_index'))})"
        )
        diff = diffs.get(name)
        if diff and diff.get("value") is not None:
            ci = diff.get("ci95") or [None, None]
            line += f"; pooled C difference fusion - ref. {diff['value']:+.3f} (95% CI {fmt(ci[0])} to {fmt(ci[1])})"
        print(line)
    print("per fold (fusion / elastic-net / clinical-only):")
    for fold in metrics["folds"]:
        print(
            f"  fold {fold['fold']}: n={fold['n_test']}, events={fold['n_events']}: {fmt(fold['c_index'])} / "
            f"{fmt((fold.get('penalised_cox') or {}).get('c_index'))} / "
            f"{fmt((fold.get('clinical_cox') or {}).get('c_index'))}"
        )
    repeats = metrics.get("repeats")
    if repeats:  # model.repeats > 1: k-fold repeated with new seeds (the lines above are the first repeat)
        per_repeat = repeats["per_repeat"]
        ours = [r["pooled_c_index"] for r in per_repeat]
        ref = [r.get("pooled_c_index_penalised_cox", float("nan")) for r in per_repeat]
        print(
            f"{repeats['n']} repeats, pooled C per repeat (fusion / elastic-net): "
            + ", ".join(f"{fmt(a)} / {fmt(b)}" for a, b in zip(ours, ref, strict=True))
            + f"; mean {fmt(sum(ours) / len(ours))} / {fmt(sum(ref) / len(ref))}"
        )
    for note in metrics.get("notes") or []:
        print(f"note: {note}")
    print(f"wall time (multimodal run, all stages) {wall_s:.1f} s")
    reference = (baseline.get("penalised_cox") or {}).get("mean_c_index")
    if reference is None or fusion_mean is None or not (math.isfinite(reference) and math.isfinite(fusion_mean)):
        print("criterion (fusion mean C >= elastic-net mean C): cannot be judged (a mean C is undefined)")
        return 1
    met = fusion_mean >= reference
    print(
        f"criterion (fusion mean C >= elastic-net mean C): {'MET' if met else 'NOT MET'} "
        f"({fmt(fusion_mean)} vs {fmt(reference)}, difference {fusion_mean - reference:+.3f})"
    )
    return 0 if met else 1


def benchmark(workdir: Path, *, folds: int, cores: int, overrides: list[str]) -> int:
    n, events, genes = write_inputs(workdir)
    config = write_config(workdir, folds=folds, overrides=overrides)
    print(
        f"GSE7390: {n} patients, {events} distant-metastasis events, {genes} genes + 4 clinical covariates; "
        f"{folds} folds"
    )
    if overrides:
        print("config overrides: " + ", ".join(overrides))
    command = [
        sys.executable, "-m", "multimodal.cli", "run", "-q", "--config", config.name,
        "--snakefile", str(REPO / "Snakefile"), "--cores", str(cores), "--", "--quiet", "all",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        print(f"multimodal run failed (exit {done.returncode}); see {workdir}/results/gse7390/logs", file=sys.stderr)
        return 2
    metrics = json.loads((workdir / "results/gse7390/model/metrics.json").read_text())
    return report(metrics, wall_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="scratch working directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working directory")
    parser.add_argument(
        "--config-override", action="append", default=[], metavar="KEY=VALUE",
        help="set a config key (dotted, YAML value), e.g. model.linear=true; repeatable",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mm-gse7390-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return benchmark(workdir, folds=args.folds, cores=args.cores, overrides=args.config_override)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.workdir is None:
            print(f"kept {workdir}")


if __name__ == "__main__":
    sys.exit(main())
