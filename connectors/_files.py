"""Uploaded files: recognise the format by content, check the limits, parse into a Parquet file.

`sniff` runs in the server on a staged file and reads only its first bytes (and, for .xlsx, the
zip central directory and the sizes it declares). `ingest` is the heavy part, run in a worker: it
inflates a workbook's parts for real first (the declared sizes may lie), reads the whole file with
Polars (Excel through calamine), types every column from all of its values, turns pandas'
missing-value tokens into nulls, recognises ISO dates, and writes Parquet. It takes and returns
plain data so that it can run in a worker.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from datagraph.errors import BadInput, TooLarge, UnsupportedFormat
from engine import ColumnInfo, column_infos, dtype_name

__all__ = ["FORMATS", "IngestLimits", "IngestResult", "ingest", "sniff"]

FORMATS = ("csv", "xlsx", "xls")

# pandas.read_csv's default missing-value tokens (pandas 2.x/3.x), so files read as pandas reads them.
NA_TOKENS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = b"PK\x03\x04"
_OTHER_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
    b"PAR1": "a Parquet file",
    b"SQLite format 3": "a SQLite database",
}
_SEPARATORS = (",", ";", "\t", "|")
# ISO-8601 shapes recognised as dates; anything else stays text (day/month order is ambiguous).
_DATE_FORMATS: tuple[tuple[str, str, str], ...] = (
    (r"^\d{4}-\d{2}-\d{2}$", "%Y-%m-%d", "date"),
    (r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$", "%Y-%m-%d{T}%H:%M:%S", "datetime"),
    (r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}$", "%Y-%m-%d{T}%H:%M", "datetime"),
    (r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}\.\d+$", "%Y-%m-%d{T}%H:%M:%S%.f", "datetime"),
)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    max_columns: int
    max_rows: int
    xlsx_max_uncompressed: int
    xlsx_max_ratio: int
    xlsx_max_entries: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    row_count: int
    columns: list[ColumnInfo]


def _extension(filename: str) -> str:
    return filename.rsplit(".", 1)[-1].lower() if "." in filename else ""


def sniff(path: Path, filename: str, limits: IngestLimits) -> str:
    """Return "csv", "xlsx" or "xls" from the file's content; refuse what is not one of them."""
    ext = _extension(filename)
    if ext not in FORMATS:
        shown = f'".{ext}"' if ext else "no extension"
        raise UnsupportedFormat(f"Files with {shown} are not supported; upload a .csv, .xlsx or .xls file.")
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if not head:
        raise BadInput("The file is empty.")
    if head.startswith(_OLE2):
        found = "xls"
    elif head.startswith(_ZIP):
        _check_xlsx(path, limits)
        found = "xlsx"
    else:
        for magic, what in _OTHER_MAGIC.items():
            if head.startswith(magic):
                raise UnsupportedFormat(f"The file is {what}, not a CSV or Excel file.")
        if b"\x00" in head:
            raise UnsupportedFormat("The file holds binary data, not CSV text or an Excel workbook.")
        found = "csv"
    if found != ext:
        raise UnsupportedFormat(
            f"The file is named .{ext} but its content is {_describe(found)}; rename it to .{found} or export it again."
        )
    return found


def _describe(fmt: str) -> str:
    return {"csv": "text (CSV)", "xlsx": "an .xlsx workbook", "xls": "an old-style .xls workbook"}[fmt]


