"""Cohort-scale tables: a pan-cancer expression table and a GDC-sized MAF, against pandas on the same file.

Real cohorts arrive as one large table rather than the demo's small files: a TCGA pan-cancer RSEM or
counts table (20,000 genes x 11,000 samples, of which a cohort uses a few hundred) and a multi-million
row, 100+ column MAF. This script writes both (synthetic values, real shapes), then times in the same
run, each in a fresh process so peak memory is its own:

- ``multimodal`` reading them (``read_counts_table`` + ``expression_matrix`` for the cohort's samples;
  ``read_maf``), and
- the reference: ``pandas.read_csv`` of the whole expression table as numbers, and of the MAF's four
  needed columns (the least any MAF reader must parse).

It prints wall time and peak RSS of each and the ratio multimodal / reference.

``maf_with_table`` also builds the variant-level table (``read_maf_with_table``, as ``ingest variants`` does).

Usage: python benchmarks/table_ingest_benchmark.py [--genes 20000] [--samples 3000] [--cohort 300]
       [--maf-rows 1000000] [--workdir DIR] [--only expression|maf] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MEASURE = """
import json, resource, sys, time
kind, path, cohort = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if kind == "expression_multimodal":
    import pandas as pd
    from multimodal.ingest.expression import expression_matrix, read_counts_table
    claimed = [f"TCGA-{i:06d}-01A" for i in range(cohort)]
    sheet = pd.DataFrame({"rna_sample": claimed}, index=pd.Index([f"P{i}" for i in range(cohort)], name="patient_id"))
    shape = expression_matrix(read_counts_table(path, sample_columns=claimed), sheet).shape
elif kind == "expression_pandas":
    import pandas as pd
    shape = pd.read_csv(path, sep="\\t", index_col=0).shape
elif kind == "maf_multimodal":
    from multimodal.ingest.variants import read_maf
    shape = (len(read_maf(path)),)
elif kind == "maf_multimodal_with_table":
    from multimodal.ingest.variants import read_maf_with_table
    shape = read_maf_with_table(path)[1].shape
elif kind == "maf_pandas":
    import pandas as pd
    columns = ["Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode", "FILTER"]
    shape = pd.read_csv(path, sep="\\t", comment="#", usecols=columns, dtype=str).shape
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak, "shape": list(shape)}))
"""


def write_expression(path: Path, *, genes: int, samples: int, seed: int = 0) -> None:
    """Genes x samples negative-binomial counts with PanCanAtlas-style ``SYMBOL|ENTREZ`` gene IDs."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        handle.write("gene_id\t" + "\t".join(f"TCGA-{i:06d}-01A" for i in range(samples)) + "\n")
        for g in range(genes):
            values = rng.negative_binomial(5, 0.01, samples)
            handle.write(f"GENE{g}|{g + 1}\t" + "\t".join(map(str, values)) + "\n")


def write_maf(path: Path, *, rows: int, seed: int = 0) -> None:
    """A GDC-shaped MAF: version lines, 120 columns, the needed four among them, ~10,000 tumour samples."""
    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{g}" for g in range(18000)] + ["Unknown"])
    classes = np.array(["Missense_Mutation", "Silent", "Nonsense_Mutation", "Intron", "3'UTR", "Frame_Shift_Del"])
    filters = np.array(["PASS"] * 8 + ["wga", "common_in_gnomAD;panel_of_normals"])
    barcodes = np.array([f"TCGA-{i:02d}-{j:04d}-01A-11D-A{i:03d}-08" for i in range(33) for j in range(300)])
    other = [f"Column{k}" for k in range(116)]
    with open(path, "w") as handle:
        handle.write("#version gdc-1.0.0\n#annotation.spec gdc-1.0.1-public\n")
        names = ["Hugo_Symbol", *other[:10], "Variant_Classification", "Tumor_Sample_Barcode", *other[10:], "FILTER"]
        handle.write("\t".join(names) + "\n")
        middle = "\t".join(["ENST00000269305.9:c.524G>A"] * 10)
        tail = "\t".join(["."] * (len(other) - 10))
        for block in range(0, rows, 100_000):
            n = min(100_000, rows - block)
            g, c = genes[rng.integers(0, len(genes), n)], classes[rng.integers(0, len(classes), n)]
            s, f = barcodes[rng.integers(0, len(barcodes), n)], filters[rng.integers(0, len(filters), n)]
            handle.write("".join(f"{g[i]}\t{middle}\t{c[i]}\t{s[i]}\t{tail}\t{f[i]}\n" for i in range(n)))


def measure(kind: str, path: Path, cohort: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, kind, str(path), str(cohort)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--cohort", type=int, default=300, help="samples the cohort uses (read by multimodal)")
    parser.add_argument("--maf-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=("expression", "maf"), help="run one of the two benchmarks")
    parser.add_argument(
        "--quick", action="store_true", help="a reduced size (2,000 genes x 300 samples; 100,000 MAF rows)"
    )
    args = parser.parse_args()
    if args.quick:
        args.genes, args.samples, args.cohort, args.maf_rows = 2000, 300, 100, 100_000
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mm-table-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        expression, maf = workdir / "expression.tsv", workdir / "cohort.maf"
        expression.touch()
        maf.touch()
        if args.only != "maf":
            write_expression(expression, genes=args.genes, samples=args.samples)
        if args.only != "expression":
            write_maf(maf, rows=args.maf_rows)
        mib = {p: p.stat().st_size / 2**20 for p in (expression, maf)}
        print(f"expression table: {args.genes} genes x {args.samples} samples, {mib[expression]:.0f} MiB;", end=" ")
        print(f"cohort of {args.cohort}; MAF: {args.maf_rows} rows x 120 columns, {mib[maf]:.0f} MiB")
        runs = [("expression", "expression", expression), ("maf", "maf", maf), ("maf_with_table", "maf", maf)]
        for name, reference_kind, path in runs:
            if args.only and reference_kind != args.only:
                continue
            ours = measure(f"{reference_kind}_multimodal{name.removeprefix(reference_kind)}", path, args.cohort)
            reference = measure(f"{reference_kind}_pandas", path, args.cohort)
            print(
                f"{name:14s} multimodal {ours['seconds']:6.1f} s {ours['peak_mib']:6.0f} MiB | "
                f"pandas reference {reference['seconds']:6.1f} s {reference['peak_mib']:6.0f} MiB | "
                f"ratio time {ours['seconds'] / reference['seconds']:.2f}, "
                f"memory {ours['peak_mib'] / reference['peak_mib']:.2f}"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
