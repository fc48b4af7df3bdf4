"""Gene-level copy number as the ``cnv`` modality: GISTIC2 calls, or segments summarised over a gene BED.

GISTIC2 writes one row per gene: ``Gene Symbol``, ``Locus ID`` (``Gene ID`` in some releases),
``Cytoband``, then one column per sample holding the thresholded call: -2 deep deletion, -1 shallow
deletion, 0 diploid, 1 gain, 2 amplification. Samples are matched to patients of the samples sheet by
ID or unique barcode prefix (``TCGA-05-4244`` claims ``TCGA-05-4244-01A-01D-1105-01``), as MAF and
expression samples are. Features are ``<symbol>_cn`` (unique beside expression genes and ``_mut``
features), ``feature_class`` ``gene_copy_number``; X is the call as a float.

Segments (:func:`segment_copy_number`): a ``.seg`` (DNAcopy, cBioPortal, GDC, Firehose; 1-based) or CNVkit
``.cns`` files (0-based) with a gene BED; per gene the length-weighted mean log2 ratio of the segments
overlapping it (missing where none does), optionally called -2..2 at four thresholds.
"""

from __future__ import annotations

import itertools
import logging
import re
import shlex
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import resolve_barcodes
from multimodal.ingest.textfile import (
    MAX_LINES_NAMED,
    check_rows,
    diagnose_table,
    id_problems,
    line_problem,
    listing,
    open_text,
    raise_problems,
    read_table,
)

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

#: GISTIC2's thresholded calls.
GISTIC_CALLS = (-2, -1, 0, 1, 2)
#: Annotation columns of ``all_thresholded.by_genes.txt`` (``Gene ID`` in some GISTIC2 releases).
GISTIC_ANNOTATION = ("Gene Symbol", "Locus ID", "Gene ID", "Cytoband")
COPY_NUMBER_SUFFIX = "_cn"


def patient_samples(
    patients: pd.Index,
    available: Collection[str],
    sample_names: Mapping[str, str] | None,
    *,
    what: str,
    file_of: Callable[[str], str | Path],
) -> tuple[dict[str, str], int]:
    """The patient of each claimed sample among ``available`` (sample -> patient), and how many were matched by a
    barcode prefix rather than exactly: a patient's ``cnv_sample`` from
    the samples sheet where given, else its patient ID, matched exactly or as a unique barcode prefix
    (:func:`resolve_barcodes`). A ``cnv_sample`` that names no sample stops the run (a typo would otherwise leave
    the patient without copy number), and so does a sample two patients claim (named with ``file_of(sample)``)."""
    names = {str(p): (sample_names or {}).get(str(p)) or str(p) for p in patients}
    resolved = resolve_barcodes(sorted(set(names.values())), available, what=what)
    given = {p: n for p, n in names.items() if (sample_names or {}).get(p)}
    unknown = [f"{p} ({n!r})" for p, n in given.items() if n not in resolved]
    if unknown:
        raise MultimodalError(
            f"samples sheet: cnv_sample names no {what}: {', '.join(unknown[:3])}"
            + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        )
    claimed: dict[str, str] = {}
    n_by_prefix = 0
    for patient, name in names.items():
        if name not in resolved:
            continue
        sample = resolved[name]
        n_by_prefix += sample != name
        if sample in claimed:
            raise MultimodalError(
                f"{file_of(sample)}: sample {sample!r} is claimed by patients {claimed[sample]} and {patient}"
            )
        claimed[sample] = patient
    return claimed, n_by_prefix


