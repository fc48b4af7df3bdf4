"""A multi-sample cohort VCF/BCF as VCF Zarr, and its per-gene carrier matrix by array operations.

``vcf_to_zarr`` writes the VCF Zarr layout (VCF Zarr 0.5 as bio2zarr writes it: ``call_genotype`` variants x
samples x ploidy, ``variant_allele``, ``variant_filter``, ``variant_CSQ`` ...), Zarr format 3, chunked along
variants and samples, atomically. By default only the fields the matrix needs are kept, read in one pass by
cyvcf2 (htslib) a chunk of variants at a time, the previous chunk compressed and written by a second thread
(:func:`_write_vcf_zarr`); ``fields="all"`` keeps every field through ``bio2zarr.vcf.convert``.

``carrier_matrix`` reads it back: the consequence annotation (one string per variant and entry, no sample
dimension) is parsed for the whole cohort at once with pyarrow string kernels into (record, gene) pairs with
the ALT alleles that alter the protein in that gene (the VEP HIGH/MODERATE terms and SnpEff's equivalents of
:mod:`multimodal.ingest.variants`, the same FILTER set, gene allow-list and transcript rule). The genotypes are
then reduced one (variants, samples) chunk at a time (``dask.array.from_zarr`` blocks): a sample counts once
per record and gene it carries a protein-altering ALT allele of (``0/1``, ``1/1``, ``1/2``, a haploid ``1``
all count once; a missing call ``./.`` does not, and is counted), summed per gene by a sparse (genes x pairs)
product. Chunks are computed a batch at a time on the Dask scheduler in use (threads by default; a
``distributed`` cluster when ``scheduler`` names its address), so memory is bounded by the chunk size, not the
cohort size. ``cohort_vcf_carriers`` does both in one pass: each chunk of variants is reduced by the same
functions from the arrays just written, in the writer's thread while the next chunk is read (the default of
``multimodal ingest cohort-vcf``; a Dask cluster or ``fields: all`` convert first, then reduce).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.variants import (
    CONSEQUENCE_TERMS,
    PROTEIN_ALTERING,
    SNPEFF_ANN_FIELDS,
    VariantFilters,
    bcftools_csq_message,
)

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

CARRIER_SUFFIX = "_carrier"
#: FORMAT keys the one-pass writer can keep per call (Integer): the depth and allele-fraction filters' sources.
PER_CALL_FIELDS = ("DP", "AD")
#: The carrier calls the depth and VAF thresholds leave out, by reason (uns['ingest']['exclusions']).
_CALL_EXCLUSIONS = (
    "carrier_calls_missing_depth",
    "carrier_calls_below_min_depth",
    "carrier_calls_missing_vaf",
    "carrier_calls_below_min_vaf",
)
#: htslib's missing and end-of-vector integers, as cyvcf2 returns them.
_INT32_MISSING, _INT32_VECTOR_END = -(2**31), -(2**31) + 1


def vcf_to_zarr(
    vcf: str | Path,
    out: str | Path,
    *,
    variants_chunk_size: int = 10_000,
    samples_chunk_size: int = 1_000,
    workers: int = 0,
    fields: str | Sequence[str] = ("CSQ",),
    format_fields: Sequence[str] = (),
    reducer: _CarrierReducer | None = None,
) -> Path:
    """Convert a cohort VCF/BCF (bgzipped and indexed) to VCF Zarr, Zarr format 3, atomically.

    ``fields``: the INFO keys kept beside the fixed fields and GT (default the consequence annotation):
    written in one pass by :func:`_write_vcf_zarr`. ``"all"`` keeps every INFO and FORMAT field through
    ``bio2zarr.vcf.convert`` (``workers`` processes), many times slower (see benchmarks/README.md).
    ``workers`` is otherwise htslib's BGZF decompression threads (at least 1). ``format_fields``: per-call
    FORMAT keys kept as ``call_<KEY>`` where the header declares them (:data:`PER_CALL_FIELDS`: ``DP``, ``AD``, for
    the depth and allele-fraction filters of :func:`carrier_matrix`). ``reducer``: see :func:`cohort_vcf_carriers`.
    """
    from multimodal.fileio import atomic_path
    from multimodal.ingest.variants import check_variant_file_complete

    vcf, out = Path(vcf), Path(out)
    if not vcf.is_file():
        raise MultimodalError(f"{vcf}: cohort VCF not found")
    check_variant_file_complete(vcf)
    if not any(Path(f"{vcf}{s}").is_file() for s in (".tbi", ".csi")):
        raise MultimodalError(f"{vcf}: no .tbi or .csi index beside it; index it: bcftools index {vcf.name}")
    with atomic_path(out) as tmp:
        if fields == "all":
            if reducer is not None:
                raise ValueError("a reducer needs the one-pass writer, not fields='all'")
            from bio2zarr import vcf as b2z

            try:
                b2z.convert(
                    [str(vcf)],
                    str(tmp),
                    variants_chunk_size=variants_chunk_size,
                    samples_chunk_size=samples_chunk_size,
                    worker_processes=workers,
                    zarr_format=3,
                )
            except (ValueError, OSError, KeyError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MultimodalError(f"{vcf}: cannot convert to VCF Zarr: {message}") from exc
        else:
            _write_vcf_zarr(
                vcf,
                tmp,
                info_fields=[fields] if isinstance(fields, str) else list(fields),
                format_fields=list(format_fields),
                variants_chunk_size=variants_chunk_size,
                samples_chunk_size=samples_chunk_size,
                threads=max(1, workers),
                reducer=reducer,
            )
    return out


class _Column:
    """One VCF Zarr array written a chunk of variants at a time; its non-variant dimensions may grow."""

    def __init__(
        self,
        group,
        name: str,
        dtype,
        dims: tuple[str, ...],
        shape: tuple[int, ...],
        chunks,
        fill,
        *,
        compressor: dict,
        description: str = "",
    ) -> None:
        from bio2zarr.zarr_utils import make_compressor

        self.fill = fill
        self.array = group.create_array(
            name,
            shape=(0, *shape),
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            compressors=[make_compressor(compressor, 3)],
            dimension_names=list(dims),
            attributes={"description": description},
        )

    def write(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (variants first) at ``start``, widening the other dimensions when it is wider."""
        shape = self.array.shape
        wider = tuple(max(a, b) for a, b in zip(shape[1:], block.shape[1:], strict=True))
        self.array.resize((start + len(block), *wider))
        if block.shape[1:] != wider:  # pad a narrower block with the fill value (VCF Zarr: "" / -2)
            padded = np.full((len(block), *wider), self.fill, dtype=block.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        self.array[start : start + len(block)] = block


def _header_lines(reader, kind: str) -> list[dict]:
    return [h.info() for h in reader.header_iter() if h.type == kind]


def _write_vcf_zarr(
    vcf: Path,
    out: Path,
    *,
    info_fields: list[str],
    variants_chunk_size: int,
    samples_chunk_size: int,
    threads: int = 1,
    format_fields: list[str] | None = None,
    reducer: _CarrierReducer | None = None,
) -> None:
    """One pass over the VCF with cyvcf2 (htslib), writing the VCF Zarr arrays a chunk of variants at a time
    (and handing each written chunk to ``reducer``, in the writer thread).

    Written here rather than by ``bio2zarr.vcf.convert`` because that converter explodes every record
    into an intermediate columnar store first (a pickled Python object per value), then encodes it:
    measured 2026-12-02 at 500 samples x 20,000 variants, 15 CPU-s (explode 11.5, encode 5) against 0.8
    for ``bcftools query -f '[%GT]'`` and 0.9 for this loop's reading. The arrays, dtypes, dimension names,
    missing (-1, ".") and fill (-2, "") values and the region index are bio2zarr's (VCF Zarr 0.5), so sgkit
    and bio2zarr's own ``verify`` read the result; the tests compare it with ``bio2zarr.vcf.convert``'s array by array.
    Memory: one chunk of variants x all samples being read, one being written (a background thread).
    """
    from concurrent.futures import ThreadPoolExecutor

    import zarr
    from bio2zarr import constants, provenance
    from bio2zarr.vcz import VcfZarrIndexer
    from bio2zarr.zarr_utils import (
        DEFAULT_COMPRESSOR_BOOL_CONFIG,
        DEFAULT_COMPRESSOR_CONFIG,
        DEFAULT_COMPRESSOR_GENOTYPES_CONFIG,
        make_compressor,
    )
    from cyvcf2 import VCF

    try:
        reader = VCF(str(vcf), gts012=False, strict_gt=False, threads=threads)  # htslib's BGZF decompression
    except Exception as exc:  # cyvcf2 raises OSError or a bare Exception for a file htslib rejects
        raise MultimodalError(f"{vcf}: cannot read as VCF/BCF: {exc}") from exc
    info = {h["ID"]: h for h in _header_lines(reader, "INFO")}
    for key in info_fields:
        if key not in info:
            bcsq = next((m for k, h in info.items() if (m := bcftools_csq_message(k, h.get("Description", "")))), "")
            raise MultimodalError(
                f"{vcf}: INFO/{key} is not declared in the VCF header (kept fields: {info_fields})"
                + (f"; {bcsq}" if bcsq else "")
            )
        if info[key].get("Type") != "String":
            raise MultimodalError(
                f"{vcf}: INFO/{key} is Type={info[key].get('Type')}; only String INFO fields are kept by the fast "
                "converter (cohort_vcf fields: all keeps every field through bio2zarr)"
            )
    declared = {h["ID"]: h for h in _header_lines(reader, "FORMAT")}
    unknown = sorted(set(format_fields or ()) - set(PER_CALL_FIELDS))
    if unknown:
        raise MultimodalError(
            f"FORMAT fields {unknown} cannot be kept by the fast converter (it keeps {', '.join(PER_CALL_FIELDS)})"
        )
    per_call = [key for key in PER_CALL_FIELDS if key in (format_fields or ()) and key in declared]
    for key in per_call:
        if declared[key].get("Type") != "Integer":
            raise MultimodalError(f"{vcf}: FORMAT/{key} is Type={declared[key].get('Type')}, expected Integer")
    samples = list(reader.samples)
    contigs = list(reader.seqnames)
    try:
        lengths = list(reader.seqlens)
    except Exception:  # noqa: BLE001 - cyvcf2 raises a bare Exception when the header has no lengths
        lengths = []
    filter_lines = _header_lines(reader, "FILTER")
    filter_ids = ["PASS"] + [h["ID"] for h in filter_lines if h["ID"] != "PASS"]
    filter_description = {h["ID"]: h.get("Description", "").strip('"') for h in filter_lines}
    filter_at = {f: k for k, f in enumerate(filter_ids)}
    contig_at = {c: k for k, c in enumerate(contigs)}
    if reducer is not None:
        reducer.begin(
            samples=samples,
            filter_ids=filter_ids,
            descriptions={key: info[key].get("Description", "").strip('"') for key in info_fields},
            per_call=per_call,
        )
    n_samples, vchunk = len(samples), variants_chunk_size
    schunk = max(1, min(samples_chunk_size, n_samples or 1))

    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    meta = [tuple(line.lstrip("#").split("=", 1)) for line in reader.raw_header.splitlines() if line.startswith("##")]
    root.attrs.update(
        {
            "vcf_zarr_version": "0.5",
            "source": f"multimodal (cyvcf2 one-pass writer; VCF Zarr layout of bio2zarr-{provenance.__version__})",
            "vcf_meta_information": [list(m) for m in meta if len(m) == 2 and not m[1].startswith("<")],
        }
    )
    string = np.dtypes.StringDType()
    plain = {"compressor": DEFAULT_COMPRESSOR_CONFIG}
    # the annotation strings (hundreds of bytes a record) at zstd level 3, not bio2zarr's 7: measured on 5,000
    # records of the benchmark's CSQ, 7x less CPU (0.012 against 0.088 s), 8.0 % of the size against 6.6 %
    annotation = {**DEFAULT_COMPRESSOR_CONFIG, "clevel": 3}

    def constant(name: str, values: list, dtype, dim: str, chunks=None) -> None:
        root.create_array(
            name,
            data=np.asarray(values, dtype=dtype),
            chunks=chunks or (max(1, len(values)),),
            dimension_names=[dim],
            compressors=[make_compressor(DEFAULT_COMPRESSOR_CONFIG, 3)],
        )

    constant("sample_id", samples, string, "samples", (schunk,))
    constant("contig_id", contigs, string, "contigs")
    if lengths:  # as bio2zarr: -1 for a contig the header gives no length
        constant("contig_length", lengths, np.int64, "contigs")
    constant("filter_id", filter_ids, string, "filters")
    constant(
        "filter_description", [filter_description.get(f, "All filters passed") for f in filter_ids], string, "filters"
    )
    contig_dtype = np.int8 if len(contigs) < 127 else np.int16 if len(contigs) < 32_767 else np.int32
    descriptions = {
        "variant_contig": "An identifier from the reference genome or an angle-bracketed ID string pointing to a "
        "contig in the assembly file",
        "variant_position": "The reference position",
        "variant_length": "The length of the variant measured in bases",
        "variant_id": "List of unique identifiers where applicable",
        "variant_allele": "List of the reference and alternate alleles",
        "variant_quality": "Phred-scaled quality score",
        "variant_filter": "Filter status of the variant",
    }
    boolean = {"compressor": DEFAULT_COMPRESSOR_BOOL_CONFIG}

    def column(name, dtype, dims, shape, fill, **kw) -> _Column:
        # alleles and INFO entries: one chunk column holds up to 8 / 32 (the shape grows as records need, the
        # chunk grid with it), so a chunk of variants stays one object per array in the usual case
        widths = {"alleles": 8, "ploidy": 2, "samples": schunk}
        chunks = (vchunk, *[widths.get(d, 32) for d in dims[1:]])
        kw = {**plain, **kw}
        return _Column(root, name, dtype, dims, shape, chunks, fill, description=descriptions.get(name, ""), **kw)

    columns = {
        "variant_contig": column("variant_contig", contig_dtype, ("variants",), (), 0),
        "variant_position": column("variant_position", np.int32, ("variants",), (), 0),
        "variant_length": column("variant_length", np.int32, ("variants",), (), 0),
        "variant_id": column("variant_id", string, ("variants",), (), ""),
        "variant_id_mask": column("variant_id_mask", bool, ("variants",), (), False, **boolean),
        "variant_quality": column("variant_quality", np.float32, ("variants",), (), constants.FLOAT32_FILL),
        "variant_allele": column("variant_allele", string, ("variants", "alleles"), (2,), ""),
        "variant_filter": column("variant_filter", bool, ("variants", "filters"), (len(filter_ids),), False, **boolean),
    }
    scalar = {key for key in info_fields if info[key].get("Number") == "1"}  # one value a record: 1-D, as bio2zarr
    for key in info_fields:
        dims, shape = (("variants",), ()) if key in scalar else (("variants", f"INFO_{key}_dim"), (1,))
        columns[f"variant_{key}"] = column(f"variant_{key}", string, dims, shape, "", compressor=annotation)
        columns[f"variant_{key}"].array.attrs["description"] = info[key].get("Description", "").strip('"')
    # the per-call arrays at zstd level 1, not bio2zarr's 7: measured on 5,000 x 1,000 diploid calls, 12x less
    # CPU to compress (0.022 against 0.27 s), 6.2 % of the size against 5.5 %, the same decoding speed; the
    # codec is recorded in each array's metadata, so any Zarr reader decodes it
    genotypes = {"compressor": {**DEFAULT_COMPRESSOR_GENOTYPES_CONFIG, "clevel": 1}}
    calls_boolean = {"compressor": {**DEFAULT_COMPRESSOR_BOOL_CONFIG, "clevel": 1}}
    gt_dims = ("variants", "samples", "ploidy")
    columns["call_genotype"] = column("call_genotype", np.int8, gt_dims, (n_samples, 2), -2, **genotypes)
    columns["call_genotype_mask"] = column("call_genotype_mask", bool, gt_dims, (n_samples, 2), True, **calls_boolean)
    columns["call_genotype_phased"] = column(
        "call_genotype_phased", bool, ("variants", "samples"), (n_samples,), False, **calls_boolean
    )
    for key in per_call:  # bio2zarr's names and missing (-1) / fill (-2) values; AD has one value per allele
        dims = ("variants", "samples") if key == "DP" else ("variants", "samples", "alleles")
        shape = (n_samples,) if key == "DP" else (n_samples, 2)
        columns[f"call_{key}"] = column(f"call_{key}", np.int32, dims, shape, -2, **genotypes)
        columns[f"call_{key}"].array.attrs["description"] = declared[key].get("Description", "").strip('"')

    def flush(start: int, block: dict[str, np.ndarray]) -> None:
        calls = block.pop("calls")  # cyvcf2's int16 layout, converted here, beside the reading thread
        for key in scalar:
            block[f"variant_{key}"] = block[f"variant_{key}"][:, 0]
        gt = calls[:, :, :-1].astype(np.int8)
        block |= {"call_genotype": gt, "call_genotype_mask": gt < 0, "call_genotype_phased": calls[:, :, -1] != 0}
        for name, values in block.items():
            columns[name].write(start, values)
        if reducer is not None:
            reducer.add(start, block)

    try:
        pending = None
        start = 0
        records = iter(reader)
        buffers = [None, None]  # two chunks of calls, reused: one being read while the other is written
        with ThreadPoolExecutor(max_workers=1) as writer:
            for turn in itertools.count():
                block, buffers[turn % 2] = _read_chunk(
                    records,
                    buffers[turn % 2],
                    vchunk,
                    n_samples,
                    info_fields,
                    contig_at,
                    filter_at,
                    vcf,
                    start,
                    per_call=per_call,
                )
                if block is None:
                    break
                if pending is not None:
                    pending.result()
                pending = writer.submit(flush, start, block)
                start += len(block["variant_position"])
            if pending is not None:
                pending.result()
    finally:
        reader.close()
    VcfZarrIndexer(str(out)).create_index()


def _read_chunk(
    records,
    calls: np.ndarray | None,
    size: int,
    n_samples: int,
    info_fields: list[str],
    contig_at: dict,
    filter_at: dict,
    vcf: Path,
    first: int,
    *,
    per_call: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray] | None, np.ndarray]:
    """The next ``size`` records as VCF Zarr column blocks (None at the end of the file), the calls read into
    ``calls`` (size x samples x ploidy + 1, int16, reused between chunks; grown for a higher ploidy); the
    ``per_call`` FORMAT keys (Integer) as ``call_<KEY>`` blocks, -1 missing, -2 fill."""
    from bio2zarr import constants

    contig = np.zeros(size, dtype=np.int32)
    position = np.zeros(size, dtype=np.int32)
    length = np.zeros(size, dtype=np.int32)
    quality = np.full(size, constants.FLOAT32_MISSING, dtype=np.float32)
    ids: list[str] = []
    alleles: list[list[str]] = []
    filters = np.zeros((size, len(filter_at)), dtype=bool)
    info: dict[str, list] = {key: [] for key in info_fields}
    call_values: dict[str, list] = {key: [] for key in per_call}
    if calls is None:
        calls = np.empty((size, n_samples, 3), dtype=np.int16)  # cyvcf2's layout: the alleles, then phased
    ploidy = calls.shape[2] - 1
    n = 0
    for record in records:
        contig[n] = contig_at[record.CHROM]
        position[n] = record.POS
        length[n] = record.end - record.start
        if record.QUAL is not None:
            quality[n] = record.QUAL
        ids.append(record.ID or ".")
        record_alleles = [record.REF, *record.ALT]
        if len(record_alleles) > 127:
            raise MultimodalError(
                f"{vcf}: record {first + n + 1} ({record.CHROM}:{record.POS}) has {len(record_alleles) - 1} ALT "
                "alleles; the converter stores allele indices as int8 (at most 126 ALTs)"
            )
        alleles.append(record_alleles)
        for name in record.FILTERS:
            try:
                filters[n, filter_at[name]] = True
            except KeyError:
                raise MultimodalError(
                    f"{vcf}: record {first + n + 1} ({record.CHROM}:{record.POS}): FILTER {name!r} is not declared "
                    "in the header"
                ) from None
        for key in info_fields:
            value = record.INFO.get(key)
            info[key].append(None if value is None else str(value).split(","))
        for key in per_call:
            call_values[key].append(record.format(key) if n_samples else None)  # samples x values, or None
        genotype = record.genotype if n_samples else None
        if genotype is not None:
            row = genotype.array()
            if row.shape[1] == ploidy + 1:
                calls[n] = row  # the usual case: one contiguous copy
            else:
                p = row.shape[1] - 1
                if p > ploidy:
                    grown = np.full((size, n_samples, p + 1), -2, dtype=np.int16)
                    grown[:, :, :ploidy], grown[:, :, p] = calls[:, :, :ploidy], calls[:, :, ploidy]
                    calls, ploidy = grown, p
                calls[n, :, :p], calls[n, :, p:ploidy], calls[n, :, ploidy] = row[:, :p], -2, row[:, p]
        elif n_samples:
            calls[n, :, :ploidy], calls[n, :, ploidy] = -1, 0  # no GT: missing calls, unphased
        n += 1
        if n == size:
            break
    if n == 0:
        return None, calls
    width = max(len(a) for a in alleles)
    allele_block = np.full((n, width), "", dtype=np.dtypes.StringDType())
    for k, a in enumerate(alleles):
        allele_block[k, : len(a)] = a
    block = {
        "variant_contig": contig[:n],
        "variant_position": position[:n],
        "variant_length": length[:n],
        "variant_id": np.array(ids, dtype=np.dtypes.StringDType()),
        "variant_id_mask": np.array([i == "." for i in ids]),
        "variant_quality": quality[:n],
        "variant_allele": allele_block,
        "variant_filter": filters[:n],
    }
    for key, values in info.items():
        width = max((len(v) for v in values if v is not None), default=1)
        values_block = np.full((n, width), "", dtype=np.dtypes.StringDType())
        for k, v in enumerate(values):
            values_block[k, : len(v) if v is not None else width] = v if v is not None else "."
        block[f"variant_{key}"] = values_block
    for key, values in call_values.items():
        width = 1 if key == "DP" else max((v.shape[1] for v in values if v is not None), default=2)
        values_block = np.full((n, n_samples, width), -1, dtype=np.int32)  # a record without the key: missing
        for k, v in enumerate(values):
            if v is not None:
                values_block[k, :, : v.shape[1]] = v[:, :width]
                values_block[k, :, v.shape[1] :] = -2
        values_block[values_block == _INT32_MISSING] = -1
        values_block[values_block == _INT32_VECTOR_END] = -2
        block[f"call_{key}"] = values_block[:, :, 0] if key == "DP" else values_block
    block["calls"] = calls[:n]
    return block, calls


