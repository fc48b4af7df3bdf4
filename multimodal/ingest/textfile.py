"""Reading the text tables people hand over (TSV/CSV, gzipped or not) and saying precisely what is wrong.

Every table reader of the project goes through here: the separator from the name (and a mismatch
named), each row's line number kept for messages, a row with the wrong field count refused, and on an
error path a diagnosis of the file itself (cut gzip, UTF-16, Latin-1, an Excel workbook). Problems of
many lines are named together, the first :data:`MAX_LINES_NAMED` and a count of the rest, so a file is
fixed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from multimodal.errors import MultimodalError

#: How many offending lines one message names before giving only the count.
MAX_LINES_NAMED = 10


def list_lines(lines: Sequence[tuple[int, str]]) -> str:
    """``line 3 ('a/b'), line 9 ('c d') and 4 more`` for (line, value) pairs (:func:`listing` of them)."""
    return listing([f"line {line} ({value!r})" for line, value in lines])


def listing(entries: Sequence[str], *, total: int | None = None) -> str:
    """The first ``MAX_LINES_NAMED`` entries joined by commas, then `` and N more``."""
    total = len(entries) if total is None else total
    shown = ", ".join(entries[:MAX_LINES_NAMED])
    return shown + (f" and {total - MAX_LINES_NAMED} more" if total > MAX_LINES_NAMED else "")


def line_problem(bad: pd.Series, *, one: str, many: str, problem: str, hint: str = "") -> list[str]:
    """A message fragment for offending raw cells (``bad``: values indexed by file line), or none.

    One line: ``line 5: <one> '<value>' <problem><hint>``; several: ``<many> <problem> on N lines:
    line 3 ('x'), line 7 ('y') and 2 more<hint>`` (ten named), so the file can be fixed in one go.
    """
    if bad.empty:
        return []
    if len(bad) == 1:
        return [f"line {int(bad.index[0])}: {one} {str(bad.iloc[0])!r} {problem}{hint}"]
    pairs = [(int(line), str(value)) for line, value in bad.items()]
    return [f"{many} {problem} on {len(bad)} lines: {list_lines(pairs)}{hint}"]


def raise_problems(path: Path, fragments: list[str]) -> None:
    """Raise one message holding every problem found (``FILE: problem; problem``), if any."""
    if fragments:
        raise MultimodalError(f"{path}: {'; '.join(fragments)}")


def id_problems(ids: pd.Series, *, column: str) -> list[str]:
    """Empty and repeated IDs (``ids`` stripped, indexed by file line): every one named, up to ten of each."""
    fragments = []
    empty = ids[ids == ""]
    if len(empty) == 1:
        fragments.append(f"line {int(empty.index[0])}: empty {column}")
    elif len(empty):
        lines = [f"line {int(line)}" for line in empty.index]
        fragments.append(f"empty {column} on {len(empty)} lines: {listing(lines)}")
    given = ids[ids != ""]
    repeated = given[given.duplicated(keep=False)]
    groups = [
        (value, ", ".join(str(int(line)) for line in lines))
        for value, lines in repeated.groupby(repeated, sort=False).groups.items()
    ]
    if len(groups) == 1:
        fragments.append(f"duplicate {column} {groups[0][0]!r} on lines {groups[0][1]}")
    elif groups:
        named = listing([f"{value!r} (lines {lines})" for value, lines in groups])
        fragments.append(f"{len(groups)} duplicate {column} values: {named}")
    return fragments


def check_rows(frame: pd.DataFrame, path: Path, *, what: str) -> None:
    """Raise when a table read by ``read_table`` has a header but no rows."""
    if frame.empty:
        raise MultimodalError(f"{path}: {what} has a header but no rows")


def open_text(path: Path):
    """Open a text table for reading, gzipped or not (by extension), skipping a UTF-8 byte-order mark."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def check_field_counts(path: Path, *, sep: str, first_line: int, n_fields: int, what: str) -> None:
    """Raise naming the first line from ``first_line`` (1-based) on whose field count is not ``n_fields``.

    pandas, reading selected columns, pads a short row (a cut-off file, a lost tab) with empty cells and
    drops a long row's extras without a word; one pass over the raw bytes catches both. Blank lines pass.
    """
    import gzip

    separator = sep.encode()
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number < first_line or line.count(separator) == n_fields - 1 or not line.strip():
                    continue
                raise MultimodalError(
                    f"{path}: line {number}: {line.count(separator) + 1} fields, the header has {n_fields} "
                    f"(a cut-off file or a lost separator?) in the {what}"
                )
    except (OSError, EOFError) as exc:
        raise MultimodalError(f"{path}: cannot read {what}: {exc}") from exc