def copy_number_matrix(
    path: str | Path, *, patients: pd.Index, sample_names: Mapping[str, str] | None = None
) -> anndata.AnnData:
    """Patients x genes thresholded copy-number calls from a GISTIC2 gene-level table.

    Every cell must be one of :data:`GISTIC_CALLS`; a repeated gene symbol or a sample claimed by two
    patients stops the run naming them. Samples of no patient, patients without a sample, and genes with
    the same call in every patient are counted in ``uns['ingest']``. ``sample_names`` (the samples sheet's
    ``cnv_sample``) names a patient's column where it differs from the patient ID or a prefix of it.
    """
    import anndata as ad

    path = Path(path)
    what = "GISTIC2 gene-level copy-number table"
    frame = read_table(path, what=what)  # names a cut gzip, UTF-16, Excel, a mixed-up separator, field counts
    if "Gene Symbol" not in frame.columns:
        diagnose_table(path, what=what)
        raise MultimodalError(
            f"{path}: no 'Gene Symbol' column; GISTIC2's all_thresholded.by_genes.txt starts with "
            f"Gene Symbol, Locus ID, Cytoband (found {', '.join(map(repr, frame.columns[:5]))})"
        )
    if frame.empty:
        raise MultimodalError(f"{path}: {what} has a header but no genes")
    symbols = frame["Gene Symbol"].str.strip()
    repeated = symbols[symbols.duplicated(keep=False)]
    if len(repeated):
        entries = [f"line {line} ({symbol!r})" for line, symbol in repeated.items()]
        raise MultimodalError(f"{path}: gene symbol repeated: {listing(entries)}")
    sample_columns = [c for c in frame.columns if c not in GISTIC_ANNOTATION]
    if not sample_columns:
        raise MultimodalError(f"{path}: {what} has no sample columns after Gene Symbol, Locus ID, Cytoband")
    claimed, n_by_prefix = patient_samples(
        patients, sample_columns, sample_names, what=f"sample column of {path.name}", file_of=lambda _: path
    )
    if not claimed:
        raise MultimodalError(
            f"{path}: none of its {len(sample_columns)} sample columns is a patient of the samples sheet "
            f"(table: {sample_columns[0]!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    columns = [c for c in sample_columns if c in claimed]
    raw = frame[columns]
    values = raw.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    bad = ~values.isin(GISTIC_CALLS)
    if bad.to_numpy().any():
        cells = np.argwhere(bad.to_numpy())
        entries = [
            f"line {raw.index[r]} (gene {symbols.iloc[r]!r}, sample {columns[c]!r}: {raw.iat[r, c]!r})"
            for r, c in cells[:MAX_LINES_NAMED]
        ]
        raise MultimodalError(
            f"{path}: {len(cells)} cell(s) are not a GISTIC2 thresholded call (-2, -1, 0, 1, 2): "
            + listing(entries, total=len(cells))
        )
    matrix = values.to_numpy(dtype=np.float32).T
    constant = (matrix.max(axis=0) == matrix.min(axis=0)) if len(columns) > 1 else np.zeros(matrix.shape[1], bool)
    matrix = matrix[:, ~constant]
    kept = symbols[~constant]
    cytoband = frame["Cytoband"].str.strip()[~constant] if "Cytoband" in frame else pd.Series("", index=kept.index)
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame({"cnv_sample": columns}, index=pd.Index([claimed[c] for c in columns], name="patient_id")),
        var=pd.DataFrame(
            {
                "gene_symbol": kept.to_numpy(),
                "cytoband": cytoband.to_numpy(),
                "feature_class": "gene_copy_number",
                "source": "gistic2_thresholded",
            },
            index=pd.Index([f"{s}{COPY_NUMBER_SUFFIX}" for s in kept], name="feature"),
        ),
    )
    adata.uns["ingest"] = {
        "modality": "cnv",
        "params": {"table": str(path), "format": "GISTIC2 all_thresholded.by_genes", "calls": list(GISTIC_CALLS)},
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_copy_number": int(len(patients) - len(columns)),
            "cnv_samples_not_in_samples_sheet": int(len(sample_columns) - len(columns)),
            "cnv_samples_matched_by_barcode_prefix": n_by_prefix,
            "genes_constant_in_all_patients": int(constant.sum()),
        },
    }
    log.info("cnv: %d patients x %d genes from %s", adata.n_obs, adata.n_vars, path)
    return adata