def _check_xlsx(path: Path, limits: IngestLimits) -> None:
    """Refuse zip bombs before any XML is parsed, by what the archive declares: entry count, total
    size, compression ratio (`ingest` checks again by what the parts really inflate to)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _damaged() from exc
    names = {i.filename for i in infos}
    if "xl/workbook.xml" not in names and "xl/workbook.bin" not in names:
        raise UnsupportedFormat("The file is a zip archive but not an Excel workbook.")
    if len(infos) > limits.xlsx_max_entries:
        raise TooLarge(f"The workbook has {len(infos)} parts; the limit is {limits.xlsx_max_entries}.")
    _check_sizes(sum(i.file_size for i in infos), limits)
    for i in infos:
        _check_ratio(i, i.file_size, limits)


def _damaged() -> BadInput:
    return BadInput("The file looks like an .xlsx workbook but its zip structure is damaged.")


def _check_sizes(total: int, limits: IngestLimits) -> None:
    if total > limits.xlsx_max_uncompressed:
        mib = limits.xlsx_max_uncompressed // (1024 * 1024)
        raise TooLarge(f"The workbook expands to more than {mib} MiB, the limit.")


def _check_ratio(info: zipfile.ZipInfo, size: int, limits: IngestLimits) -> None:
    if size > 65536 and size > limits.xlsx_max_ratio * max(info.compress_size, 1):
        raise TooLarge(
            f"The workbook part {info.filename!r} is compressed more than {limits.xlsx_max_ratio}:1;"
            " it looks like a zip bomb."
        )


_INFLATE_CHUNK = 1 << 16


def _inflate_all(path: Path, limits: IngestLimits) -> None:
    """In the worker, before calamine parses it: inflate every part of a workbook for real,
    counting the bytes that come out rather than trusting the sizes the archive declares. A part
    whose header says 1 KiB but inflates to gigabytes stops at the uncompressed cap (or the ratio
    limit), and a part that inflates to other than its declared size is refused, so the parser
    never meets it."""
    with zipfile.ZipFile(path) as zf:  # sniff has checked it opens
        infos = zf.infolist()
    total = 0
    with open(path, "rb") as raw:
        for info in infos:
            size = 0
            for n in _inflated(raw, info):
                size, total = size + n, total + n
                _check_sizes(total, limits)
                _check_ratio(info, size, limits)
            if size != info.file_size:
                raise BadInput(
                    f"The workbook part {info.filename!r} does not match the size its archive declares; the file is"
                    " damaged or crafted."
                )


def _inflated(raw: BinaryIO, info: zipfile.ZipInfo) -> Iterator[int]:
    """The sizes of the pieces (64 KiB at most) one part inflates to, from its local header on."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsupportedFormat(f"The workbook part {info.filename!r} uses a compression Excel does not.")
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise _damaged()
    raw.seek(int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little"), 1)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    left, pending = info.compress_size, b""
    while True:
        if not pending:
            pending = raw.read(min(_INFLATE_CHUNK, left)) if left > 0 else b""
            if not pending:
                return
            left -= len(pending)
        if inflater is None:
            yield len(pending)
            pending = b""
            continue
        yield len(inflater.decompress(pending, _INFLATE_CHUNK))
        if inflater.eof:
            return
        pending = inflater.unconsumed_tail


def ingest(src: Path, fmt: str, out: Path, limits: IngestLimits) -> IngestResult:
    """Parse `src` (already sniffed as `fmt`) and write it to `out` as Parquet."""
    if fmt == "csv":
        try:
            return _ingest_csv(src, out, limits)
        except BaseException:
            out.unlink(missing_ok=True)  # nothing half-written stays
            raise
    if fmt == "xlsx":
        _inflate_all(src, limits)
    frame = _read_excel(src, limits)
    if frame.width > limits.max_columns:
        raise TooLarge(f"The file has {frame.width} columns; the limit is {limits.max_columns}.")
    if frame.height > limits.max_rows:
        raise TooLarge(f"The file has more than {limits.max_rows:,} rows, the limit.")
    if frame.height == 0:
        raise BadInput("The file has a header row but no data rows.")
    frame = _parse_dates(frame)
    frame.write_parquet(out, compression="lz4", statistics=True)
    return IngestResult(row_count=frame.height, columns=column_infos(frame))


# CSV


def _ingest_csv(src: Path, out: Path, limits: IngestLimits) -> IngestResult:
    """Stream the CSV to Parquet without holding it, every column typed from all of its values as
    `_type_columns` and `_parse_dates` type a frame in memory (so pandas parity holds). A sample of
    each column suggests its type; one pass writes with those types, cast strictly. Only when a value
    does not fit does a second pass count what converts (`_checked_types`) and a third write. Polars
    checks that the text is UTF-8 as it reads; the check that names the offending line runs only
    once a read has failed."""
    header, separator = _scan_header(src, limits)
    names = _column_names(header)
    source: Path | bytes = src
    if _has_lone_cr(src):
        # Old Mac line endings (CR alone), which Polars does not split on (rare: held in memory).
        source = src.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    # Every column as text; `n_rows` stops reading one row past the limit. The missing-value tokens
    # become nulls after the read: the reader's own `null_values` compares every field with every
    # token, which cost more than the rest of the read (an empty field is null either way). Not
    # `replace`, which does not stream (it held the whole file: 510 MiB against 310).
    scan = pl.scan_csv(
        source,
        separator=separator,
        infer_schema=False,
        n_rows=limits.max_rows + 1,
        raise_if_empty=True,
        new_columns=names,
    ).with_columns(pl.when(pl.col(n).is_in(NA_TOKENS)).then(None).otherwise(pl.col(n)).alias(n) for n in names)
    try:
        samples = _samples(scan, names)
        try:  # the usual file: every value fits the types its sample suggests, found in one pass
            height, nulls, schema = _write(scan.with_columns(_likely_types(names, samples)), out)
        except pl.exceptions.PolarsError as exc:  # a value that did not fit (or a malformed file): count, then write
            if _system_error(exc):
                raise
            _check_utf8(src)  # not text at all: say where, before reading it all again
            height, nulls, schema = _write(scan.with_columns(_checked_types(scan, names, samples)), out)
    except pl.exceptions.NoDataError as exc:
        raise BadInput("The file is empty.") from exc
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
        if _system_error(exc):
            raise  # the disk, not the file (a full one is told as STORAGE_FULL by the worker's storage guard)
        _check_utf8(src)
        raise _explain_csv_error(source, separator, len(names)) from exc
    if height > limits.max_rows:
        raise TooLarge(f"The file has more than {limits.max_rows:,} rows, the limit.")
    if height == 0:
        raise BadInput("The file has a header row but no data rows.")
    columns = [ColumnInfo(n, dtype_name(schema[n]), nulls[n], nulls[n] / height) for n in names]
    return IngestResult(row_count=height, columns=columns)


def _system_error(exc: BaseException) -> bool:
    """Whether Polars failed on the system (reading or writing a file), not on the CSV's content."""
    return "(os error " in str(exc)


def _write(frame: pl.LazyFrame, out: Path) -> tuple[int, dict[str, int], pl.Schema]:
    """Stream `frame` to `out` as Parquet; its rows, the missing values of each column, its schema.
    (Counting in the same pass, `collect_all` of the sink and the counts, took no less time and more
    memory than reading the typed Parquet back.)"""
    frame.sink_parquet(out, compression="lz4", statistics=True)
    written = pl.scan_parquet(out)
    schema = written.collect_schema()
    counts = written.select(pl.len().alias("\x1frows"), *(pl.col(n).null_count() for n in schema)).collect().row(0)
    return int(counts[0]), dict(zip(schema, (int(n) for n in counts[1:]), strict=True)), schema


_SAMPLE = 1000  # present values of a column that pick the types to try on all of them
_HEAD_ROWS = 10_000  # rows read at once for the samples; a sparser column is sampled on its own


def _samples(scan: pl.LazyFrame, names: list[str]) -> dict[str, pl.Series]:
    """Each column's first `_SAMPLE` present values (what `_type_columns` samples), read from the
    head of the file: only a column with fewer present values there is read further, on its own."""
    head = scan.head(_HEAD_ROWS).collect()
    samples = {n: head.get_column(n).drop_nulls().head(_SAMPLE) for n in names}
    if head.height < _HEAD_ROWS:
        return samples
    sparse = [n for n in names if samples[n].len() < _SAMPLE]
    if sparse:
        found = pl.collect_all([scan.select(pl.col(n)).drop_nulls().head(_SAMPLE) for n in sparse])
        samples.update((n, f.get_column(n)) for n, f in zip(sparse, found, strict=True))
    return samples


def _likely_types(names: list[str], samples: dict[str, pl.Series]) -> list[pl.Expr]:
    """Each column as the first type its sample suggests (`_checked_types`' first candidates), cast
    strictly: a value that does not convert stops the write with an error."""
    typed: list[pl.Expr] = []
    for name in names:
        sample = samples[name]
        if sample.is_empty():
            continue
        target = _first_fit(sample)
        if target == pl.Boolean:
            # "1"/"0" for the boolean words, and anything else made into a number that cannot be (a
            # strict cast fails on it); `replace_strict` would do it, but does not stream.
            col = pl.col(name)
            truth = [t for t in _BOOLEAN_TEXT if t.lower() == "true"]
            digit = pl.when(col.is_in(truth)).then(pl.lit("1")).when(col.is_in(_BOOLEAN_TEXT)).then(pl.lit("0"))
            typed.append(digit.otherwise(col + "?").cast(pl.UInt8, strict=True).cast(pl.Boolean).alias(name))
        elif target is not None:
            typed.append(pl.col(name).cast(target, strict=True))
        elif (parser := _date_parser(name, sample, strict=True)) is not None:
            typed.append(parser)
    return typed


def _checked_types(scan: pl.LazyFrame, names: list[str], samples: dict[str, pl.Series]) -> list[pl.Expr]:
    """The casts that type the text columns, as `_type_columns` and `_parse_dates` choose them: one
    streaming aggregate over the whole file counts, for each candidate type a sample suggests, the
    values that do not convert. A column takes the first candidate of its ladder (Int64 -> Float64;
    Boolean) that loses no value, else an ISO date format its sample matches, else stays text."""
    checks: list[pl.Expr] = []
    ladders: dict[str, list[pl.DataType]] = {}
    dates: dict[str, pl.Expr] = {}
    for i, name in enumerate(names):
        checks.append(pl.col(name).null_count().alias(f"{i}\x1fnulls"))
        sample = samples[name]
        if sample.is_empty():
            continue
        ladder: list[pl.DataType] = []
        target = _first_fit(sample)
        while target is not None:
            checks.append(_cast(name, target).null_count().alias(f"{i}\x1f{len(ladder)}"))
            ladder.append(target)
            target = _LADDER[target]
        ladders[name] = ladder
        parser = _date_parser(name, sample)
        if parser is not None:
            checks.append(parser.null_count().alias(f"{i}\x1fdate"))
            dates[name] = parser
    counts = scan.select(checks).collect().row(0, named=True)
    typed: list[pl.Expr] = []
    for i, name in enumerate(names):
        nulls = counts[f"{i}\x1fnulls"]
        fits = [t for k, t in enumerate(ladders.get(name, [])) if counts[f"{i}\x1f{k}"] == nulls]
        if fits:
            typed.append(_cast(name, fits[0]))
        elif name in dates and counts[f"{i}\x1fdate"] == nulls:
            typed.append(dates[name])
    return typed


def _scan_header(src: Path, limits: IngestLimits) -> tuple[list[str], str]:
    """Read and split the header line without reading the whole file (a 1M-column header is 14 MB)."""
    budget = limits.max_columns * 1024 + 4096
    with open(src, "rb") as fh:
        raw = fh.read(budget)
    raw = raw.removeprefix(codecs.BOM_UTF8)
    end = _header_end(raw)
    if end is None:
        if len(raw) >= budget:
            raise TooLarge(f"The header row is too long; files may have at most {limits.max_columns} columns.")
        end = len(raw)
    try:
        line = raw[:end].decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        _check_utf8(src)  # names the line and byte (Polars does not check the names it is given)
        line = raw[:end].decode("utf-8", errors="replace").rstrip("\r")
    if not line.strip():
        raise BadInput("The first line of the file is empty; it should hold the column names.")
    separator = max(_SEPARATORS, key=lambda s: line.count(s))
    if line.count(separator) == 0:
        separator = ","
    header = next(csv.reader([line], delimiter=separator))
    if len(header) > limits.max_columns:
        raise TooLarge(f"The file has {len(header)} columns; the limit is {limits.max_columns}.")
    return header, separator


def _header_end(raw: bytes) -> int | None:
    """Offset of the newline that ends the header, honouring quoted names that contain newlines."""
    quoted = False
    for i, byte in enumerate(raw):
        if byte == 0x22:
            quoted = not quoted
        elif byte in (0x0A, 0x0D) and not quoted:
            return i
    return None


def _column_names(header: list[str]) -> list[str]:
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise BadInput(
                f'The column name "{n}" appears twice in the header (columns {seen[n] + 1} and {i + 1});'
                " rename one of them and upload again."
            )
        seen[n] = i
    return names


def _check_utf8(src: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(src, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk.count(b"\n", 0, exc.start)
                raise BadInput(
                    f"The file is not UTF-8 text: line {line} has the byte 0x{chunk[exc.start]:02X}, which UTF-8 does"
                    " not allow. Save the file as UTF-8 (in Excel: 'CSV UTF-8') and upload it again."
                ) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise BadInput("The file is not UTF-8 text: it ends in the middle of a character.") from None


_LONE_CR = re.compile(rb"\r(?!\n)")


def _has_lone_cr(src: Path) -> bool:
    with open(src, "rb") as fh:
        previous = b""
        while chunk := fh.read(1 << 20):
            # A chunk may end on the \r of a \r\n; look one byte back across the boundary. Most files
            # have no \r at all, which one memchr per chunk finds.
            window = previous[-1:] + chunk
            if b"\r" in window and _LONE_CR.search(window[:-1] if window.endswith(b"\r") else window):
                return True
            previous = chunk
    return previous.endswith(b"\r")


def _explain_csv_error(source: Path | bytes, separator: str, width: int) -> BadInput:
    """Find the first line with too many fields, for a message a person can act on."""
    text = source.decode("utf-8") if isinstance(source, bytes) else source.read_text("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    for fields in reader:
        if len(fields) > width:
            return BadInput(
                f"Line {reader.line_num} has {len(fields)} fields but the header has {width} columns;"
                " fix that row (a missing quote or an extra separator) and upload again."
            )
    return BadInput("The file could not be read as CSV; check that it is delimited text with one header row.")


# Excel


def _read_excel(src: Path, limits: IngestLimits) -> pl.DataFrame:
    try:
        frame = pl.read_excel(src, sheet_id=1, engine="calamine", infer_schema_length=None)
    except pl.exceptions.NoDataError as exc:
        raise BadInput("The first sheet of the workbook is empty.") from exc
    except Exception as exc:  # calamine/fastexcel raise their own classes for damaged or protected files
        if type(exc).__module__.startswith(("fastexcel", "_fastexcel", "polars")):
            raise BadInput(
                "The workbook could not be read; it may be damaged or password-protected. Open it in a"
                " spreadsheet program, save it again, and upload the new file."
            ) from exc
        raise
    if frame.width > limits.max_columns:
        raise TooLarge(f"The first sheet has {frame.width} columns; the limit is {limits.max_columns}.")
    _column_names([str(c) for c in frame.columns])
    # Text cells holding pandas' missing-value tokens are missing, as in a CSV.
    text = [n for n, d in frame.schema.items() if d == pl.String]
    frame = frame.with_columns(pl.col(n).str.strip_chars().replace(NA_TOKENS, None) for n in text)
    return _type_columns(frame)


# Typing: every text column gets the narrowest type that all of its values fit, as pandas does.
_BOOLEAN_TEXT = ["True", "TRUE", "true", "False", "FALSE", "false"]
_LADDER: dict[pl.DataType, pl.DataType | None] = {pl.Int64(): pl.Float64(), pl.Float64(): None, pl.Boolean(): None}


def _cast(name: str, target: pl.DataType) -> pl.Expr:
    if target == pl.Boolean:
        col = pl.col(name)
        return pl.when(col.is_in(_BOOLEAN_TEXT)).then(col.str.to_lowercase() == "true").alias(name)
    return pl.col(name).cast(target, strict=False)


def _first_fit(sample: pl.Series) -> pl.DataType | None:
    for target in (pl.Int64(), pl.Float64()):
        if sample.cast(target, strict=False).null_count() == 0:
            return target
    return pl.Boolean() if sample.is_in(_BOOLEAN_TEXT).all() else None


def _type_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast text columns to Int64, Float64 or Boolean when every value converts.

    A 1,000-value sample picks each column's candidate type; one parallel select then casts the
    candidates in full and checks that no value was lost, stepping Int64 -> Float64 -> text.
    """
    nulls = dict(zip(frame.columns, frame.null_count().row(0), strict=True))
    pending: dict[str, pl.DataType] = {}
    for name, dtype in frame.schema.items():
        if dtype == pl.String and nulls[name] < frame.height:
            target = _first_fit(frame.get_column(name).drop_nulls().head(_SAMPLE))
            if target is not None:
                pending[name] = target
    while pending:
        cast = frame.select(_cast(n, t) for n, t in pending.items())
        cast_nulls = dict(zip(cast.columns, cast.null_count().row(0), strict=True))
        fits = [n for n in pending if cast_nulls[n] == nulls[n]]
        frame = frame.with_columns(cast.get_column(n) for n in fits)
        pending = {n: nxt for n, t in pending.items() if n not in fits and (nxt := _LADDER[t]) is not None}
    return frame


# Dates


def _date_parser(name: str, sample: pl.Series, *, strict: bool = False) -> pl.Expr | None:
    """The parse of text column `name` in the ISO format all of its `sample` values have, if any
    (`strict`: a value that does not parse is an error, not a null)."""
    if sample.is_empty():
        return None
    for pattern, fmt, kind in _DATE_FORMATS:
        if sample.str.contains(pattern).all():
            col = pl.col(name).str
            if kind == "date":
                return col.to_date(fmt, strict=strict)
            return col.to_datetime(fmt.replace("{T}", sample[0][10]), strict=strict)  # "T" or " "
    return None


def _parse_dates(frame: pl.DataFrame) -> pl.DataFrame:
    """Turn text columns whose every value is an ISO date or timestamp into Date / Datetime.

    A sample picks the format (explicit formats are cheap; `try_parse_dates` doubled read time);
    one parallel select parses the candidates, and a column is kept as text if any value fails.
    """
    parsers: dict[str, pl.Expr] = {}
    for name, dtype in frame.schema.items():
        if dtype != pl.String:
            continue
        parser = _date_parser(name, frame.get_column(name).drop_nulls().head(_SAMPLE))
        if parser is not None:
            parsers[name] = parser
    if not parsers:
        return frame
    parsed = frame.select(parsers.values())
    kept = [
        parsed.get_column(n) for n in parsers if parsed.get_column(n).null_count() == frame.get_column(n).null_count()
    ]
    return frame.with_columns(kept) if kept else frame
