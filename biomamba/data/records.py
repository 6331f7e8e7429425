"""Records: what every reader yields, the error it raises, text cleaning and guarded file access.

The base layer of ``biomamba.data``: the format readers (``medline``, ``textformats``) import
it, the reader registry (``readers``) sits above them, and the build above that. Every reader
is a generator of :class:`Doc` (a document and its record id), :class:`Skip` (a record that is
not used, with the reason; ``error=True`` for a broken record) and, for MEDLINE update files,
:class:`Delete`. A broken *file* (truncated gzip, malformed XML, empty file) raises
:class:`DataError` naming the file and the last good record; what was read before it has
already been yielded. Nothing is held beyond the current record.

Record ids are integers, so that provenance stays compact: the PMID for MEDLINE, the line
number (from 1) for JSONL, plain text and WikiText, the row number (from 0) for Parquet.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Union


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


class LineNormalizer:
    """``normalize_text`` for a document that arrives line by line, without holding its raw lines.

    ``add`` each line (no ``\\n`` in it); ``text()`` equals ``normalize_text("\\n".join(lines))``.
    A long document then costs its normalised lines and one joined copy, not the five or six
    whole-text copies that ``normalize_text`` makes on the way.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.added = 0
        self._blank = False

    def add(self, line: str) -> None:
        self.added += 1
        if line.endswith("\r"):  # "\r" + the line break is one line end, as "\r\n" in normalize_text
            line = line[:-1]
        if "\r" in line:
            line = line.replace("\r\n", "\n").replace("\r", "\n")
        for part in line.split("\n"):
            part = _SPACES.sub(" ", _CONTROL.sub("", part)).strip()
            if not part:
                self._blank = True
                continue
            if self._blank and self.lines:  # any run of blank lines → one blank line
                self.lines.append("")
            self.lines.append(part)
            self._blank = False

    def text(self) -> str:
        return "\n".join(self.lines)


def squash_spaces(text: str) -> str:
    """All whitespace (newlines too) → single spaces: for one-paragraph fields such as MEDLINE's."""
    return _ALL_WS.sub(" ", text).strip()


# --------------------------------------------------------------------------- file access


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


def empty_file_error(path: Path) -> DataError:
    return DataError(f"{path}: empty file (no records)", reason="empty_file", file=str(path))


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line without its line end) for every line of a (gzip) file."""
    with open_binary(path) as f:
        for number, line in enumerate(f, 1):
            yield number, line.rstrip(b"\r\n")


def iter_utf8_lines(path: Path) -> Iterator[tuple[int, "str | Skip"]]:
    """(line number, decoded line), or a Skip in place of a line that is not valid UTF-8."""
    for number, raw in iter_lines(path):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, Skip(number, "invalid_utf8", f"line {number}", f"not valid UTF-8 ({exc.reason})", True)