# --------------------------------------------------------------------------------------------------
# Segments + a gene BED
# --------------------------------------------------------------------------------------------------

#: Column names (lower-cased) of a DNAcopy/cBioPortal ``.seg`` (ID, chrom, loc.start, loc.end, num.mark,
#: seg.mean), a GDC "Masked Copy Number Segment" file (GDC_Aliquot, Chromosome, Start, End, Num_Probes,
#: Segment_Mean) and Firehose/TCGA-legacy segments (Sample, ...). All are 1-based, both ends included.
SEG_COLUMNS = {
    "sample": ("id", "sample", "gdc_aliquot", "sample_id"),
    "chrom": ("chrom", "chromosome", "chr"),
    "start": ("loc.start", "start"),
    "end": ("loc.end", "end"),
    "log2": ("seg.mean", "segment_mean"),
}
#: CNVkit ``.cns`` (chromosome, start, end, gene, log2, ...): one sample per file, 0-based half-open like BED.
CNS_COLUMNS = {"chrom": ("chromosome",), "start": ("start",), "end": ("end",), "log2": ("log2",)}
#: GATK (4.1+) ``ModelSegments``/``CallCopyRatioSegments`` segments: ``.cr.seg`` and ``.called.seg``
#: (MEAN_LOG2_COPY_RATIO) or ``.modelFinal.seg`` (the posterior median LOG2_COPY_RATIO_POSTERIOR_50); a SAM-style
#: header (``@HD``, ``@SQ``, ``@RG ... SM:<sample>``) before the column names; 1-based, both ends included.
GATK_COLUMNS = {
    "chrom": ("contig",),
    "start": ("start",),
    "end": ("end",),
    "log2": ("mean_log2_copy_ratio", "log2_copy_ratio_posterior_50"),
}
#: Chromosome position stride of the per-sample genome coordinate (above any chromosome's length).
_STRIDE = 1 << 40
_HUMAN = re.compile(r"(?i)^(?:chr)?(\d+|X|Y|M|MT)$")
#: Unplaced, unlocalised, alternate and decoy contigs (GRCh37/38, UCSC and Ensembl names), and viral ones.
_OTHER_CONTIG = re.compile(r"(?i)_|^(?:chr)?(?:Un|GL|KI|JH|KN|KV|KZ|ML|MU|NC_|NT_|NW_|HLA|HSCHR|EBV|hs37d5)")


@dataclass(frozen=True)
class CopyNumberSource:
    """The config's ``copy_number``: a GISTIC2 table, or segment files with a gene BED (and thresholds)."""

    table: str | None = None
    segments: tuple[str, ...] = ()
    genes_bed: str | None = None
    thresholds: tuple[float, ...] | None = None

    def files(self) -> list[str]:
        """Every input file, for the workflow's inputs and the store's provenance."""
        return [self.table] if self.table else [*self.segments, str(self.genes_bed)]

    def cli_options(self) -> str:
        """The ``multimodal ingest copy-number`` options that read this source (shell-quoted)."""
        if self.table:
            return f"--table {shlex.quote(self.table)}"
        options = ["--segments", *map(shlex.quote, self.segments), "--genes-bed", shlex.quote(str(self.genes_bed))]
        if self.thresholds:
            options += ["--thresholds", *(repr(float(t)) for t in self.thresholds)]
        return " ".join(options)


def copy_number_source(value: str | dict | None) -> CopyNumberSource | None:
    """Read the config's ``copy_number`` value (a path, a mapping, or null; the schema checked its shape)."""
    if not value:
        return None
    if isinstance(value, str):
        return CopyNumberSource(table=value)
    segments = value.get("segments")
    segments = (segments,) if isinstance(segments, str) else tuple(segments or ())
    thresholds = value.get("thresholds")
    return CopyNumberSource(
        segments=segments,
        genes_bed=value.get("genes_bed"),
        thresholds=tuple(float(t) for t in thresholds) if thresholds else None,
    )


