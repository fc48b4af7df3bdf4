"""A columnar reader for one patient's text VCF: the record lines as Arrow columns, every filter as arrays.

:func:`multimodal.ingest.variants.read_patient_variants` reads the header with pysam (htslib: samples,
contigs, the annotation's declared fields, every header error) and then calls :func:`count_columnar`,
which decompresses the file through pysam's ``BGZFile`` (htslib's BGZF reader), splits the record lines
into columns with Arrow's string kernels (tab-separated, no quoting) and computes what the record-by-record pysam loop
computes (FILTER set, tumour depth and VAF, consequence terms, the representative transcript, the
per-gene outcome, the variant-level table) with Arrow and numpy kernels, without a Python loop over
records. pysam's per-record attribute access (INFO, FILTER, the tumour's FORMAT values) cost ~80% of a
VCF's reading time; bcftools reads the same text in C.

This module only takes files it fully checks. Anything it does not validate the way htslib and the pysam
loop do (a line htslib would refuse, an undeclared key, a value that is not a plain number, an unknown or
odd-case consequence term, a CSQ entry with another field count, a VAF outside 0..1, CR line ends, ...)
makes :func:`count_columnar` return a reason instead of a result; the caller then reads the file with the
pysam loop, which either reads it or stops with its exact one-line error. So errors and results are the
pysam loop's, and this module is only a faster way to reach the same numbers (tests/test_vcf_columnar.py
checks both paths give identical counts, exclusions and tables).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from multimodal.ingest.variants import AnnotationLayout, VariantFilters

#: What htslib parses as one Integer / Float value ('.' is missing): anything else falls back to pysam.
_INT = r"(?:\.|[0-9]{1,9})"
_FLOAT = r"(?:\.|[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?)"
_INT_LIST = f"^{_INT}(?:,{_INT})*$"
_FLOAT_LIST = f"^{_FLOAT}(?:,{_FLOAT})*$"
_GT = r"^(?:\.|[0-9]{1,6})(?:[/|](?:\.|[0-9]{1,6}))*$"
_QUAL = f"^{_FLOAT}$"
_POS = r"^[0-9]{1,10}$"
#: The largest VCF text read as columns (the columns hold a few copies of it at once); a larger VCF (a
#: whole-genome call set) streams through the pysam loop in constant memory instead.
MAX_TEXT_BYTES = 256 * 2**20


@dataclass
class ColumnarResult:
    """What one VCF contributes, as :class:`~multimodal.ingest.variants.PatientVariants` holds it."""

    n_records: int
    n_pass: int
    excluded: Counter
    gene_counts: Counter
    #: the variant-level rows, column by column (:data:`~multimodal.ingest.variants.VARIANT_TABLE_COLUMNS`
    #: without ``patient_id``): a chunk's patients become one frame at once, not one frame each
    table: dict[str, np.ndarray]


class Declined(Exception):  # noqa: N818 - a decision, not an error: the caller reads the file with pysam
    """The fast path does not take this file; the message says why (logged at debug level)."""


def _read_text(path: Path) -> bytes:
    """The VCF's bytes: BGZF through htslib (pysam.BGZFile), a plain VCF as it is; at most :data:`MAX_TEXT_BYTES`."""
    import pysam

    with open(path, "rb") as handle:
        magic = handle.read(2)
    compressed = magic == b"\x1f\x8b"
    # BGZF text is rarely over 10x its file: such a file is not even decompressed here
    _require(path.stat().st_size <= MAX_TEXT_BYTES // (8 if compressed else 1), "a large VCF: streamed instead")
    if not compressed:
        return path.read_bytes()
    with pysam.BGZFile(str(path), "rb") as handle:
        data = handle.read()
    _require(len(data) <= MAX_TEXT_BYTES, "a large VCF: streamed instead")
    return data


def _body(data: bytes) -> memoryview:
    """The record lines after the ``#CHROM`` line (htslib has parsed the header already), not copied."""
    at = 0 if data.startswith(b"#CHROM") else data.find(b"\n#CHROM") + 1
    if at == 0 and not data.startswith(b"#CHROM"):
        raise Declined("no #CHROM line found")
    end = data.find(b"\n", at)
    _require(data.find(b"\r", at) < 0, "CR line ends")
    return memoryview(data)[len(data) if end < 0 else end + 1 :]


def _one_string(data: memoryview) -> pa.Array:
    """``data`` as an Arrow array of one string, not copied; :class:`Declined` unless it is UTF-8."""
    import pyarrow as pa

    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int32))
    array = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        array.validate(full=True)  # checks the bytes are UTF-8
    except pa.ArrowInvalid as exc:
        raise Declined("not UTF-8") from exc
    return array