def table_separator(path: Path) -> str:
    """``,`` for ``.csv``/``.csv.gz``, else tab."""
    return "," if path.name.lower().removesuffix(".gz").endswith(".csv") else "\t"


def separator_mismatch(path: str | Path, header: str, *, sep: str) -> str | None:
    """Why a table's header suggests the other separator than its name says, or None.

    A header that does not split on ``sep`` but does on the other one (``,`` vs tab) is a CSV named
    ``.tsv`` or the reverse; reading it would give one column and a misleading complaint later.
    """
    other = "," if sep == "\t" else "\t"
    if sep in header or other not in header:
        return None
    said, seen = ("tab", "comma") if sep == "\t" else ("comma", "tab")
    suffix = (".csv" if seen == "comma" else ".tsv") + (".gz" if Path(path).name.lower().endswith(".gz") else "")
    return (
        f"{path}: looks {seen}-separated (its header has {header.count(other) + 1} {seen}-separated fields), "
        f"but the name says {said}-separated; rename it {suffix} or save it {said}-separated"
    )


def diagnose_table(path: Path, *, what: str, cause: BaseException | None = None, comments: bool = False) -> None:
    """On an error path only: raise a clearer message when the file is not the text table its name says.

    Looks for a gzip stream cut short or a ``.gz`` that is not gzip, a binary file (an Excel
    workbook), UTF-16 or non-UTF-8 text, and a comma-separated file named ``.tsv`` (or the reverse).
    Returns when none applies, so the caller raises its own message. ``cause`` is the exception behind
    the caller's error; ``comments`` skips leading ``#`` lines (featureCounts, GCT).
    """
    import csv
    import gzip

    gz = path.name.lower().endswith(".gz")
    if gz and isinstance(cause, EOFError):
        raise MultimodalError(
            f"{path}: the gzip stream ends early: the file is cut short (an interrupted download or copy?); "
            "fetch or compress it again"
        ) from cause
    if gz and isinstance(cause, gzip.BadGzipFile):
        raise MultimodalError(
            f"{path}: is named .gz but is not gzip-compressed; compress it, or drop .gz from its name"
        ) from cause
    try:
        with (gzip.open if gz else open)(path, "rb") as handle:
            head = handle.read(1 << 16)
    except (OSError, EOFError):
        return
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00\x00\x00\x00" in (head[0:8:2], head[1:8:2]):
        raise MultimodalError(f"{path}: {what} is UTF-16 text; save it as UTF-8")
    if head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise MultimodalError(
            f"{path}: {what} is an Excel workbook (or another binary file), not a text table; "
            "export it as tab-separated (.tsv) or comma-separated (.csv) text"
        )
    if b"\x00" in head:
        raise MultimodalError(f"{path}: {what} is a binary file, not a text table")
    if isinstance(cause, UnicodeDecodeError) or _first_non_utf8(head, final=False) is not None:
        found = _first_non_utf8_line(path, gz)
        if found is not None:
            line, byte = found
            raise MultimodalError(
                f"{path}: line {line}: byte 0x{byte:02x} is not UTF-8 (a Latin-1 or Windows-1252 export?); "
                f"save the {what} as UTF-8"
            )
    sep = table_separator(path)
    other = "," if sep == "\t" else "\t"
    try:
        with open_text(path) as handle:
            lines = []
            for line in handle:
                if line.strip() and not (comments and not lines and line.startswith("#")):
                    lines.append(line)
                if len(lines) >= 50:
                    break
    except (OSError, EOFError, UnicodeDecodeError):
        return
    if not lines:
        return
    mismatch = separator_mismatch(path, lines[0].rstrip("\r\n"), sep=sep)  # a header of one field: read_table's words
    if mismatch:
        raise MultimodalError(mismatch)
    # A header holding both separators: rows that split evenly only on the other one tell
    n_sep = [len(row) for row in csv.reader(lines, delimiter=sep)]
    n_other = [len(row) for row in csv.reader(lines, delimiter=other)]
    rows_sep, rows_other = n_sep[1:], n_other[1:]
    evenly = len(set(n_sep)) > 1 and len(set(rows_other)) == 1
    if rows_other and evenly and all(o > s for o, s in zip(rows_other, rows_sep, strict=True)):
        said, seen = ("tab", "comma") if sep == "\t" else ("comma", "tab")
        raise MultimodalError(
            f"{path}: looks {seen}-separated (its rows have {rows_other[0]} {seen}-separated fields, its header "
            f"{n_sep[0]} {said}-separated ones), but the name says {said}-separated; "
            f"rename it {'.csv' if seen == 'comma' else '.tsv'} or save it {said}-separated"
        )


