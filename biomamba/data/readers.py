"""Readers: one raw file → a stream of records, each a document or a counted skip.

Every reader is a generator of :class:`Doc` (a document and its record id), :class:`Skip`
(a record that is not used, with the reason; ``error=True`` for a broken record) and, for
MEDLINE update files, :class:`Delete`. A broken *file* (truncated gzip, malformed XML, empty
file) raises :class:`DataError` naming the file and the last good record; what was read
before it has already been yielded. Nothing is held beyond the current record.

Record ids are integers, so that provenance stays compact: the PMID for MEDLINE, the line
number (from 1) for JSONL, plain text and WikiText, the row number (from 0) for Parquet.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Union

FORMATS = ("medline", "jsonl", "parquet", "wikitext", "text")


class DataError(ValueError):
    """A problem with an input file or record; the message names the file and the record."""

    def __init__(self, message: str, reason: str = "bad_file", file: str = "", where: str = ""):
        super().__init__(message)
        self.reason = reason
        self.file = file
        self.where = where

    def __reduce__(self):  # keep the fields across process boundaries
        return (DataError, (str(self), self.reason, self.file, self.where))


@dataclass(slots=True)
class Doc:
    record: int
    text: str
    year: int = 0


@dataclass(slots=True)
class Skip:
    record: int
    reason: str
    where: str = ""
    detail: str = ""
    error: bool = False


@dataclass(slots=True)
class Delete:
    record: int


Event = Union[Doc, Skip, Delete]

# --------------------------------------------------------------------------- text cleaning

_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline (tabs, NBSP, thin spaces, ...)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ALL_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unify line ends, drop control characters, collapse runs of spaces, keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def squash_spaces(text: str) -> str:
    """All whitespace (newlines too) → single spaces: for one-paragraph fields such as MEDLINE's."""
    return _ALL_WS.sub(" ", text).strip()


# --------------------------------------------------------------------------- file access


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".xml"):
        return "medline"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".raw", ".tokens")):
        return "wikitext"
    if name.endswith((".txt", ".text")):
        return "text"
    raise DataError(f"{path}: cannot tell the format from the file name; set the source's format "
                    f"to one of {', '.join(FORMATS)}", reason="unknown_format", file=str(path))


class _GuardedReader(io.RawIOBase):
    """Wraps a (gzip) stream so that decompression errors become DataError naming the file."""

    def __init__(self, raw: IO[bytes], path: str):
        self._raw = raw
        self._path = path
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:  # read1: whatever one step yields, so that data before a truncation is still delivered
            data = self._raw.read1(len(buffer))
        except EOFError as exc:
            raise DataError(f"{self._path}: truncated gzip file ({exc})", reason="truncated_gzip",
                            file=self._path) from None
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise DataError(f"{self._path}: corrupt gzip data ({exc})", reason="corrupt_gzip",
                            file=self._path) from None
        n = len(data)
        buffer[:n] = data
        self.bytes_read += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str | Path) -> io.BufferedReader:
    """Open a plain or gzip-compressed file (by magic bytes, not by name) as a guarded byte stream."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})", reason="unreadable", file=str(path)) from None
    head = f.read(2)
    f.seek(0)
    raw: IO[bytes] = gzip.GzipFile(fileobj=f, mode="rb") if head == b"\x1f\x8b" else f
    return io.BufferedReader(_GuardedReader(raw, str(path)), buffer_size=1 << 20)


def _empty(path: Path) -> DataError:
    return DataError(f"{path}: empty file (no records)", reason="empty_file", file=str(path))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line without its line end) for every line of a (gzip) file."""
    with open_binary(path) as f:
        for number, line in enumerate(f, 1):
            yield number, line.rstrip(b"\r\n")


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | Path, text_field: str = "text") -> Iterator[Event]:
    """One JSON object per line; the document is ``obj[text_field]``. Blank lines are counted, not errors."""
    path = Path(path)
    seen_any = False
    for number, raw in _lines(path):
        seen_any = True
        where = f"line {number}"
        if not raw.strip():
            yield Skip(number, "blank_line", where)
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Skip(number, "invalid_utf8", where, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", True)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Skip(number, "invalid_json", where, f"invalid JSON ({exc.msg} at column {exc.colno})", True)
            continue
        if not isinstance(obj, dict):
            yield Skip(number, "invalid_json", where, f"expected a JSON object, got {type(obj).__name__}", True)
            continue
        if text_field not in obj:
            keys = ", ".join(list(obj)[:8])
            yield Skip(number, "missing_field", where, f"missing field {text_field!r} (fields: {keys})", True)
            continue
        text = obj[text_field]
        if not isinstance(text, str):
            yield Skip(number, "missing_field", where,
                       f"field {text_field!r} is {type(text).__name__}, not a string", True)
            continue
        yield Doc(number, normalize_text(text))
    if not seen_any:
        raise _empty(path)


# --------------------------------------------------------------------------- Parquet


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'biomamba[data]' (or pip install pyarrow)",
                        reason="missing_dependency") from None
    return pq


