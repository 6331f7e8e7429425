"""Build stage 1, planning: which files each source reads, and one work unit per file.

A unit's key hashes everything its result depends on (the file's path, size and mtime, the
format and reader options, the cleaning settings, the tokenizer and the token dtype), so a
finished unit in the work directory is reused exactly when it would come out the same.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomamba.data.config import DataConfig, SourceConfig
from biomamba.data.readers import EXTENSIONS, DataError, detect_format

# bump when the per-file work format, the cleaning or the tokenising changes (old units are then redone)
UNIT_VERSION = 2


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_paths(source: SourceConfig) -> list[Path]:
    """Files of a source: each entry is a file, a directory (searched recursively) or a glob.

    Entries keep their config order; matches of one entry are sorted naturally (so
    ``pubmed25n0002`` comes before ``pubmed25n0010``). For MEDLINE this order is the update
    order: a later file's version of a citation wins.
    """
    exts = (EXTENSIONS[source.format] if source.format != "auto"
            else tuple(e for v in EXTENSIONS.values() for e in v))
    files: list[Path] = []
    for entry in source.paths:
        entry = os.path.expanduser(entry)
        if any(ch in entry for ch in "*?["):
            matches = [m for m in globlib.glob(entry, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise DataError(f"sources.{source.name}.paths: {entry!r} matches no file", reason="no_files")
        elif os.path.isdir(entry):
            matches = [str(p) for p in Path(entry).rglob("*") if p.is_file() and not p.name.startswith(".")
                       and str(p).lower().endswith(exts)]
            if not matches:
                raise DataError(f"sources.{source.name}.paths: directory {entry!r} holds no "
                                f"{'/'.join(exts)} file", reason="no_files")
        elif os.path.isfile(entry):
            matches = [entry]
        else:
            raise DataError(f"sources.{source.name}.paths: no such file or directory: {entry!r}", reason="no_files")
        files.extend(Path(m).resolve() for m in sorted(matches, key=_natural_key))
    seen: set[Path] = set()
    return [f for f in files if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]


def file_checksums(path: Path) -> dict[str, Any]:
    """Size, sha256 and md5 of a file, read in 4 MiB blocks."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": sha.hexdigest(), "md5": md5.hexdigest()}


@dataclass
class Unit:
    """One input file of one source, and where its intermediate result lives."""

    source: int
    file_index: int
    path: Path
    fmt: str
    options: dict[str, Any]
    key: str
    dir: Path

    @property
    def tmp(self) -> Path:
        """Where the unit is written before it is renamed to ``dir`` (only whole results get there)."""
        return self.dir.with_name(self.dir.name + ".tmp")

    def task(self, cfg: DataConfig, dtype: str) -> dict[str, Any]:
        return {"path": str(self.path), "fmt": self.fmt, "options": self.options, "dir": str(self.dir),
                "min_chars": cfg.min_chars, "on_error": cfg.on_error, "batch_size": cfg.batch_size,
                "dtype": dtype}


def unit_key(path: Path, fmt: str, options: dict, cfg: DataConfig, fingerprint: str, dtype: str) -> str:
    st = path.stat()
    ident = {"v": UNIT_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fmt": fmt,
             "options": options, "min_chars": cfg.min_chars, "on_error": cfg.on_error, "tok": fingerprint,
             "dtype": dtype}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def reader_options(src: SourceConfig, fmt: str) -> dict[str, Any]:
    """The reader keyword arguments of a source's format (what ``read_records`` takes)."""
    if fmt == "medline":
        return {"languages": list(src.languages), "require_abstract": src.require_abstract,
                "exclude_publication_types": list(src.exclude_publication_types)}
    if fmt in ("jsonl", "parquet"):
        return {"text_field": src.text_field}
    if fmt == "text":
        return {"text_unit": src.text_unit}
    return {}


def plan_units(cfg: DataConfig, source_files: list[list[Path]], units_dir: Path, fingerprint: str,
               dtype: str) -> list[Unit]:
    """One unit per (source, file), in config order: sources as listed, files as expanded."""
    units: list[Unit] = []
    for s, (src, files) in enumerate(zip(cfg.sources, source_files)):
        for f_idx, path in enumerate(files):
            fmt = detect_format(path) if src.format == "auto" else src.format
            opts = reader_options(src, fmt)
            key = unit_key(path, fmt, opts, cfg, fingerprint, dtype)
            units.append(Unit(s, f_idx, path, fmt, opts, key, units_dir / key))
    return units