def _annotation_fields(description: str, key: str, path: Path) -> tuple:
    """Positions of Allele, Consequence, SYMBOL, Gene, CANONICAL/MANE in the annotation, from its header Description."""
    if message := bcftools_csq_message(key, description):
        raise MultimodalError(f"{path}: {message}")
    if "Format:" in description:
        fields = [f.strip() for f in description.split("Format:", 1)[1].strip().split("|")]
    elif key == "ANN":
        fields = list(SNPEFF_ANN_FIELDS)
    else:
        raise MultimodalError(f"{path}: INFO/{key} declares no field list in the VCF header")
    names = {"Allele": ("Allele",), "Consequence": ("Consequence", "Annotation"), "SYMBOL": ("SYMBOL", "Gene_Name")}
    at = {}
    for what, options in names.items():
        found = [fields.index(o) for o in options if o in fields]
        if not found:
            raise MultimodalError(f"{path}: the INFO/{key} field list lacks {what}")
        at[what] = found[0]
    gene_at = next((fields.index(o) for o in ("Gene", "Gene_ID") if o in fields), at["SYMBOL"])
    canonical_at = fields.index("CANONICAL") if "CANONICAL" in fields else -1
    mane_at = next((fields.index(o) for o in ("MANE_SELECT", "MANE") if o in fields), -1)
    feature_at = next((fields.index(o) for o in ("Feature", "Feature_ID") if o in fields), -1)
    return at["Allele"], at["Consequence"], at["SYMBOL"], gene_at, (canonical_at, mane_at, feature_at, len(fields))