def read_parquet(path: str | Path, text_field: str = "text", batch_rows: int = 1024) -> Iterator[Event]:
    """Rows of a Parquet file, reading only the text column, one record batch at a time."""
    path = Path(path)
    pq = _pyarrow_parquet()
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses
        if path.is_file() and path.stat().st_size == 0:
            raise _empty(path) from None
        raise DataError(f"{path}: not a readable Parquet file ({exc})", reason="bad_parquet", file=str(path)) from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: missing column {text_field!r} (columns: {', '.join(names[:12])})",
                        reason="missing_field", file=str(path), where=f"column {text_field!r}")
    if pf.metadata.num_rows == 0:
        raise _empty(path)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                if not isinstance(value, str):
                    yield Skip(row, "missing_field", f"row {row}",
                               f"column {text_field!r} is {'null' if value is None else type(value).__name__}", True)
                else:
                    yield Doc(row, normalize_text(value))
                row += 1
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: corrupt Parquet data after row {row} ({exc})", reason="bad_parquet",
                        file=str(path), where=f"row {row}") from None


# --------------------------------------------------------------------------- WikiText raw

_WIKI_TITLE = re.compile(r"^ ?= (?!= )(.*\S) = ?$")


def is_wikitext_title(line: str) -> bool:
    """`` = Title = `` starts an article; `` = = Section = = `` (and deeper) does not."""
    return bool(_WIKI_TITLE.match(line.rstrip("\r\n")))


def _utf8_lines(path: Path) -> Iterator[tuple[int, "str | Skip"]]:
    """(line number, decoded line), or a Skip in place of a line that is not valid UTF-8."""
    for number, raw in _lines(path):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, Skip(number, "invalid_utf8", f"line {number}", f"not valid UTF-8 ({exc.reason})", True)


def read_wikitext(path: str | Path) -> Iterator[Event]:
    """WikiText raw (``wiki.*.raw``): one document per article, split at `` = Title = `` lines.

    The document keeps its title and section lines, as WikiText perplexity evaluations do.
    The record id is the line number of the title (1 for text before the first title).
    """
    path = Path(path)
    buf: list[str] = []
    start = 1
    any_line = False
    for number, line in _utf8_lines(path):
        any_line = True
        if isinstance(line, Skip):
            yield line
            continue
        if is_wikitext_title(line) and buf:
            yield Doc(start, normalize_text("\n".join(buf)))
            buf = []
        if not buf:
            start = number
        buf.append(line)
    if not any_line:
        raise _empty(path)
    if buf:
        yield Doc(start, normalize_text("\n".join(buf)))


# --------------------------------------------------------------------------- plain text


def read_text(path: str | Path, unit: str = "file") -> Iterator[Event]:
    """Plain UTF-8 text: one document per file, per blank-line-separated paragraph, or per line."""
    path = Path(path)
    buf: list[str] = []
    start = 1
    any_line = False
    for number, line in _utf8_lines(path):
        any_line = True
        if isinstance(line, Skip):
            yield line
            continue
        if unit == "line":
            if line.strip():
                yield Doc(number, normalize_text(line))
            else:
                yield Skip(number, "blank_line", f"line {number}")
            continue
        if unit == "paragraph" and not line.strip():
            if buf:
                yield Doc(start, normalize_text("\n".join(buf)))
                buf = []
            continue
        if not buf:
            start = number
        buf.append(line)
    if not any_line:
        raise _empty(path)
    if buf:
        yield Doc(start, normalize_text("\n".join(buf)))


def read_records(path: str | Path, fmt: str, **options) -> Iterator[Event]:
    """Dispatch on the format name (``auto`` looks at the file name)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "medline":
        from biomamba.data.medline import read_medline

        return read_medline(path, languages=options.get("languages", ("eng",)),
                            require_abstract=options.get("require_abstract", True),
                            exclude_publication_types=options.get("exclude_publication_types", ()))
    if fmt == "jsonl":
        return read_jsonl(path, options.get("text_field", "text"))
    if fmt == "parquet":
        return read_parquet(path, options.get("text_field", "text"))
    if fmt == "wikitext":
        return read_wikitext(path)
    if fmt == "text":
        return read_text(path, options.get("text_unit", "file"))
    raise DataError(f"{path}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}", reason="unknown_format",
                    file=str(path))