def _chromosome(name: str) -> str | None:
    """One chromosome name harmonised (see :func:`harmonise_chromosomes`); None when it is not one."""
    name = name.strip()
    match = _HUMAN.match(name)
    if match is None:
        return "" if _OTHER_CONTIG.search(name) else None
    key = match.group(1).upper()
    if key.isdigit():
        number = int(key)
        return str(number) if 1 <= number <= 22 else {23: "X", 24: "Y", 25: "MT"}.get(number)
    return "MT" if key == "M" else key


def harmonise_chromosomes(names: pd.Series, path: Path, *, what: str) -> pd.Series:
    """Chromosome names as ``1``..``22``, ``X``, ``Y``, ``MT``; other contigs as ``""``; anything else an error.

    ``chr1``/``1``, ``chrX``/``X``/``23``, ``Y``/``24``, ``chrM``/``MT``/``25`` (the SNP-array and CNVkit
    convention) agree. Unplaced, alternate and decoy contigs (a ``_`` in the name, ``GL000192.1``,
    ``chrUn...``, ``KI270...``, ``EBV``) give ``""``, for the caller to count. ``names`` is indexed by line.
    """
    harmonised = names.map({name: _chromosome(name) for name in names.unique()})
    raise_problems(
        path,
        line_problem(
            names[harmonised.isna()],
            one="chromosome",
            many="chromosome names",
            problem="is not a chromosome name (1-22, X, Y, MT with or without chr; 23/24/25 for X/Y/MT)",
            hint=f" in the {what}",
        ),
    )
    return harmonised.astype(str)


def _integers(values: pd.Series, path: Path, *, column: str, hint: str = "") -> pd.Series:
    """Whole numbers (``1e+05``, as R's write.table prints round positions, included), else a one-line error."""
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = values[~(np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers >= 0))]
    raise_problems(
        path,
        line_problem(bad, one=column, many=f"{column} values", problem="is not a whole number", hint=hint),
    )
    return numbers.astype(np.int64)


def _gatk_sample(path: Path) -> str | None:
    """The sample of a GATK segment file (``SM:`` of its ``@RG`` header line); None when the file does not
    open with a SAM-style header (not a GATK file)."""
    samples, first = set(), True
    with open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            if not line.startswith("@"):
                break
            if line.startswith("@RG"):
                samples |= {f[3:].strip() for f in line.rstrip("\r\n").split("\t") if f.startswith("SM:")}
            first = False
    if first:
        return None
    if len(samples) != 1:
        found = f"names {listing(sorted(map(repr, samples)))}" if samples else "names none"
        raise MultimodalError(
            f"{path}: a GATK segment file's @RG header line names its one sample with SM:<name>; this one {found}"
        )
    return samples.pop()


