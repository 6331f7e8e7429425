"""The reader registry: format names, file extensions, and ``read_records`` (one file → events).

It sits above the format readers (``medline`` for MEDLINE XML, ``textformats`` for JSONL,
Parquet, WikiText and plain text), which share only the base layer ``records`` (events,
``DataError``, text cleaning, guarded file access). The names that used to live here are
re-exported, so ``from biomamba.data.readers import Doc, read_jsonl, ...`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from biomamba.data.medline import read_medline
from biomamba.data.records import (DataError, Delete, Doc, Event, Skip, normalize_text, open_binary,
                                   squash_spaces)
from biomamba.data.textformats import is_wikitext_title, read_jsonl, read_parquet, read_text, read_wikitext

__all__ = ["FORMATS", "EXTENSIONS", "DataError", "Delete", "Doc", "Event", "Skip", "detect_format",
           "is_wikitext_title", "normalize_text", "open_binary", "read_jsonl", "read_medline", "read_parquet",
           "read_records", "read_text", "read_wikitext", "squash_spaces"]

FORMATS = ("medline", "jsonl", "parquet", "wikitext", "text")
# what a directory entry of a source must end with to be read as that format (lower-cased name)
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "medline": (".xml", ".xml.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
    "parquet": (".parquet",),
    "wikitext": (".raw", ".tokens", ".raw.gz"),
    "text": (".txt", ".txt.gz", ".text"),
}


def detect_format(path: str | Path) -> str:
    """The format a file's name implies (a ``.gz`` suffix is looked through)."""
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


def read_records(path: str | Path, fmt: str, **options) -> Iterator[Event]:
    """Dispatch on the format name (``auto`` looks at the file name)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "medline":
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