def _first_error(
    path: Path,
    key: str,
    positions: np.ndarray,
    rec: np.ndarray,
    number: np.ndarray,
    bad: np.ndarray,
    what: str,
    first: int = 0,
) -> MultimodalError:
    """The one-line error for the first bad annotation entry (in record order); ``first``: the number of
    records before ``positions[0]`` in the file."""
    k = int(np.flatnonzero(bad)[0])
    v = int(rec[k])
    return MultimodalError(
        f"{path}: record {first + v + 1} (position {positions[v]}): INFO/{key} entry {number[k]}{what}"
    )


def _pairs(
    store, path: Path, filters: VariantFilters, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], Counter]:
    """(record, gene, altering-allele lookup) pairs from the annotation; tallies of records left out.

    Vectorised over every annotation entry of the cohort at once (pyarrow string kernels, numpy and pandas
    group operations), not a Python loop per record: the entries are split on ``|`` into the fields the
    rule needs, the ``&``-joined consequence terms checked against the known ones, each entry's Allele
    matched to the record's ALT alleles, the transcript rule applied per record and gene.
    """
    name = f"variant_{key}"
    if name not in store:
        raise MultimodalError(f"{path}: no INFO/{key} consequence annotation in the cohort VCF")
    return _annotation_pairs(
        store[name][:],
        store["variant_allele"][:],
        [str(f) for f in store["filter_id"][:]],
        store["variant_filter"][:],
        store["variant_position"][:],
        description=str(store[name].attrs.get("description", "")),
        filters=filters,
        key=key,
        path=path,
    )