def read_segments(path: str | Path) -> tuple[pd.DataFrame, str]:
    """One segment file as ``sample, chrom, start, end, log2`` (0-based half-open) indexed by line; its format.

    A ``.seg`` (DNAcopy, cBioPortal, GDC, Firehose: a sample column) is 1-based with both ends included:
    ``start - 1`` makes it half-open. A CNVkit ``.cns`` (``log2`` and no sample column) is already
    0-based half-open; its sample is the file name before ``.call.cns``/``.cns``. A GATK ``.cr.seg``,
    ``.called.seg`` or ``.modelFinal.seg`` (:data:`GATK_COLUMNS`) is 1-based; its sample is the ``SM:`` of its
    ``@RG`` header line; a segment GATK gives no copy-ratio estimate (``NaN`` with ``NUM_POINTS_COPY_RATIO``
    0: allele-fraction points only) keeps ``log2`` NaN, for the caller to count. ``chrom`` is harmonised
    (:func:`harmonise_chromosomes`); segments on other contigs have ``chrom == ""``. A start after the end
    (for 1-based files, a start below 1), a non-whole position and any other log2 ratio that is not a finite
    number stop the run naming every line (ten, and a count).
    """
    path = Path(path)
    what = "copy-number segment file"
    if not path.is_file():
        raise MultimodalError(f"{path}: {what} not found")
    gatk_sample = _gatk_sample(path)
    frame = read_table(path, what=what, skip_leading="@" if gatk_sample is not None else None)
    lower = {c.lower(): c for c in frame.columns}
    cns = gatk_sample is None and "log2" in lower and not any(a in lower for a in SEG_COLUMNS["sample"])
    aliases = GATK_COLUMNS if gatk_sample is not None else CNS_COLUMNS if cns else SEG_COLUMNS
    found = {key: next((lower[a] for a in names if a in lower), None) for key, names in aliases.items()}
    missing = [key for key, column in found.items() if column is None]
    if missing:
        diagnose_table(path, what=what)
        raise MultimodalError(
            f"{path}: no {', '.join(missing)} column in the {what}; a .seg has ID (or Sample, GDC_Aliquot), chrom "
            f"(or Chromosome), loc.start (or Start), loc.end (or End), seg.mean (or Segment_Mean); a CNVkit .cns "
            f"has chromosome, start, end, log2; a GATK .seg has CONTIG, START, END and MEAN_LOG2_COPY_RATIO (or "
            f"LOG2_COPY_RATIO_POSTERIOR_50) (found {', '.join(map(repr, frame.columns[:6]))})"
        )
    check_rows(frame, path, what=what)
    if gatk_sample is not None:
        samples = pd.Series(gatk_sample, index=frame.index)
    elif cns:
        name = path.name
        sample = name[: -len(".call.cns")] if name.endswith(".call.cns") else name.split(".cns")[0]
        samples = pd.Series(sample, index=frame.index)
    else:
        samples = frame[found["sample"]].str.strip()
        raise_problems(path, id_problems(samples[samples == ""], column=found["sample"]))
    start = _integers(frame[found["start"]], path, column=found["start"])
    end = _integers(frame[found["end"]], path, column=found["end"])
    if not cns:
        below = frame[found["start"]][start < 1]
        raise_problems(
            path,
            line_problem(below, one=found["start"], many="starts", problem="is below 1 (a .seg is 1-based)"),
        )
        start = start - 1  # 1-based, end included -> 0-based half-open
    reversed_ = (frame[found["start"]] + "-" + frame[found["end"]])[end <= start]
    raise_problems(
        path,
        line_problem(
            reversed_, one="segment", many="segments", problem="ends before it starts", hint=f" in the {what}"
        ),
    )
    log2 = pd.to_numeric(frame[found["log2"]].str.strip(), errors="coerce")
    no_estimate = pd.Series(False, index=frame.index)
    if gatk_sample is not None and "num_points_copy_ratio" in lower:
        points = frame[lower["num_points_copy_ratio"]].str.strip()
        no_estimate = (points == "0") & (frame[found["log2"]].str.strip().str.lower() == "nan")
    raise_problems(
        path,
        line_problem(
            frame[found["log2"]][~np.isfinite(log2) & ~no_estimate],
            one=found["log2"],
            many=f"{found['log2']} values",
            problem="is not a finite number (the segment's mean log2 ratio)",
        ),
    )
    chrom = harmonise_chromosomes(frame[found["chrom"]], path, what=what)
    segments = pd.DataFrame({"sample": samples, "chrom": chrom, "start": start, "end": end, "log2": log2})
    kind = "GATK .seg (1-based)" if gatk_sample is not None else "CNVkit .cns (0-based)" if cns else ".seg (1-based)"
    return segments, kind


