"""Omics at cohort scale (issue 14): three ratios measured in one run, each against a reference on the same files.

1. ``per-patient``: N somatic VCFs (a few hundred to a few thousand records each, VEP CSQ with three
   transcripts per record, FORMAT AD/DP), read by ``multimodal ingest variants`` as the workflow runs it
   (one process per chunk of ``--chunk-size`` patients) ÷ ``bcftools query`` of the same fields over the same
   files, both with ``--jobs`` processes at a time.
2. ``cohort``: one multi-sample VCF (samples x variants), ``multimodal ingest cohort-vcf`` (VCF -> VCF Zarr ->
   gene carrier matrix) ÷ ``bcftools query -f '[%GT]'`` over the same file; also the peak memory of ours.
3. ``expression``: a genes x samples counts table (or, ``--expr-format h5ad``/``h5ad-csr``, a bulk .h5ad, X dense
   or CSR) to the written cohort store, as the workflow runs it
   (`multimodal ingest expression`, then `multimodal assemble`, one process each): the larger of the two peak
   memories above the interpreter's after its imports ÷ the size of the dense float32 matrix.

Usage: python benchmarks/vcf_benchmark.py [--quick] [--patients 500] [--samples 1000] [--variants 20000]
       [--expr-samples 2000] [--expr-genes 20000] [--expr-format table|h5ad|h5ad-csr] [--jobs 2] [--workdir DIR]
``--quick`` shrinks every size (CI). bcftools must be on PATH (Debian: apt-get install bcftools).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CSQ_FORMAT = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature|BIOTYPE|HGVSp|CANONICAL"
HEADER = (
    "##fileformat=VCFv4.2\n"
    '##FILTER=<ID=PASS,Description="All filters passed">\n'
    '##FILTER=<ID=LowQual,Description="Low quality">\n'
    "##contig=<ID=chr1,length=250000000>\n"
    '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
    f'Format: {CSQ_FORMAT}">\n'
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">\n'
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">\n'
)
TERMS = np.array(["missense_variant", "synonymous_variant", "intron_variant", "stop_gained", "frameshift_variant"])


def _csq(rng: np.random.Generator, alt: str, gene: str) -> str:
    terms = TERMS[rng.integers(0, len(TERMS), 3)]
    return ",".join(
        f"{alt}|{t}|MODERATE|{gene}|ENSG_{gene}|ENST_{gene}_{k}|protein_coding|p.X{k}|{'YES' if k == 0 else ''}"
        for k, t in enumerate(terms)
    )


def write_patient_vcfs(root: Path, n: int, low: int, high: int, seed: int = 1) -> Path:
    import pysam

    rng = np.random.default_rng(seed)
    genes = [f"GENE{g}" for g in range(2000)]
    rows = ["patient_id\tvcf"]
    for i in range(n):
        n_records = int(rng.integers(low, high))
        positions = np.sort(rng.choice(249_000_000, n_records, replace=False)) + 1
        lines = [HEADER, "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tTUMOR\n"]
        for pos in positions:
            gene = genes[int(rng.integers(0, len(genes)))]
            depth = int(rng.integers(20, 200))
            alt_reads = int(rng.integers(2, depth // 2))
            filt = "PASS" if rng.random() > 0.1 else "LowQual"
            lines.append(
                f"chr1\t{pos}\t.\tA\tT\t50\t{filt}\tCSQ={_csq(rng, 'T', gene)}\tGT:AD:DP\t0/1:{depth - alt_reads},"
                f"{alt_reads}:{depth}\n"
            )
        text = root / f"P{i:04d}.vcf"
        text.write_text("".join(lines))
        pysam.tabix_index(str(text), preset="vcf", force=True)
        rows.append(f"P{i:04d}\t{text}.gz")
    sheet = root / "samples.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def write_cohort_vcf(path: Path, n_samples: int, n_variants: int, seed: int = 2) -> Path:
    import pysam

    rng = np.random.default_rng(seed)
    genes = [f"GENE{g}" for g in range(5000)]
    text = path.with_suffix("")
    with open(text, "w") as handle:
        handle.write(HEADER.replace("##FORMAT=<ID=AD", "##FORMAT=<ID=XX").split("##FORMAT=<ID=XX")[0])
        handle.write("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]))
        handle.write("\t" + "\t".join(f"S{s:05d}" for s in range(n_samples)) + "\n")
        codes = np.array(["0/0", "0/1", "1/1", "./."])
        positions = np.sort(rng.choice(249_000_000, n_variants, replace=False)) + 1
        for block in range(0, n_variants, 2000):
            stop = min(block + 2000, n_variants)
            calls = codes[rng.choice(4, size=(stop - block, n_samples), p=[0.95, 0.035, 0.01, 0.005])]
            out = []
            for k, v in enumerate(range(block, stop)):
                gene = genes[int(rng.integers(0, len(genes)))]
                filt = "PASS" if rng.random() > 0.05 else "LowQual"
                out.append(
                    f"chr1\t{positions[v]}\t.\tA\tT\t50\t{filt}\tCSQ={_csq(rng, 'T', gene)}\tGT\t" + "\t".join(calls[k])
                )
            handle.write("\n".join(out) + "\n")
    pysam.tabix_compress(str(text), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    text.unlink()
    return path


def timed_parallel(commands: list[list[str]], jobs: int) -> float:
    def run(command: list[str]) -> None:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, commands))
    return time.perf_counter() - start


PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_child_mib(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, measured by a fresh parent of its own."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *command], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, int(out.stdout.split()[-1]) / 1024


EXPRESSION = """
import json, resource, sys
import anndata, h5py, mudata, pandas, scanpy, zarr  # what the verbs import, loaded before the baseline
import multimodal.ingest.clinical, multimodal.ingest.expression, multimodal.store
from multimodal.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mib": base, "peak_mib": peak, "exit": code}))
"""


def bench_patients(args: argparse.Namespace, workdir: Path, multimodal: list[str], low: int, high: int) -> None:
    """Per-patient somatic VCFs through `multimodal ingest variants` in chunks vs `bcftools query`."""
    import resource

    def cpu() -> float:  # user + system seconds of the finished child processes (robust to a shared machine)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    sheet = write_patient_vcfs(workdir, args.patients, low, high)
    vcfs = [line.split("\t")[1] for line in sheet.read_text().splitlines()[1:]]
    n_chunks = -(-args.patients // args.chunk_size)
    cpu_start = cpu()
    ours = timed_parallel(
        [
            [
                *multimodal,
                "ingest",
                "variants",
                "-q",
                "--samples",
                str(sheet),
                "--chunk",
                str(k),
                "--n-chunks",
                str(n_chunks),
                "--data-root",
                str(workdir),
                "--out",
                str(workdir / f"chunk_{k}.h5ad"),
            ]
            for k in range(n_chunks)
        ],
        args.jobs,
    )
    ours_cpu = cpu() - cpu_start
    query = "%CHROM\t%POS\t%REF\t%ALT\t%FILTER\t%INFO/CSQ[\t%AD\t%DP]\n"
    cpu_start = cpu()
    reference = timed_parallel([["bcftools", "query", "-f", query, vcf] for vcf in vcfs], args.jobs)
    reference_cpu = cpu() - cpu_start
    print(
        f"per-patient: {args.patients} VCFs ({low}-{high} records, 3 CSQ transcripts), {args.jobs} jobs: "
        f"multimodal ingest variants {ours:.1f} s, {ours_cpu:.1f} CPU-s ({n_chunks} chunks) | bcftools query "
        f"{reference:.1f} s, {reference_cpu:.1f} CPU-s | ratio {ours / reference:.2f} "
        f"(CPU {ours_cpu / reference_cpu:.2f})"
    )


def bench_cohort(args: argparse.Namespace, workdir: Path, multimodal: list[str]) -> None:
    """A cohort VCF -> VCF Zarr -> gene matrix vs `bcftools query [%GT]` over the same file."""
    cohort = write_cohort_vcf(workdir / "cohort.vcf.gz", args.samples, args.variants)
    patients = workdir / "cohort_samples.tsv"
    patients.write_text("patient_id\n" + "".join(f"S{s:05d}\n" for s in range(args.samples)))
    import resource

    def cpu() -> float:  # user + system seconds of this process's finished children
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = cpu()
    ours, peak = peak_child_mib(
        [
            *multimodal,
            "ingest",
            "cohort-vcf",
            "-q",
            "--samples",
            str(patients),
            "--vcf",
            str(cohort),
            "--zarr",
            str(workdir / "cohort.vcz"),
            "--variants-chunk",
            "5000",
            "--samples-chunk",
            "1000",
            "--data-root",
            str(workdir),
            "--out",
            str(workdir / "cohort.h5ad"),
        ]
    )
    ours_cpu, before = cpu() - before, cpu()
    start = time.perf_counter()
    subprocess.run(["bcftools", "query", "-f", "[%GT]\n", str(cohort)], check=True, stdout=subprocess.DEVNULL)
    reference = time.perf_counter() - start
    reference_cpu = cpu() - before
    print(
        f"cohort: {args.samples} samples x {args.variants} variants: VCF -> VCF Zarr -> gene matrix {ours:.1f} s "
        f"({ours_cpu:.1f} CPU-s), peak {peak:.0f} MiB | bcftools query [%GT] {reference:.1f} s ({reference_cpu:.1f} "
        f"CPU-s) | ratio {ours / reference:.2f} (CPU {ours_cpu / reference_cpu:.2f})"
    )


#: Writes a bulk .h5ad of negative-binomial counts: argv path, samples, genes, format (h5ad: X dense; h5ad-csr).
H5AD_WRITER = """
import sys
import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
path, n, genes, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(3)
step = max(1, (1 << 24) // genes)  # rows drawn at a time (the int64 draws of ~16M cells)
blocks = []
for start in range(0, n, step):
    values = rng.negative_binomial(5, 0.01, (min(step, n - start), genes)).astype(np.float32)
    if kind == "h5ad-csr":
        values[rng.random(values.shape) < 0.4] = 0  # zeros, as a sparse file has them
        values = sp.csr_matrix(values)
    blocks.append(values)
matrix = sp.vstack(blocks, format="csr") if kind == "h5ad-csr" else np.concatenate(blocks)
del blocks
obs = pd.DataFrame(index=[f"S{i}" for i in range(n)])
var = pd.DataFrame(index=[f"ENSG{g:011d}.1" for g in range(genes)])
ad.AnnData(X=matrix, obs=obs, var=var).write_h5ad(path)
"""


def bench_expression(args: argparse.Namespace, workdir: Path) -> None:
    """Peak memory of a counts input -> the written cohort store, as the workflow runs it, vs the dense float32 matrix.

    Two processes, as the workflow's two rules: `multimodal ingest expression` (input -> expression.h5ad) and
    `multimodal assemble` (-> cohort.zarr). Each reports its peak RSS above its own after the imports. The input
    (``--expr-format``): a genes x samples counts table (``table``), or a bulk .h5ad written by anndata, samples
    as obs and genes as var, with float32 counts in X, dense (``h5ad``) or CSR with ~40 % zeros (``h5ad-csr``).
    """
    rng = np.random.default_rng(3)
    n, genes = args.expr_samples, args.expr_genes
    if args.expr_format == "table":
        counts = workdir / "expression.tsv"
        text = np.array([str(v).encode() for v in range(4096)], dtype=object)  # each count's text, looked up
        with open(counts, "wb") as handle:
            handle.write(("gene\t" + "\t".join(f"S{i}" for i in range(n)) + "\n").encode())
            for start in range(0, genes, 500):  # 500 rows at a time
                values = np.minimum(rng.negative_binomial(5, 0.01, (min(500, genes - start), n)), len(text) - 1)
                rows = [b"ENSG%011d.1\t" % (start + k) + b"\t".join(text[row]) for k, row in enumerate(values)]
                handle.write(b"\n".join(rows) + b"\n")
    else:  # written by a process of its own: a child's peak RSS counts its parent's at the fork (Linux keeps
        # the high-water mark across exec), so the matrix must never have been in this process
        counts = workdir / "expression_input.h5ad"
        subprocess.run(
            [sys.executable, "-c", H5AD_WRITER, str(counts), str(n), str(genes), args.expr_format], check=True
        )
    ids = [f"P{i}" for i in range(n)]
    samples = workdir / "expression_samples.tsv"
    samples.write_text("patient_id\trna_sample\n" + "".join(f"{p}\tS{i}\n" for i, p in enumerate(ids)))
    clinical = workdir / "expression_clinical.tsv"
    rows = [
        f"{p}\t{1 + i % 50}\t{i % 2}\t{40 + i % 40}\t{'FM'[i % 2]}\t{'AB'[i % 2]}\tS{i % 3}\t{i % 2}\n"
        for i, p in enumerate(ids)
    ]  # the default clinical columns (multimodal.config)
    clinical.write_text("patient_id\tos_time\tos_event\tage\tsex\tarm\tsite\tresponse\n" + "".join(rows))
    h5ad, store = workdir / "expression.h5ad", workdir / "expression_cohort.zarr"
    common = ["-q", "--samples", str(samples), "--data-root", str(workdir)]
    steps = {
        "ingest expression": ["ingest", "expression", *common, "--counts", str(counts), "--out", str(h5ad)],
        "assemble": [
            "assemble",
            *common,
            "--clinical",
            str(clinical),
            "--expression",
            str(h5ad),
            "--counts",
            str(counts),
            "--out",
            str(store),
        ],
    }
    dense = n * genes * 4 / 2**20
    above = {}
    for name, argv in steps.items():
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", EXPRESSION, *argv], check=True, capture_output=True, text=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        if measured["exit"] != 0:
            sys.exit(f"{name} failed: {out.stderr.strip()[-2000:]}")
        above[name] = measured["peak_mib"] - measured["base_mib"]
        print(
            f"expression: {n} samples x {genes} genes, {name}: {time.perf_counter() - start:.1f} s, "
            f"peak {measured['peak_mib']:.0f} MiB, {above[name]:.0f} MiB above the imports ({above[name] / dense:.2f}x)"
        )
    worst = max(above, key=above.get)
    print(
        f"expression: {n} samples x {genes} genes ({args.expr_format} {counts.stat().st_size / 2**30:.2f} GiB) -> "
        "store: "
        f"peak {above[worst]:.0f} MiB above the imports ({worst}) | dense float32 {dense:.0f} MiB | "
        f"ratio {above[worst] / dense:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument(
        "--chunk-size", type=int, default=250, help="patients per ingest job (ingest.variant_chunk_size)"
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=20000)
    parser.add_argument("--expr-samples", type=int, default=2000)
    parser.add_argument("--expr-genes", type=int, default=20000)
    parser.add_argument(
        "--expr-format", choices=["table", "h5ad", "h5ad-csr"], default="table", help="the expression input's format"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--only", choices=["patients", "cohort", "expression"], action="append", help="run only these (repeatable)"
    )
    args = parser.parse_args()
    low, high = 300, 3000
    if args.quick:
        args.patients, args.chunk_size, args.samples, args.variants = 20, 10, 100, 2000
        args.expr_samples, args.expr_genes, low, high = 200, 2000, 100, 400
    if shutil.which("bcftools") is None:
        sys.exit("bcftools is not on PATH (apt-get install bcftools)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mm-vcf-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    multimodal = [str(Path(sys.executable).parent / "multimodal")]
    try:
        only = set(args.only or ["patients", "cohort", "expression"])
        if "patients" in only:
            bench_patients(args, workdir, multimodal, low, high)
        if "cohort" in only:
            bench_cohort(args, workdir, multimodal)
        if "expression" in only:
            bench_expression(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