def _first_non_utf8(data: bytes, *, final: bool) -> int | None:
    """Offset of the first byte of ``data`` that is not UTF-8; a sequence cut at the end passes unless ``final``."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None if not final and exc.reason == "unexpected end of data" else exc.start
    return None


def _first_non_utf8_line(path: Path, gz: bool) -> tuple[int, int] | None:
    """(line number, byte) of the first byte of the file that is not UTF-8."""
    import gzip

    try:
        with (gzip.open if gz else open)(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                offset = _first_non_utf8(line, final=True)
                if offset is not None:
                    return number, line[offset]
    except (OSError, EOFError):
        return None
    return None


def read_table(path: str | Path, *, what: str, skip_leading: str | None = None) -> pd.DataFrame:
    """Read a TSV/CSV (``.csv``/``.csv.gz`` comma-separated, else tab; gzip allowed) as strings.

    The index is each row's line number in the file (the header is line 1), so messages can name
    it; blank lines are skipped, and a row with more or fewer fields than the header is an error.
    Lines before the header that start with ``skip_leading`` (e.g. ``@`` for GATK's SAM-style header)
    are skipped; line numbers still count them.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: {what} not found")
    sep = table_separator(path)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, delimiter=sep)
            start = 1  # the line a record starts on (a quoted cell may hold a newline)
            for fields in reader:
                line, start = start, reader.line_num + 1
                if not any(f.strip() for f in fields):
                    continue
                if header is None and skip_leading and fields[0].startswith(skip_leading):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    mismatch = separator_mismatch(path, sep.join(fields), sep=sep) if len(fields) == 1 else None
                    if mismatch:
                        raise MultimodalError(mismatch)
                    continue
                if len(fields) != len(header):
                    diagnose_table(path, what=what)  # a separator mixed up explains it better
                    raise MultimodalError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)}")
                rows.append(fields)
                lines.append(line)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        diagnose_table(path, what=what, cause=exc)
        raise MultimodalError(f"{path}: cannot read {what}: {exc}") from exc
    if header is None:
        raise MultimodalError(f"{path}: {what} is empty")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        named = listing([repr(c) for c in duplicated])
        raise MultimodalError(
            f"{path}: {'column' if len(duplicated) == 1 else f'{len(duplicated)} columns'} {named} "
            f"occur{'s' if len(duplicated) == 1 else ''} more than once in the header"
        )
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line"), dtype=str)