def read_gene_bed(path: str | Path) -> pd.DataFrame:
    """A gene BED (chrom, start, end, name; more columns ignored) as ``name, chrom, start, end`` by line.

    BED is 0-based half-open and has no header: ``#``, ``track`` and ``browser`` lines are skipped.
    Fewer than four fields, a non-whole position, an empty interval (end not after start), an empty name
    or an unknown chromosome name stop the run naming the lines.
    """
    path = Path(path)
    what = "gene BED"
    if not path.is_file():
        raise MultimodalError(f"{path}: {what} not found")
    rows, lines = [], []
    try:
        with open_text(path) as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip() or text.startswith(("#", "track", "browser")):
                    continue
                fields = text.rstrip("\r\n").split("\t")
                if len(fields) < 4:
                    diagnose_table(path, what=what)
                    raise MultimodalError(
                        f"{path}: line {number}: {len(fields)} tab-separated field(s); a gene BED needs chrom, "
                        "start, end, name"
                    )
                rows.append(fields[:4])
                lines.append(number)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        diagnose_table(path, what=what, cause=exc)
        raise MultimodalError(f"{path}: cannot read {what}: {exc}") from exc
    if not rows:
        raise MultimodalError(f"{path}: {what} has no genes")
    frame = pd.DataFrame(rows, columns=["chrom", "start", "end", "name"], index=pd.Index(lines, name="line"))
    start = _integers(frame["start"], path, column="start", hint=" (a header line? BED has none: start it with #)")
    end = _integers(frame["end"], path, column="end")
    empty = (frame["start"] + "-" + frame["end"])[end <= start]
    raise_problems(path, line_problem(empty, one="gene", many="genes", problem="does not end after it starts"))
    names = frame["name"].str.strip()
    raise_problems(path, id_problems(names[names == ""], column="name"))
    chrom = harmonise_chromosomes(frame["chrom"], path, what=what)
    return pd.DataFrame({"name": names, "chrom": chrom, "start": start, "end": end})