def _all(mask: pa.Array | pa.ChunkedArray) -> bool:
    import pyarrow.compute as pc

    return bool(pc.all(mask, skip_nulls=False).as_py()) if len(mask) else True


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise Declined(reason)


def _check_values(values: pa.Array, kind: str, what: str) -> None:
    """Every value of an Integer / Float / GT column parses as htslib parses it."""
    import pyarrow.compute as pc

    pattern = {"Integer": _INT_LIST, "Float": _FLOAT_LIST, "GT": _GT}.get(kind)
    if pattern is not None and len(values):
        _require(_all(pc.match_substring_regex(values, pattern)), f"{what}: a value that is not a plain {kind}")


def _check_info(info: pa.Array, header, key: str, *, keep_prefix: bool = False) -> tuple[np.ndarray, pa.Array, int]:
    """Check every INFO item against the header's declaration; return (records, values, prefix) of the annotation
    key. ``prefix``: how many bytes of ``key=`` each value still starts with (0, or with ``keep_prefix`` when every
    INFO holds the key alone, ``len(key) + 1``: the value's first field then carries it, and is not read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lists = pc.split_pattern(info, ";")
    n_items = pc.list_value_length(lists).to_numpy()
    if (
        len(info)
        and header.info[key].type == "String"
        and bool((n_items == 1).all())
        and _all(pc.starts_with(info, f"{key}="))
    ):  # every INFO holds the annotation key alone (a VEP-only INFO): its values without splitting items
        prefix = len(key) + 1
        _require(_all(pc.greater(pc.binary_length(info), prefix)), f"INFO/{key} with an empty value")
        if keep_prefix:  # slicing every value copies the column
            return np.arange(len(info)), info, prefix
        return np.arange(len(info)), pc.utf8_slice_codeunits(info, prefix), 0
    parent = pc.list_parent_indices(lists).to_numpy()
    pairs = pc.split_pattern(pc.list_flatten(lists), "=", max_splits=1)
    has_value = pc.list_value_length(pairs).to_numpy() == 2
    names = pc.dictionary_encode(pc.list_flatten(pc.list_slice(pairs, 0, 1)))
    name_code = names.indices.to_numpy()
    valued = np.flatnonzero(has_value)
    values = pc.list_flatten(pc.list_slice(pairs, 1, 2))  # the values of the items in ``valued``, in order
    value_code = name_code[valued]
    declared = header.info
    found = (np.zeros(0, dtype=np.int64), pa.array([], pa.string()), 0)
    for code, name in enumerate(names.dictionary.to_pylist()):
        if name == ".":  # INFO '.': no items (alone in its column, else htslib refuses the record)
            mine = name_code == code
            _require(bool((~has_value[mine]).all()), "INFO '.=' item")
            _require(bool(np.bincount(parent[mine], minlength=len(info)).max() <= 1), "INFO '.' twice")
            dots = np.flatnonzero(mine)
            _require(bool((np.bincount(parent, minlength=len(info))[parent[dots]] == 1).all()), "INFO '.' beside keys")
            continue
        _require(name in declared, f"INFO/{name} not declared in the header")
        meta = declared[name]
        mine = name_code == code
        if meta.type == "Flag":
            _require(not has_value[mine].any(), f"INFO/{name} Flag with a value")
            continue
        _require(bool(has_value[mine].all()), f"INFO/{name} without a value")
        take = pa.array(np.flatnonzero(value_code == code))
        mine_values = values.take(take)
        _require(_all(pc.greater(pc.binary_length(mine_values), 0)), f"INFO/{name} with an empty value")
        _check_values(mine_values, meta.type, f"INFO/{name}")
        if name == key:
            records = parent[valued[value_code == code]]
            _require(len(records) < 2 or bool((np.diff(records) > 0).all()), f"INFO/{key} given twice")
            found = (records, mine_values, 0)
    return found


def _split_lists(values: pa.Array, sep: str) -> tuple[np.ndarray, pa.Array]:
    """(parent row of each element, the elements) of ``sep``-separated lists."""
    import pyarrow.compute as pc

    lists = pc.split_pattern(values, sep)
    return pc.list_parent_indices(lists).to_numpy(), pc.list_flatten(lists)


def _numbers(values: pa.Array, dtype: str) -> np.ndarray:
    """Values as float64 with NaN for '.' or ''; a Float parsed as a double, then stored as float32, as htslib does."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = pc.or_(pc.equal(values, "."), pc.equal(values, ""))
    target = pa.int64() if dtype == "int" else pa.float64()
    cast = pc.cast(pc.if_else(missing, pa.scalar(None, pa.string()), values), target)
    numbers = cast.to_numpy(zero_copy_only=False)
    return numbers.astype(np.float64) if dtype == "int" else numbers.astype(np.float32).astype(np.float64)