def _annotation_pairs(
    annotations: np.ndarray,
    alleles: np.ndarray,
    filter_ids: list[str],
    variant_filter: np.ndarray,
    positions: np.ndarray,
    *,
    description: str,
    filters: VariantFilters,
    key: str,
    path: Path,
    first: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], Counter]:
    """:func:`_pairs` on the VCF Zarr arrays of consecutive records (``first`` records before them in the file,
    for the error's record number): the whole cohort, or one chunk of variants as it is converted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    allele_at, consequence_at, symbol_at, gene_at, (canonical_at, mane_at, feature_at, n_fields) = _annotation_fields(
        description, key, path
    )
    annotations = annotations if annotations.ndim == 2 else annotations[:, None]
    alleles = alleles.astype(np.dtypes.StringDType())
    n_records, n_alleles = alleles.shape
    accepted = np.array([f in filters.filter for f in filter_ids])
    filtered = (variant_filter & ~accepted).any(axis=1)

    # every entry of a record that passed FILTER; "" pads a shorter list, "." is a record without the field
    present = (annotations != "") & (annotations != ".") & ~filtered[:, None]
    rec, column = np.nonzero(present)  # record order, then entry order within the record
    number = (np.cumsum(present, axis=1) - 1)[rec, column] + 1  # 1-based entry number within its record
    parts = pc.split_pattern(pa.array(annotations[rec, column].astype(object), type=pa.string()), "|")
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)

    def error(bad: np.ndarray, what: str) -> MultimodalError:
        return _first_error(path, key, positions, rec, number, bad, what, first)

    if (lengths != n_fields).any():
        bad = lengths != n_fields
        found = int(lengths[np.flatnonzero(bad)[0]])
        raise error(bad, f" has {found} '|'-separated fields, the header declares {n_fields}")

    def field(at: int) -> np.ndarray:
        return pc.utf8_trim_whitespace(pc.list_element(parts, at)).to_numpy(zero_copy_only=False).astype(str)

    terms = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(pc.list_element(parts, consequence_at), "&")))
    term_entry = pc.list_parent_indices(pc.split_pattern(pc.list_element(parts, consequence_at), "&")).to_numpy()
    known = pc.is_in(terms, value_set=pa.array(sorted(CONSEQUENCE_TERMS))).to_numpy(zero_copy_only=False)
    if not known.all():
        unknown_at = int(np.flatnonzero(~known)[0])
        bad = np.zeros(len(rec), dtype=bool)
        bad[term_entry[unknown_at]] = True
        raise error(bad, f": {terms[unknown_at].as_py()!r} is not a known consequence term")
    altering_term = pc.is_in(terms, value_set=pa.array(sorted(PROTEIN_ALTERING))).to_numpy(zero_copy_only=False)
    altering = np.bincount(term_entry[altering_term], minlength=len(rec)) > 0

    gene = field(symbol_at)
    if gene_at != symbol_at:
        gene = np.where(gene == "", field(gene_at), gene)
    # which ALT (1-based) each entry's Allele names: as written, else VEP's form with the shared first base
    # of an indel trimmed ("-" when nothing is left), else the only ALT of a bi-allelic record, else none (0)
    entry_allele = field(allele_at).astype(np.dtypes.StringDType())
    alts, ref = alleles[rec, 1:], alleles[rec, :1]
    same_first = (np.strings.str_len(alts) > 0) & (np.strings.slice(alts, 0, 1) == np.strings.slice(ref, 0, 1))
    trimmed = np.where(same_first, np.strings.slice(alts, 1, None), alts)
    trimmed = np.where((trimmed == "") & (alts != ""), "-", trimmed)
    n_alts = (alts != "").sum(axis=1)
    allele = np.zeros(len(rec), dtype=np.int64)
    for candidates in (trimmed, alts):  # the exact match wins: assigned last
        hit = (candidates == entry_allele[:, None]) & (alts != "")
        allele = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, allele)
    unmatched = ~((alts == entry_allele[:, None]) | (trimmed == entry_allele[:, None])).any(axis=1)
    allele = np.where(unmatched, np.where(n_alts == 1, 1, 0), allele)

    has_gene = gene != ""
    entries = pd.DataFrame(
        {"rec": rec[has_gene], "gene": gene[has_gene], "allele": allele[has_gene], "altering": altering[has_gene]}
    )
    chosen = np.ones(len(entries), dtype=bool)
    if filters.transcripts == "canonical":
        groups = entries.groupby(["rec", "gene"], sort=False)
        chosen = np.zeros(len(entries), dtype=bool)
        decided = np.zeros(len(entries), dtype=bool)
        for at in (canonical_at, mane_at):
            if at >= 0:
                flag = ~np.isin(field(at)[has_gene], ["", "NO"])
                group_has = pd.Series(flag).groupby([entries["rec"], entries["gene"]], sort=False).transform("any")
                group_has = group_has.to_numpy() & ~decided
                chosen |= group_has & flag
                decided |= group_has
        if feature_at >= 0:
            feature = pd.Series(field(feature_at)[has_gene])
            listed = feature.groupby([entries["rec"], entries["gene"]], sort=False).transform("first").to_numpy()
            chosen |= ~decided & (feature.to_numpy() == listed)
        else:
            chosen |= ~decided & (groups.cumcount().to_numpy() == 0)
    counted_entry = chosen & entries["altering"].to_numpy() & (entries["allele"].to_numpy() > 0)
    if filters.genes is not None:
        counted_entry &= entries["gene"].isin(filters.genes).to_numpy()
    kept = entries[counted_entry]
    pair_keys, pair_index = np.unique(
        np.stack([kept["rec"].to_numpy(), pd.factorize(kept["gene"])[0]]), axis=1, return_inverse=True
    )
    gene_names = pd.factorize(kept["gene"])[1]
    lookup = np.zeros((pair_keys.shape[1], n_alleles + 1), dtype=bool)  # index = allele code + 1 (0: missing call)
    lookup[pair_index.ravel(), kept["allele"].to_numpy() + 1] = True
    pair_variant, pair_gene_code = pair_keys[0].astype(np.int64), pair_keys[1]
    # genes numbered by first appearance (record order), as the matrix's columns
    order = pd.unique(gene_names[pair_gene_code])
    gene_number = {g: k for k, g in enumerate(order)}
    pair_gene = np.array([gene_number[g] for g in gene_names[pair_gene_code]], dtype=np.int64)

    # one reason per record left out
    tallies: Counter = Counter()
    tallies["filter_not_pass"] = int(filtered.sum())
    with_entries = np.bincount(rec, minlength=n_records) > 0
    with_gene = np.bincount(entries["rec"], minlength=n_records) > 0
    counted = np.bincount(pair_variant, minlength=n_records) > 0
    any_altering = np.bincount(entries["rec"][entries["altering"]], minlength=n_records) > 0
    tallies["no_annotation"] = int((~filtered & ~with_entries).sum())
    tallies["no_gene_symbol"] = int((with_entries & ~with_gene).sum())
    rest = with_gene & ~counted
    if filters.genes is not None:
        tallies["gene_not_in_allow_list"] = int((rest & any_altering).sum())
        rest &= ~any_altering
    tallies["not_protein_altering"] = int(rest.sum())
    return pair_variant, pair_gene, lookup, list(order), +tallies


def _chunk_carriers(
    gt: np.ndarray,
    start: int,
    pair_variant: np.ndarray,
    pair_gene: np.ndarray,
    lookup: np.ndarray,
    depth: np.ndarray | None = None,
    allele_depth: np.ndarray | None = None,
    min_depth: int = 0,
    min_vaf: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int, Counter]:
    """For one chunk of calls (variants x samples x ploidy): the genes it touches, per gene x sample the carried
    records, the missing calls at counted records, and the carrier calls the depth and VAF thresholds left out.

    ``depth`` (variants x samples, FORMAT DP) and ``allele_depth`` (variants x samples x alleles, FORMAT AD),
    -1 missing: a call carries an allele only where its depth (DP, else the sum of AD) is at least
    ``min_depth`` and that allele's fraction of the AD sum at least ``min_vaf``; a carrier call without a
    depth (or, for the VAF, without AD) is left out too. Each left-out carrier call is counted once per record,
    gene and sample, by its first reason (missing depth, below depth, missing VAF, below VAF).
    """
    import scipy.sparse

    excluded: Counter = Counter()
    lo, hi = np.searchsorted(pair_variant, [start, start + gt.shape[0]])
    if hi == lo:
        return np.zeros(0, dtype=np.int64), np.zeros((0, gt.shape[1]), dtype=np.int32), 0, excluded
    rows = pair_variant[lo:hi] - start  # each pair's record in the chunk
    lookup = lookup[lo:hi]
    ploidy = gt.shape[2]
    # per call, whether any of its ploidy alleles passes a test: the (samples x ploidy) booleans viewed as one
    # unsigned integer per call where the ploidy allows (one pass, not numpy's slow .any over an axis of 2)
    whole = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(ploidy)

    def any_slot(test: np.ndarray) -> np.ndarray:
        if whole is not None:
            return test.view(whole)[:, :, 0] != 0
        return test.any(axis=2)

    filtering = bool(min_depth or min_vaf)
    if filtering:
        reads = np.where(allele_depth >= 0, allele_depth, 0).sum(axis=2) if allele_depth is not None else None
        has_ad = (allele_depth >= 0).any(axis=2) if allele_depth is not None else None
        call_depth = np.full(gt.shape[:2], -1, dtype=np.int64)
        if allele_depth is not None:
            call_depth = np.where(has_ad, reads, call_depth)
        if depth is not None:
            call_depth = np.where(depth >= 0, depth, call_depth)
        reason_depth = np.where(call_depth < 0, 1, np.where(call_depth < min_depth, 2, 0)) if min_depth else None
        unfiltered = np.zeros((hi - lo, gt.shape[1]), dtype=bool)
        first_reason = np.zeros((hi - lo, gt.shape[1]), dtype=np.int8)  # per pair call: 0 kept, 1..4 reasons
    carried = np.zeros((hi - lo, gt.shape[1]), dtype=bool)
    for allele in np.flatnonzero(lookup[:, 2:].any(axis=0)) + 1:  # each ALT some pair counts
        counts_it = lookup[:, allele + 1]
        has = any_slot(gt == allele)  # (records, samples)
        if filtering:
            reason = np.zeros(gt.shape[:2], dtype=np.int8)
            if min_vaf:
                if allele_depth is None or allele >= allele_depth.shape[2]:
                    fraction = np.full(gt.shape[:2], np.nan)
                else:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        fraction = np.where(
                            has_ad & (reads > 0) & (allele_depth[:, :, allele] >= 0),
                            allele_depth[:, :, allele] / reads,
                            np.nan,
                        )
                reason = np.where(np.isnan(fraction), 3, np.where(fraction < min_vaf, 4, 0)).astype(np.int8)
            if reason_depth is not None:
                reason = np.where(reason_depth > 0, reason_depth, reason).astype(np.int8)
            candidate = has[rows] & counts_it[:, None]  # the pairs that count this ALT, where the call has it
            unfiltered |= candidate
            passing = candidate & (reason[rows] == 0)
            # a call kept by one allele is kept; otherwise the first allele's reason is remembered
            first_reason = np.where(candidate & ~passing & (first_reason == 0), reason[rows], first_reason)
            carried |= passing
        elif counts_it.all():  # every pair counts this ALT (the bi-allelic case)
            carried |= has[rows]
        else:
            carried[counts_it] |= has[rows[counts_it]]
    if filtering:
        dropped = first_reason[unfiltered & ~carried]
        codes, n_calls = np.unique(dropped, return_counts=True)
        excluded.update({_CALL_EXCLUSIONS[int(code) - 1]: int(n) for code, n in zip(codes, n_calls, strict=True)})
    missing_call = ~any_slot(gt >= 0)  # every slot missing (-1) or fill (-2)
    missing = int(missing_call[rows].sum())
    genes, inverse = np.unique(pair_gene[lo:hi], return_inverse=True)
    # a segment sum per gene: the (genes x pairs) incidence matrix times the (pairs x samples) carried calls
    incidence = scipy.sparse.csr_array(
        (np.ones(hi - lo, dtype=np.int32), (inverse, np.arange(hi - lo))), shape=(len(genes), hi - lo)
    )
    counts = incidence @ carried.view(np.uint8)
    return genes, counts, missing, excluded


def carrier_matrix(
    zarr_path: str | Path,
    *,
    patients: pd.Index,
    filters: VariantFilters | None = None,
    annotation_field: str = "CSQ",
    scheduler: str | None = None,
    batch_chunks: int = 4,
) -> anndata.AnnData:
    """Patients x genes: how many protein-altering records of the gene each patient carries an ALT allele of.

    ``patients``: the samples sheet's; VCF samples are matched by ID or unique barcode prefix, the others
    counted. ``scheduler``: a Dask ``distributed`` scheduler address (``tcp://host:8786``); None computes
    on local threads. ``filters``: the FILTER set, the transcript rule and the gene allow-list, and per call
    the depth and allele-fraction thresholds (:func:`_chunk_carriers`), from ``call_DP``/``call_AD``, which the
    VCF Zarr must then hold (``vcf_to_zarr(format_fields=("DP", "AD"))``).
    """
    import dask
    import dask.array as da
    import zarr

    filters = filters or VariantFilters()
    path = Path(zarr_path)
    try:
        store = zarr.open_group(str(path), mode="r")
        samples = [str(s) for s in store["sample_id"][:]]
    except Exception as exc:  # zarr raises several types for a path that is not a VCF Zarr
        raise MultimodalError(f"{path}: not a VCF Zarr store: {type(exc).__name__}: {exc}") from exc
    pair_variant, pair_gene, lookup, genes, tallies = _pairs(store, path, filters, annotation_field)
    resolved = _matched_samples(samples, patients, path)
    gt = da.from_zarr(str(path), component="call_genotype")
    per_call = {"depth": None, "allele_depth": None}
    needs = {"call_DP": bool(filters.min_depth), "call_AD": bool(filters.min_vaf or filters.min_depth)}
    for name, key in (("call_DP", "depth"), ("call_AD", "allele_depth")):
        if needs[name] and name in store:  # the same chunks as the genotypes along variants and samples
            values = da.from_zarr(str(path), component=name)
            per_call[key] = values.rechunk(gt.chunks[:2] + (((values.shape[2],),) if values.ndim == 3 else ()))
    _check_call_fields(
        path, filters, has_depth=per_call["depth"] is not None, has_ad=per_call["allele_depth"] is not None
    )
    counts = np.zeros((len(genes), len(samples)), dtype=np.int32)
    missing = 0
    excluded: Counter = Counter()
    client = None
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise MultimodalError(
                f"cannot reach the Dask scheduler {scheduler} (ingest.dask_scheduler): {exc}"
            ) from exc
    try:
        starts = np.cumsum((0, *gt.chunks[0]))
        sample_starts = np.cumsum((0, *gt.chunks[1]))

        def block(values, k: int, j: int):
            return None if values is None else values.blocks[(k, j, 0)[: values.ndim]]

        thresholds = {"min_depth": filters.min_depth, "min_vaf": filters.min_vaf}
        tasks = [  # one task per (variants, samples) chunk holding a counted record: memory bounded by one chunk
            (
                j,
                dask.delayed(_chunk_carriers)(
                    gt.blocks[k, j],
                    int(starts[k]),
                    pair_variant,
                    pair_gene,
                    lookup,
                    block(per_call["depth"], k, j),
                    block(per_call["allele_depth"], k, j),
                    **thresholds,
                ),
            )
            for k in range(len(gt.chunks[0]))
            if np.searchsorted(pair_variant, starts[k]) < np.searchsorted(pair_variant, starts[k + 1])
            for j in range(len(gt.chunks[1]))
        ]
        for first in range(0, len(tasks), batch_chunks):  # a batch at a time on the scheduler
            batch = tasks[first : first + batch_chunks]
            for (j, _), (chunk_genes, chunk_counts, chunk_missing, chunk_excluded) in zip(
                batch, dask.compute(*[task for _, task in batch]), strict=True
            ):
                counts[chunk_genes, sample_starts[j] : sample_starts[j + 1]] += chunk_counts
                missing += chunk_missing
                excluded.update(chunk_excluded)
    finally:
        if client is not None:
            client.close()
    return _carrier_anndata(
        counts,
        genes,
        samples=samples,
        resolved=resolved,
        patients=patients,
        path=path,
        filters=filters,
        annotation_field=annotation_field,
        scheduler=scheduler,
        missing=missing,
        excluded=excluded,
        tallies=tallies,
    )


def _check_call_fields(path: Path, filters: VariantFilters, *, has_depth: bool, has_ad: bool) -> None:
    """The depth and VAF thresholds need the per-call arrays they read: a one-line error when they are absent."""
    if filters.min_depth and not has_depth and not has_ad:
        raise MultimodalError(
            f"{path}: ingest.variant_filters.min_depth is set but the VCF Zarr has neither call_DP nor call_AD "
            "(the cohort VCF declares neither FORMAT DP nor AD, or it was converted without them)"
        )
    if filters.min_vaf and not has_ad:
        raise MultimodalError(
            f"{path}: ingest.variant_filters.min_vaf is set but the VCF Zarr has no call_AD (the cohort VCF declares "
            "no FORMAT AD, or it was converted without it); a cohort VCF's allele fractions come from AD"
        )


class _CarrierReducer:
    """:func:`carrier_matrix`'s counts, reduced one chunk of variants at a time as :func:`_write_vcf_zarr`
    converts it (in its writer thread, beside the reading), from the arrays just written: the same (record,
    gene) pairs (:func:`_annotation_pairs` on the chunk) and the same reduction (:func:`_chunk_carriers`), so
    the genotypes are not read back from the VCF Zarr. Genes are numbered by first appearance in record
    order across the chunks, as :func:`_pairs` numbers them for the whole cohort."""

    def __init__(
        self, path: Path, zarr_path: Path, *, patients: pd.Index, filters: VariantFilters, annotation_field: str
    ) -> None:
        self.path, self.zarr_path = path, zarr_path  # the VCF (named in errors), the VCF Zarr being written
        self.patients, self.filters, self.key = patients, filters, annotation_field
        self.gene_index: dict[str, int] = {}
        self.missing = 0
        self.excluded: Counter = Counter()
        self.tallies: Counter = Counter()

    def begin(self, *, samples: list[str], filter_ids: list[str], descriptions: dict[str, str], per_call) -> None:
        """Called once the header is read, before any record: checks what the matrix needs."""
        # (the key itself is among the converted fields: _write_vcf_zarr refused a header without it)
        _annotation_fields(descriptions[self.key], self.key, self.path)  # the field list, checked up front
        _check_call_fields(self.path, self.filters, has_depth="DP" in per_call, has_ad="AD" in per_call)
        self.samples, self.filter_ids, self.description = samples, filter_ids, descriptions[self.key]
        self.resolved = _matched_samples(samples, self.patients, self.path)
        self.counts = np.zeros((0, len(samples)), dtype=np.int32)

    def add(self, start: int, block: dict[str, np.ndarray]) -> None:
        """Reduce the chunk of records ``start, start + 1, ...`` (``block``: its VCF Zarr arrays)."""
        pair_variant, pair_gene, lookup, genes, tallies = _annotation_pairs(
            block[f"variant_{self.key}"],
            block["variant_allele"],
            self.filter_ids,
            block["variant_filter"],
            block["variant_position"],
            description=self.description,
            filters=self.filters,
            key=self.key,
            path=self.path,
            first=start,
        )
        self.tallies.update(tallies)
        codes = np.array([self.gene_index.setdefault(g, len(self.gene_index)) for g in genes], dtype=np.int64)
        if len(self.gene_index) > len(self.counts):
            grown = np.zeros((len(self.gene_index), self.counts.shape[1]), dtype=np.int32)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        if not len(pair_variant):
            return
        chunk_genes, chunk_counts, missing, excluded = _chunk_carriers(
            block["call_genotype"],
            start,
            pair_variant + start,
            codes[pair_gene],
            lookup,
            block.get("call_DP"),
            block.get("call_AD"),
            min_depth=self.filters.min_depth,
            min_vaf=self.filters.min_vaf,
        )
        self.counts[chunk_genes] += chunk_counts
        self.missing += missing
        self.excluded.update(excluded)

    def result(self) -> anndata.AnnData:
        return _carrier_anndata(
            self.counts,
            list(self.gene_index),
            samples=self.samples,
            resolved=self.resolved,
            patients=self.patients,
            path=self.zarr_path,
            filters=self.filters,
            annotation_field=self.key,
            scheduler=None,
            missing=self.missing,
            excluded=self.excluded,
            tallies=+self.tallies,
        )


def cohort_vcf_carriers(
    vcf: str | Path,
    zarr_out: str | Path,
    *,
    patients: pd.Index,
    filters: VariantFilters | None = None,
    annotation_field: str = "CSQ",
    fields: Sequence[str] = ("CSQ",),
    variants_chunk_size: int = 10_000,
    samples_chunk_size: int = 1_000,
    workers: int = 0,
) -> anndata.AnnData:
    """:func:`vcf_to_zarr` and :func:`carrier_matrix` in one pass over the VCF: the same VCF Zarr (written
    atomically, with call_DP/call_AD when the filters need them) and the same matrix as the two in turn, the
    matrix reduced chunk by chunk while the chunk is converted (:class:`_CarrierReducer`). For every INFO
    field (``fields="all"``, bio2zarr's converter) or a Dask cluster, convert, then :func:`carrier_matrix`."""
    filters = filters or VariantFilters()
    reducer = _CarrierReducer(
        Path(vcf), Path(zarr_out), patients=patients, filters=filters, annotation_field=annotation_field
    )
    vcf_to_zarr(
        vcf,
        zarr_out,
        variants_chunk_size=variants_chunk_size,
        samples_chunk_size=samples_chunk_size,
        workers=workers,
        fields=list(dict.fromkeys([annotation_field, *fields])),
        format_fields=("DP", "AD") if filters.min_depth or filters.min_vaf else (),
        reducer=reducer,
    )
    return reducer.result()


def _matched_samples(samples: list[str], patients: pd.Index, path: Path) -> dict[str, str]:
    """Patient ID -> VCF sample (by ID or unique barcode prefix); an error when none matches."""
    from multimodal.ingest.samples import resolve_barcodes

    resolved = resolve_barcodes([str(p) for p in patients], samples, what=f"sample of {path.name}")
    if not resolved:
        raise MultimodalError(
            f"{path}: none of its {len(samples)} samples is a patient of the samples sheet "
            f"(VCF: {samples[0] if samples else 'none'!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    return resolved


def _carrier_anndata(
    counts: np.ndarray,
    genes: list[str],
    *,
    samples: list[str],
    resolved: dict[str, str],
    patients: pd.Index,
    path: Path,
    filters: VariantFilters,
    annotation_field: str,
    scheduler: str | None,
    missing: int,
    excluded: Counter,
    tallies: Counter,
) -> anndata.AnnData:
    """The patients x genes AnnData of the (genes x VCF samples) carrier counts, with its exclusion tallies."""
    import anndata as ad

    order = [samples.index(resolved[str(p)]) for p in patients if str(p) in resolved]
    kept = [str(p) for p in patients if str(p) in resolved]
    matrix = counts[:, order].T.astype(np.float32)
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame({"vcf_sample": [resolved[p] for p in kept]}, index=pd.Index(kept, name="patient_id")),
        var=pd.DataFrame(
            {"gene_symbol": genes, "feature_class": "gene_carrier", "source": "cohort_vcf"},
            index=pd.Index([f"{g}{CARRIER_SUFFIX}" for g in genes], name="feature"),
        ),
    )
    adata.layers["counts"] = matrix.copy()
    adata.uns["ingest"] = {
        "modality": "cohort_variants",
        "params": {
            "vcf_zarr": str(path),
            "annotation_field": annotation_field,
            "variant_filters": filters.params(),
            "rule": "a patient counts once per record and gene when a call carries a protein-altering ALT allele",
            "scheduler": scheduler or "local threads",
        },
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_vcf_sample": int(len(patients) - len(kept)),
            "vcf_samples_not_in_samples_sheet": int(len(samples) - len(kept)),
            "missing_calls_at_counted_records": int(missing),
            **{k: int(excluded.get(k, 0)) for k in _CALL_EXCLUSIONS if filters.min_depth or filters.min_vaf},
            **{f"records_{k}": int(v) for k, v in sorted(tallies.items())},
        },
    }
    log.info("cohort VCF: %d patients x %d genes from %s", adata.n_obs, adata.n_vars, path)
    return adata
