"""Demo workflow wall time and peak memory, with a ratio against reading the same inputs once.

The reference, measured in the same run on the same files, is the cost of touching every input with
its reader and nothing else: iterating every VCF record with pysam, loading every image and mask with
nibabel and parsing the counts table with pandas. The ratio (workflow / reference) is what to compare
between machines and commits; wall times alone are noisy.

Usage: python benchmarks/demo_benchmark.py [--cores 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_inputs_once(workdir: Path) -> float:
    """Seconds to read every demo input with its reader, doing nothing else."""
    import nibabel as nib
    import pandas as pd
    import pysam

    start = time.perf_counter()
    samples = pd.read_csv(workdir / "config/samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    for vcf in samples["vcf"]:
        if vcf:
            with pysam.VariantFile(str(workdir / vcf)) as handle:
                for record in handle:
                    record.info.get("CSQ")
    for column in ("image", "mask"):
        for path in samples[column]:
            if path:
                nib.load(workdir / path).get_fdata()
    pd.read_csv(workdir / "demo/expression_counts.tsv", sep="\t", index_col=0)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="multimodal-bench-") as scratch:
            return benchmark(Path(scratch), cores=args.cores)
    return benchmark(args.workdir, cores=args.cores)


def benchmark(workdir: Path, *, cores: int) -> int:
    """Run the demo in ``workdir`` and print the figures."""
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "multimodal.cli",
        "run",
        "-q",
        "--config",
        "config/config.yaml",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        str(cores),
        "--",
        "--quiet",
        "all",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True)
    workflow_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    reference_s = read_inputs_once(workdir)
    print(f"demo workflow wall time   {workflow_s:8.1f} s  (--cores {cores})")
    print(f"peak RSS of any one job   {peak_mib:8.0f} MiB")
    print(f"reference: read inputs    {reference_s:8.2f} s")
    print(f"ratio workflow/reference  {workflow_s / reference_s:8.1f}")
    print_rule_benchmarks(workdir / "results/demo/benchmarks")
    return 0


def print_rule_benchmarks(folder: Path) -> None:
    """Per-rule wall time and peak RSS from Snakemake's own `benchmark:` files (summed over chunks)."""
    import pandas as pd

    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        stats = pd.read_csv(path, sep="\t")
        rule = path.parent.name if path.parent != folder else path.stem
        rows.append({"rule": rule, "s": float(stats["s"].iloc[0]), "max_rss_mib": float(stats["max_rss"].iloc[0])})
    if not rows:
        return
    table = (
        pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "size"), s=("s", "sum"), max_rss_mib=("max_rss_mib", "max"))
    )
    print("per rule (Snakemake benchmark files):")
    print(table.sort_values("s", ascending=False).round(1).to_string())


if __name__ == "__main__":
    sys.exit(main())
