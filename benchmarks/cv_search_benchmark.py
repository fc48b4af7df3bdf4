"""Full outer cross-validation with the inner model search (model.search) on a 3,000-feature x 400-patient cohort.

Generates, in a scratch directory, a synthetic cohort the way a user hands one over: a samples sheet, a clinical
table (site, arm without effect, age, sex, overall survival) and a patients x features table (``tables:``
modality ``rna``, 3,000 numeric columns, log-normal, correlated in blocks of 10; the log-hazard is linear in 12
of them plus one product of two, with age; ~30% censored). The table goes through the table ingest
(``feature_table``) into a cohort store, then

1. one plain 5-fold cross-validation with the shipped model settings (search off), and
2. the same folds with ``model.search`` on (grid over fusion, width, dropout, feature budget and neural weight,
   ``--trials`` candidates, 3 inner folds stratified by event), once per ``--select`` rule (``one_se`` with the
   run's settings as candidate 0, the default; ``best``: the plain best of the space's candidates, as before
   2026-12-02 evening),

both on ``--cores`` torch threads. Prints the wall time of each, the fusion model's and the elastic-net Cox
reference's mean C over the same folds for each, the settings chosen per fold and the ratio of search time to
one plain CV (the reference measured in the same run).

Usage: python benchmarks/cv_search_benchmark.py [--quick] [--cores 2] [--trials 4] [--linear] [--select one_se best]
[--workdir DIR] [--keep]
``--quick``: 150 patients x 500 features, 3 folds, 30 epochs, 3 candidates (a smoke run of the same path).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_cohort(root: Path, *, n: int, p: int, seed: int) -> None:
    """samples.tsv, clinical.tsv and rna.tsv of a synthetic cohort with a known log-linear signal."""
    rng = np.random.default_rng(seed)
    ids = [f"S{i:04d}" for i in range(n)]
    blocks = rng.normal(size=(n, p // 10 + 1))
    latent = np.repeat(blocks, 10, axis=1)[:, :p] * 0.6 + rng.normal(size=(n, p)) * 0.8
    values = np.exp(1.0 + 0.5 * latent)  # log-normal, like expression
    informative = rng.choice(p, size=12, replace=False)
    beta = rng.choice([-1, 1], size=12) * rng.uniform(0.25, 0.5, size=12)
    z = (latent - latent.mean(0)) / latent.std(0)
    age = rng.normal(62, 10, n).round()
    eta = z[:, informative] @ beta + 0.4 * z[:, informative[0]] * z[:, informative[1]] + 0.02 * (age - 62)
    event_time = rng.exponential(24 * np.exp(-eta))
    censor = rng.uniform(12, 72, n)
    time_ = np.minimum(event_time, censor).round(2) + 0.01
    event = (event_time <= censor).astype(int)
    pd.DataFrame({"patient_id": ids}).to_csv(root / "samples.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "patient_id": ids,
            "site": rng.choice(["site_A", "site_B"], n),
            "arm": rng.choice(["standard", "experimental"], n),  # no effect here
            "age": age,
            "sex": rng.choice(["female", "male"], n),
            "os_time": time_,
            "os_event": event,
            "response": "",  # no response outcome
        }
    ).to_csv(root / "clinical.tsv", sep="\t", index=False)
    table = pd.DataFrame(values.round(4), columns=[f"g{j:04d}" for j in range(p)])
    table.insert(0, "patient_id", ids)
    table.to_csv(root / "rna.tsv", sep="\t", index=False)


def build_store(root: Path):
    """The table through the table ingest into a cohort store; returns it as read back."""
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.table import feature_table
    from multimodal.store import build_cohort_store, read_cohort_store

    samples = read_samples(root / "samples.tsv")
    feature_table(root / "rna.tsv", modality="rna", patients=samples.index).write_h5ad(root / "rna.h5ad")
    store = build_cohort_store(
        root / "cohort.zarr",
        clinical_path=root / "clinical.tsv",
        samples_path=root / "samples.tsv",
        modality_chunks={"rna": [root / "rna.h5ad"]},
        cohort_files=[root / "rna.tsv"],
        config={},
    )
    return read_cohort_store(store)


def run(mdata, out: Path, params) -> tuple[dict, float]:
    from multimodal.model.train import cross_validate

    start = time.perf_counter()
    metrics = cross_validate(mdata, out, params=params, store_path=str(out), progress=False)
    return metrics, time.perf_counter() - start


def fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 patients x 500 features, 3 folds, 30 epochs")
    parser.add_argument("--cores", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--trials", type=int, default=None, help="search candidates per fold (default 4; quick 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--linear", action="store_true", help="model.linear on (wide and deep) in both runs; search tries it off"
    )
    parser.add_argument(
        "--select",
        nargs="+",
        choices=("one_se", "best"),
        default=["one_se"],
        help="selection rules to run (one search each): one_se (run's settings first; default), best (space only)",
    )
    args = parser.parse_args()

    import torch

    from multimodal.model.train import TrainParams

    torch.set_num_threads(args.cores)
    logging.basicConfig(level=logging.WARNING)
    n, p, folds, epochs = (150, 500, 3, 30) if args.quick else (400, 3000, 5, 100)
    trials = args.trials or (3 if args.quick else 4)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cv_search_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        write_cohort(workdir, n=n, p=p, seed=args.seed)
        mdata = build_store(workdir)
        prepare = time.perf_counter() - start
        print(
            f"cohort: {n} patients x {p} features (tables: rna), {int(mdata.obs['event'].sum())} events; "
            f"generated and ingested in {prepare:.1f} s; {args.cores} torch threads"
            + ("; model.linear on" if args.linear else "")
        )
        base = {"folds": folds, "epochs": epochs, "bootstrap": 50, "max_features": {"rna": 20}}
        space = {
            "fusion": ["sum", "attention"],
            "hidden_dim": [8, 16],
            "dropout": [0.2, 0.4],
            "max_features": [20, 50],
            "neural_weight": [1.0, 0.5],
        }
        if args.linear:
            base["linear"] = True
            space["linear"] = [True, False]
        plain, plain_s = run(mdata, workdir / "plain", TrainParams(**base))
        runs = [("plain CV", plain, plain_s)]
        for select in args.select:
            search = {"enabled": True, "method": "grid", "trials": trials, "inner_folds": 3, "space": space}
            search |= {"select": select, "incumbent": select == "one_se"}
            searched, search_s = run(mdata, workdir / f"search_{select}", TrainParams(**base, search=search))
            runs.append((f"CV with search, {select}", searched, search_s))
        print(f"{'run':<26} {'wall s':>8} {'model C':>16} {'elastic-net C':>14}")
        for name, metrics, seconds in runs:
            reference = metrics["baseline"]["penalised_cox"]
            print(
                f"{name:<26} {seconds:8.1f} {fmt(metrics['mean']['c_index']):>8} ± {fmt(metrics['sd']['c_index'])}"
                f" {fmt(reference['mean_c_index']):>14}"
            )
        for name, metrics, seconds in runs[1:]:
            print(f"{name}: search time / plain CV time {seconds / plain_s:.1f}")
            for entry in metrics["search"]["per_fold"]:
                chosen = json.dumps(entry["chosen"]) if entry["chosen"] else "the run's settings"
                print(
                    f"  fold {entry['fold']}: chose {chosen}, {entry['epochs']} epochs, "
                    f"inner C {fmt(entry['inner_c_index'])}"
                )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