def call_thresholds(values: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """GISTIC-like calls from log2 ratios and four ascending cut points ``t1 < t2 < t3 < t4``.

    -2 at or below t1, -1 at or below t2, 2 at or above t4, 1 at or above t3, else 0 (a value on a
    threshold takes the call beyond it); a missing value stays missing.
    """
    t1, t2, t3, t4 = thresholds
    calls = np.select([values <= t1, values <= t2, values >= t4, values >= t3], [-2.0, -1.0, 2.0, 1.0], default=0.0)
    return np.where(np.isnan(values), np.nan, calls).astype(np.float32)


def _overlap_means(
    starts: np.ndarray, ends: np.ndarray, log2: np.ndarray, genes: tuple[np.ndarray, np.ndarray, np.ndarray], n: int
) -> np.ndarray:
    """One sample's length-weighted mean log2 ratio for each of ``n`` genes (NaN where no segment overlaps it).

    ``starts``/``ends``: the sample's segments, sorted, as genome-wide half-open coordinates (chromosome x
    stride + position); ``genes``: the BED lines' starts and ends likewise (sorted by start) and each line's
    gene code. Hand-written rather than bioframe/pyranges (neither installed): one sample's segments do not
    overlap (checked before), so their ends are sorted too and two ``searchsorted`` calls give every gene's
    run of overlapping segments, vectorised over all genes, with no new dependency. The mean is taken as
    one overlapping segment's value plus the weighted mean difference from it, so a gene inside a single
    segment (or segments of one value) gets that value exactly, not ``(L * v) / L`` rounded across a
    threshold.
    """
    gstart, gend, codes = genes
    first = np.searchsorted(ends, gstart, side="right")  # first segment ending after the gene starts
    stop = np.searchsorted(starts, gend, side="left")  # segments starting before the gene ends
    count = np.maximum(stop - first, 0)
    line = np.repeat(np.arange(len(gstart)), count)
    seg = np.repeat(first - np.cumsum(count) + count, count) + np.arange(count.sum())
    overlap = (np.minimum(ends[seg], gend[line]) - np.maximum(starts[seg], gstart[line])).astype(np.float64)
    gene = codes[line]
    reference = np.zeros(n)
    reference[gene] = log2[seg]  # any one of the gene's segments
    weighted = np.bincount(gene, weights=overlap * (log2[seg] - reference[gene]), minlength=n)
    covered = np.bincount(gene, weights=overlap, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(covered > 0, reference + weighted / covered, np.nan)


def segment_copy_number(
    segments: Sequence[str | Path],
    genes_bed: str | Path,
    *,
    patients: pd.Index,
    thresholds: Sequence[float] | None = None,
    sample_names: Mapping[str, str] | None = None,
) -> anndata.AnnData:
    """Patients x genes copy number from segment files and a gene BED: the ``cnv`` modality.

    Per gene (a BED name; several lines of one name, e.g. PAR genes on X and Y or a gene's exons, are
    pooled), the mean log2 ratio of the segments overlapping it, each weighted by the bases it shares
    with the gene; the bases no segment covers do not count. A gene no segment of a sample overlaps is
    missing (NaN) for that patient, counted in ``obs['cnv_genes_missing']``, never 0. With
    ``thresholds`` (four ascending log2 cut points) the value is the call of :func:`call_thresholds`.
    Samples are matched to patients as in :func:`copy_number_matrix` (``sample_names``: the sheet's
    ``cnv_sample``, e.g. a GDC aliquot UUID); overlapping segments of one sample
    and a sample in two files stop the run. Segments and genes on other contigs, genes no patient has a
    value for and genes with one value in every patient are counted in ``uns['ingest']``.
    """
    import anndata as ad

    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        if len(thresholds) != 4 or any(b <= a for a, b in itertools.pairwise(thresholds)):
            raise MultimodalError(
                f"copy_number.thresholds: {thresholds} is not four ascending log2 ratios "
                "(deep deletion, deletion, gain, amplification cut points, e.g. [-1.1, -0.25, 0.2, 0.7])"
            )
    genes_bed = Path(genes_bed)
    genes = read_gene_bed(genes_bed)
    parts, formats, owner = [], {}, {}
    for file in map(Path, segments):
        frame, formats[str(file)] = read_segments(file)
        for sample in frame["sample"].unique():
            if sample in owner:
                raise MultimodalError(f"{file}: sample {sample!r} also has segments in {owner[sample]}")
            owner[sample] = file
        parts.append(frame.assign(file=str(file), line=frame.index))
    table = pd.concat(parts, ignore_index=True)
    no_estimate = table["log2"].isna()  # GATK segments with allele-fraction points only (read_segments)
    table = table[~no_estimate]
    other_segments = int((table["chrom"] == "").sum())
    other_genes = genes["chrom"] == ""
    table = table[table["chrom"] != ""]
    genes = genes[~other_genes]
    order = {c: i for i, c in enumerate(sorted(set(genes["chrom"]) | set(table["chrom"])))}
    for frame in (table, genes):
        offset = frame["chrom"].map(order).to_numpy(np.int64) * _STRIDE
        frame["gstart"] = offset + frame["start"].to_numpy(np.int64)
        frame["gend"] = offset + frame["end"].to_numpy(np.int64)
    table = table.sort_values(["sample", "gstart"], kind="stable")
    same = table["sample"].to_numpy()[1:] == table["sample"].to_numpy()[:-1]
    clash = np.flatnonzero(same & (table["gstart"].to_numpy()[1:] < table["gend"].to_numpy()[:-1]))
    if len(clash):
        a, b = table.iloc[clash[0]], table.iloc[clash[0] + 1]

        def where(row: pd.Series) -> str:
            return f"line {row['line']} ({row['chrom']}:{row['start'] + 1}-{row['end']})"

        raise MultimodalError(
            f"{a['file']}: segments of sample {a['sample']!r} overlap: {where(a)} and {where(b)} "
            f"({len(clash)} overlapping pair(s)); give one segmentation per sample"
        )
    names = pd.Index(pd.unique(genes["name"]))
    codes = names.get_indexer(genes["name"])
    first = genes.groupby(codes).first()  # each gene's first BED line, for its locus
    ordered = np.argsort(genes["gstart"].to_numpy(), kind="stable")  # sorted queries search faster
    gene_lines = (genes["gstart"].to_numpy()[ordered], genes["gend"].to_numpy()[ordered], codes[ordered])
    sample_ids = list(owner)
    claimed, n_by_prefix = patient_samples(patients, sample_ids, sample_names, what="segment sample", file_of=owner.get)
    if not claimed:
        raise MultimodalError(
            f"{owner[sample_ids[0]]}: none of the {len(sample_ids)} segment samples is a patient of the samples "
            f"sheet (segments: {sample_ids[0]!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    kept_samples = [s for s in sample_ids if s in claimed]
    by_sample = table.groupby("sample", sort=False).indices  # positions: runs of the sorted table
    starts, ends = table["gstart"].to_numpy(), table["gend"].to_numpy()
    log2 = table["log2"].to_numpy(dtype=np.float64)
    values = np.full((len(kept_samples), len(names)), np.nan, dtype=np.float32)  # float32: the store's X
    for row, sample in enumerate(kept_samples):
        if sample in by_sample:  # a sample whose every segment lies on other contigs has none here
            at = by_sample[sample]
            means = _overlap_means(starts[at], ends[at], log2[at], gene_lines, len(names))
            values[row] = call_thresholds(means, thresholds) if thresholds else means  # called in float64
    no_value = np.isnan(values).all(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns, counted as no_value
        spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    constant = ~no_value & (spread == 0) if len(kept_samples) > 1 else np.zeros(len(names), bool)
    keep = ~no_value & ~constant
    values = values[:, keep]
    locus = (first["chrom"] + ":" + (first["start"] + 1).astype(str) + "-" + first["end"].astype(str)).to_numpy()
    lines_per_gene = np.bincount(codes, minlength=len(names))
    missing = np.isnan(values).sum(axis=1)
    adata = ad.AnnData(
        X=values,
        obs=pd.DataFrame(
            {"cnv_sample": kept_samples, "cnv_genes_missing": missing.astype(np.int64)},
            index=pd.Index([claimed[s] for s in kept_samples], name="patient_id"),
        ),
        var=pd.DataFrame(
            {
                "gene_symbol": names[keep].to_numpy(),
                "locus": locus[keep],
                "feature_class": "gene_copy_number",
                "source": "segments_thresholded_calls" if thresholds else "segments_weighted_log2",
            },
            index=pd.Index([f"{s}{COPY_NUMBER_SUFFIX}" for s in names[keep]], name="feature"),
        ),
    )
    adata.uns["ingest"] = {
        "modality": "cnv",
        "params": {
            "segments": [str(s) for s in segments],
            "formats": sorted(set(formats.values())),
            "genes_bed": str(genes_bed),
            "rule": "length-weighted mean log2 ratio of the overlapping segments; no overlap -> missing",
            "thresholds": list(thresholds) if thresholds else None,
        },
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_copy_number": int(len(patients) - len(kept_samples)),
            "cnv_samples_not_in_samples_sheet": int(len(sample_ids) - len(kept_samples)),
            "cnv_samples_matched_by_barcode_prefix": n_by_prefix,
            "segments_on_other_contigs": other_segments,
            "segments_without_copy_ratio_estimate": int(no_estimate.sum()),
            "gene_bed_lines_on_other_contigs": int(other_genes.sum()),
            "gene_bed_lines_pooled_into_one_gene": int((lines_per_gene[lines_per_gene > 1]).sum()),
            "genes_without_segments_in_any_patient": int(no_value.sum()),
            "genes_constant_in_all_patients": int(constant.sum()),
            "gene_values_missing": int(missing.sum()),
        },
    }
    log.info("cnv: %d patients x %d genes from %d segment file(s) and %s", *adata.shape, len(segments), genes_bed)
    return adata
