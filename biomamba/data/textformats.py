"""Readers of the general-text formats: JSONL (C4), Parquet (Wikipedia), WikiText raw, plain text.

Each turns one file into a stream of :class:`~biomamba.data.records.Doc` / ``Skip`` events
(see ``records``); the registry in ``readers`` picks the reader for a format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

from biomamba.data.records import (DataError, Doc, Event, LineNormalizer, Skip, empty_file_error, iter_lines,
                                   iter_utf8_lines, normalize_text)


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | Path, text_field: str = "text") -> Iterator[Event]:
    """One JSON object per line; the document is ``obj[text_field]``. Blank lines are counted, not errors."""
    path = Path(path)
    seen_any = False
    for number, raw in iter_lines(path):
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
        raise empty_file_error(path)


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
            raise empty_file_error(path) from None
        raise DataError(f"{path}: not a readable Parquet file ({exc})", reason="bad_parquet", file=str(path)) from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: missing column {text_field!r} (columns: {', '.join(names[:12])})",
                        reason="missing_field", file=str(path), where=f"column {text_field!r}")
    if pf.metadata.num_rows == 0:
        raise empty_file_error(path)
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


def _line_documents(path: Path, boundary: Callable[[str], str | None]) -> Iterator[Event]:
    """Documents made of consecutive lines, normalised as they are read (``LineNormalizer``: a
    huge document costs about two copies of its text). ``boundary(line)``: "start" (the line
    begins a new document), "drop" (it ends the current one and belongs to none) or None."""
    doc = LineNormalizer()
    start = 1
    any_line = False
    for number, line in iter_utf8_lines(path):
        any_line = True
        if isinstance(line, Skip):
            yield line
            continue
        cut = boundary(line)
        if cut is not None and doc.added:
            yield Doc(start, doc.text())
            doc = LineNormalizer()
        if cut == "drop":
            continue
        if not doc.added:
            start = number
        doc.add(line)
    if not any_line:
        raise empty_file_error(path)
    if doc.added:
        yield Doc(start, doc.text())


def read_wikitext(path: str | Path) -> Iterator[Event]:
    """WikiText raw (``wiki.*.raw``): one document per article, split at `` = Title = `` lines.

    The document keeps its title and section lines, as WikiText perplexity evaluations do.
    The record id is the line number of the title (1 for text before the first title).
    """
    return _line_documents(Path(path), lambda line: "start" if is_wikitext_title(line) else None)


# --------------------------------------------------------------------------- plain text


def read_text(path: str | Path, unit: str = "file") -> Iterator[Event]:
    """Plain UTF-8 text: one document per file, per blank-line-separated paragraph, or per line."""
    path = Path(path)
    if unit == "line":
        return _text_lines(path)
    if unit == "paragraph":
        return _line_documents(path, lambda line: None if line.strip() else "drop")
    return _line_documents(path, lambda line: None)


def _text_lines(path: Path) -> Iterator[Event]:
    any_line = False
    for number, line in iter_utf8_lines(path):
        any_line = True
        if isinstance(line, Skip):
            yield line
        elif line.strip():
            yield Doc(number, normalize_text(line))
        else:
            yield Skip(number, "blank_line", f"line {number}")
    if not any_line:
        raise empty_file_error(path)