#: One FORMAT value as htslib parses it, by declared type (a String or Character value holds no ':').
_VALUE = {"Integer": f"{_INT}(?:,{_INT})*", "Float": f"{_FLOAT}(?:,{_FLOAT})*", "GT": _GT[1:-1]}


def _sample_pattern(keys: list[str], formats, capture: frozenset[str]) -> str:
    """A regular expression matching a sample column of FORMAT ``keys`` (trailing fields may be left out),
    capturing the ``capture`` keys' values by name."""
    pattern = ""
    for key in reversed(keys):
        kind = "GT" if key == "GT" else formats[key].type
        value = _VALUE.get(kind, "[^:]*")
        if key == "DP":
            value = _INT
        value = f"(?P<{key}>{value})" if key in capture else f"(?:{value})"
        pattern = f"{value}(?::{pattern})?" if pattern else value
    return f"^{pattern}$"


def _tumour_depth_vaf(
    column: dict[str, pa.Array], header, tumour: str, n: int, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Depth and VAF of the tumour (NaN where none), after checking every sample's FORMAT values.

    Each FORMAT layout (``GT:AD:DP``, ...) is one regular expression over each sample column, which
    checks every value's type as htslib parses it and captures the tumour's DP, AD and AF.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from multimodal.ingest.variants import caller_allele_depths

    formats = header.formats
    _require(caller_allele_depths(formats) is None, "allele depths in a caller's own FORMAT fields")
    want = {"DP": ("Integer", {"1"}), "AD": ("Integer", {"R", "."}), "AF": ("Float", {"A", "1", "."})}
    for name, (kind, numbers) in want.items():
        if name in formats:
            meta = formats[name]
            _require(meta.type == kind and str(meta.number) in numbers, f"FORMAT/{name} declared {meta.type}")
    depth = np.full(n, np.nan)
    ad_sum = np.zeros(n)
    ad_count = np.zeros(n, dtype=np.int64)
    ad_alt = np.full(n, -np.inf)
    af_max = np.full(n, np.nan)
    tumour_at = list(header.samples).index(tumour)
    codes = pc.dictionary_encode(column["FORMAT"])
    indices = codes.indices.to_numpy()
    for code, text in enumerate(codes.dictionary.to_pylist()):
        keys = text.split(":")
        _require(len(set(keys)) == len(keys) and all(k in formats for k in keys), f"FORMAT {text!r}")
        _require(keys[0] == "GT" or "GT" not in keys, "GT not first in FORMAT")
        rows = np.flatnonzero(indices == code) if len(codes.dictionary) > 1 else None
        captured = frozenset(k for k in keys if k in want)
        for s in range(n_samples):
            values = column[f"S{s}"] if rows is None else column[f"S{s}"].take(pa.array(rows))
            if s != tumour_at or not captured:
                pattern = _sample_pattern(keys, formats, frozenset())
                _require(_all(pc.match_substring_regex(values, pattern)), f"a sample value unlike FORMAT {text!r}")
                continue
            found = pc.extract_regex(values, _sample_pattern(keys, formats, captured))
            _require(found.null_count == 0, f"a sample value unlike FORMAT {text!r}")
            at = np.arange(n) if rows is None else rows
            for key in captured:
                values = pc.struct_field(found, key)
                if key == "DP":
                    depth[at] = _numbers(values, "int")
                    continue
                parent, elements = _split_lists(values, ",")
                numbers = _numbers(elements, "int" if key == "AD" else "float")
                keep = ~np.isnan(numbers)
                parent, numbers = at[parent[keep]], numbers[keep]
                if key == "AF":
                    np.fmax.at(af_max, parent, numbers)
                    continue
                np.add.at(ad_sum, parent, numbers)
                np.add.at(ad_count, parent, 1)
                # the first non-missing AD value is the reference's; the others are the ALT alleles'
                first = np.r_[True, parent[1:] != parent[:-1]] if len(parent) else np.zeros(0, bool)
                np.maximum.at(ad_alt, parent[~first], numbers[~first])
    no_dp = np.isnan(depth) & (ad_count > 0)
    depth[no_dp] = ad_sum[no_dp]
    with np.errstate(divide="ignore", invalid="ignore"):
        from_ad = np.where((ad_count > 1) & (ad_sum > 0), ad_alt / ad_sum, np.nan)
    vaf = np.where(np.isnan(af_max), from_ad, af_max)
    return depth, vaf


def count_columnar(
    path: Path,
    header,
    layout: AnnotationLayout,
    tumour: str | None,
    filters: VariantFilters,
    contig_length: dict[str, int],
) -> ColumnarResult:
    """Count one text VCF's records as the pysam loop does; raise :class:`Declined` for anything it does not check."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from multimodal.ingest.variants import (
        _ALT,
        _BASES,
        CONSEQUENCE_TERMS,
        COUNTED,
        PROTEIN_ALTERING,
        FirstFailure,
        _field_at,
    )

    body = _body(_read_text(path))
    n_samples = len(header.samples)
    names = ["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
    if n_samples:
        names += ["FORMAT", *(f"S{k}" for k in range(n_samples))]
    # The lines split by Arrow's string kernels in this thread (its CSV reader hands the work to a thread
    # pool: ~2 ms of latency per file on a busy machine, more than the parsing of a 1,000-record VCF).
    _require(not body or body[-1:] == b"\n", "no final line end")
    lines = pc.list_flatten(pc.split_pattern(_one_string(body[:-1]) if body else pa.array([], pa.string()), "\n"))
    fields = pc.split_pattern(lines, "\t")
    n = len(lines)
    _require(not n or _all(pc.equal(pc.list_value_length(fields), len(names))), "a line of another column count")
    flat = pc.list_flatten(fields)
    stride = np.arange(n, dtype=np.int64) * len(names)
    column = {c: flat.take(pa.array(stride + k)) for k, c in enumerate(names) if c != "ID"}
    if not n:
        column = {c: pa.array([], pa.string()) for c in names if c != "ID"}

    # --- the fixed columns, checked as htslib and the pysam loop check them
    chrom = column["CHROM"]
    _require(not pc.any(pc.starts_with(chrom, "#")).as_py() if n else True, "a '#' line among the records")
    _require(_all(pc.match_substring_regex(column["POS"], _POS)), "POS not a whole number")
    pos = pc.cast(column["POS"], pa.int64()).to_numpy()
    _require(bool((pos >= 1).all()), "POS 0")
    chrom_codes = pc.dictionary_encode(chrom)
    chroms = chrom_codes.dictionary.to_pylist()
    limit = np.array([contig_length.get(c, np.iinfo(np.int64).max) for c in chroms], dtype=np.int64)
    _require(bool((pos <= limit[chrom_codes.indices.to_numpy()]).all()), "POS beyond its contig")
    _require(_all(pc.match_substring_regex(column["QUAL"], _QUAL)), "QUAL not a number")
    for ref in pc.unique(column["REF"]).to_pylist():
        _require(bool(_BASES.fullmatch(ref)), f"REF {ref!r}")
    for alt in pc.unique(column["ALT"]).to_pylist():
        _require(alt == "." or all(_ALT.fullmatch(a) for a in alt.split(",")), f"ALT {alt!r}")
    alt_text = pc.if_else(pc.equal(column["ALT"], "."), "", column["ALT"])

    filter_codes = pc.dictionary_encode(column["FILTER"])
    filter_ok, filter_text = [], []
    for text in filter_codes.dictionary.to_pylist():
        values = [] if text == "." else text.split(";")
        _require(all(v in header.filters for v in values) and len(set(values)) == len(values), f"FILTER {text!r}")
        _require(len(values) <= 1 or "PASS" not in values, f"FILTER {text!r}")
        filter_ok.append(filters.accepts_filter(values))
        filter_text.append(";".join(values) or ".")
    filter_index = filter_codes.indices.to_numpy()
    passed = np.array(filter_ok, dtype=bool)[filter_index] if n else np.zeros(0, bool)

    canonical_at = _field_at(layout, "CANONICAL")
    mane_at = _field_at(layout, "MANE_SELECT", "MANE")
    feature_at = _field_at(layout, "Feature", "Feature_ID")
    hgvsp_at = _field_at(layout, "HGVSp", "HGVS.p")
    read_at = (layout.consequence_at, layout.symbol_at, layout.gene_id_at, canonical_at, mane_at, feature_at, hgvsp_at)
    records_with, values, prefix = _check_info(column["INFO"], header, layout.key, keep_prefix=0 not in read_at)
    if n_samples:
        _require(tumour is not None, "sample columns without a tumour")
        depth, vaf = _tumour_depth_vaf(column, header, tumour, n, n_samples)
    else:
        depth = vaf = np.full(n, np.nan)
    _require(bool(((vaf[~np.isnan(vaf)] >= 0) & (vaf[~np.isnan(vaf)] <= 1)).all()), "a VAF outside 0..1")

    # --- annotation entries: one row per entry, its fields by position
    dot = f"{layout.key}=." if prefix else "."
    _require(not len(values) or not pc.any(pc.equal(values, dot)).as_py(), f"INFO/{layout.key}=.")
    entry_parent, entries = _split_lists(values, ",")
    entry_record = records_with[entry_parent]
    parts = pc.split_pattern(entries, "|")
    n_fields = len(layout.fields)
    _require(_all(pc.equal(pc.list_value_length(parts), n_fields)), "an entry with another field count")
    flat = pc.list_flatten(parts)
    n_entries = len(entries)
    base = np.arange(n_entries, dtype=np.int64) * n_fields

    taken: dict[int, pa.Array] = {}

    def field(at: int) -> pa.Array:
        if at not in taken:
            taken[at] = flat.take(pa.array(base + at)) if at >= 0 else pa.array([""] * n_entries, pa.string())
        return taken[at]

    consequence = pc.dictionary_encode(field(layout.consequence_at))
    joined, altering_kind = [], []
    for text in consequence.dictionary.to_pylist():
        terms = [t.strip() for t in text.split("&")]
        _require(CONSEQUENCE_TERMS.issuperset(terms), f"consequence {text!r}")
        joined.append("&".join(terms))
        altering_kind.append(bool(PROTEIN_ALTERING.intersection(terms)))
    consequence_code = consequence.indices.to_numpy()
    altering = np.array(altering_kind, dtype=bool)[consequence_code] if n_entries else np.zeros(0, bool)
    symbol = pc.utf8_trim_whitespace(field(layout.symbol_at))
    gene = pc.if_else(pc.equal(symbol, ""), pc.utf8_trim_whitespace(field(layout.gene_id_at)), symbol)
    gene_codes = pc.dictionary_encode(gene)
    gene_names = np.array(gene_codes.dictionary.to_pylist(), dtype=object)
    gene_code = gene_codes.indices.to_numpy().astype(np.int64)

    # --- (record, gene) groups in the order the pysam loop meets them
    named = gene_names[gene_code] != "" if n_entries else np.zeros(0, bool)
    entry_at = np.flatnonzero(named)
    key = entry_record[entry_at] * max(len(gene_names), 1) + gene_code[entry_at]
    unique_keys, first, group_of = np.unique(key, return_index=True, return_inverse=True)
    order = np.lexsort((first, unique_keys // max(len(gene_names), 1)))  # by record, then first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[group_of]  # group number of each named entry, groups numbered in loop order
    first = first[order]
    n_groups = len(first)
    group_entry = entry_at[first]  # the first entry of each group
    group_record = entry_record[group_entry]
    group_gene = gene_names[gene_code[group_entry]] if n_groups else np.zeros(0, dtype=object)

    def flags(at: int) -> np.ndarray:
        if at < 0:
            return np.zeros(len(entry_at), bool)
        raw = pc.utf8_trim_whitespace(field(at))
        flag = pc.and_(pc.not_equal(raw, ""), pc.not_equal(raw, "NO"))
        return flag.to_numpy(zero_copy_only=False)[entry_at]

    def any_in_group(mask: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=mask, minlength=n_groups) > 0

    canonical, mane = flags(canonical_at), flags(mane_at)
    has_canonical, has_mane = any_in_group(canonical), any_in_group(mane)
    if feature_at >= 0:
        feature = pc.dictionary_encode(field(feature_at)).indices.to_numpy()[entry_at]
        same_feature = feature == feature[first][group] if len(entry_at) else np.zeros(0, bool)
    else:
        same_feature = entry_at == group_entry[group]
    chosen = np.where(has_canonical[group], canonical, np.where(has_mane[group], mane, same_feature))
    entry_altering = altering[entry_at]
    if filters.transcripts == "canonical":
        gene_altering = any_in_group(chosen & entry_altering)
    else:
        gene_altering = any_in_group(entry_altering)
    # the entry the table shows: the first chosen protein-altering one, else the first chosen
    none = np.iinfo(np.int64).max
    shown_altering = np.full(n_groups, none)
    shown_first = np.full(n_groups, none)
    np.minimum.at(shown_altering, group[chosen & entry_altering], entry_at[chosen & entry_altering])
    np.minimum.at(shown_first, group[chosen], entry_at[chosen])
    shown = np.where(shown_altering != none, shown_altering, shown_first)

    # --- record outcomes, in the pysam loop's order
    first = FirstFailure(passed)
    outcome, decide = first.outcome, first.decide
    first.depth_and_vaf(depth, vaf, filters)
    n_entries_of = np.bincount(entry_record, minlength=n)
    decide(n_entries_of == 0, "no_annotation")
    n_groups_of = np.bincount(group_record, minlength=n)
    decide(n_groups_of == 0, "no_gene_symbol")
    record_outcome = outcome[group_record]
    allowed = (
        np.ones(n_groups, bool)
        if filters.genes is None
        else np.fromiter((g in filters.genes for g in group_gene), bool, n_groups)
    )
    gene_outcome = np.where(
        record_outcome != "",
        record_outcome,
        np.where(~gene_altering, "not_protein_altering", np.where(~allowed, "gene_not_in_allow_list", COUNTED)),
    ).astype(object)
    counted = gene_outcome == COUNTED
    any_counted = np.bincount(group_record, weights=counted, minlength=n) > 0
    any_not_allowed = np.bincount(group_record, weights=gene_outcome == "gene_not_in_allow_list", minlength=n) > 0
    decide(~any_counted & any_not_allowed, "gene_not_in_allow_list")
    decide(~any_counted, "not_protein_altering")
    times = np.bincount(gene_code[group_entry[counted]], minlength=len(gene_names))
    genes_counted = np.flatnonzero(times)

    # --- the variant-level table: one row per (record, gene), one with no gene for a record without any
    lonely = np.flatnonzero(n_groups_of == 0)
    row_record = np.concatenate([lonely, group_record])
    row_order = np.argsort(row_record, kind="stable")
    row_record = row_record[row_order]
    n_lonely = len(lonely)

    def per_group(values: np.ndarray | list, empty: object = "") -> np.ndarray:
        out = np.concatenate([np.full(n_lonely, empty, dtype=object), np.asarray(values, dtype=object)])
        return out[row_order]

    def shown_field(at: int) -> np.ndarray:
        if at < 0 or not n_groups:
            return np.full(n_groups, "", dtype=object)
        return field(at).take(pa.array(shown)).to_numpy(zero_copy_only=False)

    consequence_shown = np.array(joined, dtype=object)[consequence_code[shown]] if n_groups else []
    frame = dict(
        {
            "chrom": chrom.take(pa.array(row_record)).to_numpy(zero_copy_only=False),
            "pos": pos[row_record],
            "ref": column["REF"].take(pa.array(row_record)).to_numpy(zero_copy_only=False),
            "alt": alt_text.take(pa.array(row_record)).to_numpy(zero_copy_only=False),
            "gene": per_group(group_gene),
            "consequence": per_group(consequence_shown),
            "hgvsp": per_group(shown_field(hgvsp_at)),
            "transcript": per_group(shown_field(feature_at)),
            "depth": depth[row_record],
            "vaf": vaf[row_record],
            "filter": np.array(filter_text, dtype=object)[filter_index[row_record]] if n else np.zeros(0, object),
            "outcome": np.concatenate([outcome[lonely], gene_outcome])[row_order],
        }
    )
    reasons = outcome[outcome != ""]
    return ColumnarResult(
        n_records=n,
        n_pass=int(passed.sum()),
        excluded=Counter(reasons.tolist()),
        gene_counts=Counter(dict(zip(gene_names[genes_counted].tolist(), times[genes_counted].tolist(), strict=True))),
        table=frame,
    )
