"""``biomamba data build``: raw corpora → cleaned, deduplicated, tokenised, packed, mixed token shards.

Two phases, both streaming (no corpus is ever held in memory, only per-document metadata):

1. **Per file, in worker processes** (``workers``): read records, normalise whitespace, drop
   too-short ones, tokenise in batches, append EOS, and write the file's tokens and document
   metadata (record id, length, text hash) to a work directory beside the output
   (``.OUT.work/``). Finished files are kept there, so an interrupted build resumes.
   Each file's result depends only on the file and the config, never on the worker count.
2. **In the main process, in config order** (sources, then files as listed and sorted):
   apply MEDLINE update semantics (a later version of a PMID replaces the earlier one;
   ``DeleteCitation`` removes it), drop exact duplicates (first occurrence wins, across all
   sources), shuffle each source's documents (seed), carve the held-out validation documents
   first (``val_sequences`` packed rows per source, whole documents only), pack the rest into
   ``seq_len`` rows, draw training rows from each source by ``ratio`` (counted in packed
   sequences, i.e. tokens, after packing each source separately), shuffle them together
   (seed) and write shards + ``manifest.json`` into a temporary directory that is renamed
   into place only when complete.

Every record read is accounted for: ``read == kept + sum(skipped.values())`` per source, with
the reasons (``no_abstract``, ``non_english``, ``too_short``, ``duplicate``, ``superseded``,
``deleted``, ``invalid_json``, ...); broken files and records are listed in the manifest.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter, OrderedDict
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from biomamba.config import save_config, to_dict
from biomamba.data.config import DataConfig, SourceConfig
from biomamba.data.readers import DataError, Delete, Doc, Skip, detect_format, read_records
from biomamba.data.shards import DOC_DTYPE, MANIFEST_FORMAT, MANIFEST_VERSION, ROW_DTYPE, ShardWriter
from biomamba.data.tokenizer import Tokenizer, load_tokenizer
from biomamba.utils.io import atomic_dir, write_json

log = logging.getLogger("biomamba.data")

UNIT_VERSION = 1  # bump when the per-file work format or cleaning changes
MAX_LISTED_ERRORS = 1000
UNIT_DOC_DTYPE = np.dtype([("record", "<i8"), ("pos", "<i4"), ("year", "<i2"), ("ntok", "<i4"),
                           ("h0", "<u8"), ("h1", "<u8")])
_EXTENSIONS = {
    "medline": (".xml", ".xml.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
    "parquet": (".parquet",),
    "wikitext": (".raw", ".tokens", ".raw.gz"),
    "text": (".txt", ".txt.gz", ".text"),
}


# =========================================================================== input files


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_paths(source: SourceConfig) -> list[Path]:
    """Files of a source: each entry is a file, a directory (searched recursively) or a glob.

    Entries keep their config order; matches of one entry are sorted naturally (so
    ``pubmed25n0002`` comes before ``pubmed25n0010``). For MEDLINE this order is the update
    order: a later file's version of a citation wins.
    """
    exts = _EXTENSIONS.get(source.format) if source.format != "auto" else tuple(e for v in _EXTENSIONS.values() for e in v)
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
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": sha.hexdigest(), "md5": md5.hexdigest()}


# =========================================================================== phase 1: per file


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

    def task(self, cfg: DataConfig, dtype: str) -> dict[str, Any]:
        return {"path": str(self.path), "fmt": self.fmt, "options": self.options, "dir": str(self.dir),
                "min_chars": cfg.min_chars, "on_error": cfg.on_error, "batch_size": cfg.batch_size,
                "dtype": dtype}


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str) -> None:
    """Load the tokenizer once per process; one core per worker (tokenizers' own threads off).

    Special tokens are *not* matched inside document text (``encode_special_tokens``): a
    literal ``<|endoftext|>`` in a web page must not become EOS, and added tokens such as
    ``assistant`` in some GPT-NeoX tokenizer files must not replace the ordinary BPE pieces.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = load_tokenizer(tokenizer_path)
    tok.backend.encode_special_tokens = True
    _WORKER["tok"] = tok


def _fail(task: dict[str, Any], skip: Skip) -> DataError:
    return DataError(f"{task['path']}: {skip.where}: {skip.detail}", reason=skip.reason, file=task["path"],
                     where=skip.where)


def process_unit(task: dict[str, Any]) -> dict[str, Any]:
    """Read, clean, tokenise one file; write ``tokens.bin``, ``docs.npy`` (+ MEDLINE ``seen``/``deleted``)."""
    tok: Tokenizer = _WORKER["tok"]
    eos = tok.eos_id
    path, fmt = task["path"], task["fmt"]
    medline = fmt == "medline"
    final = Path(task["dir"])
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.dtype(task["dtype"])
    skipped: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    n_errors = 0
    read = 0
    max_id = -1
    docs: list[tuple] = []
    seen: list[int] = []
    deleted: list[int] = []
    pending: list[tuple[Doc, int, str]] = []
    n_tokens = 0
    file_error: dict[str, str] | None = None

    def note_error(reason: str, where: str, message: str) -> None:
        nonlocal n_errors
        n_errors += 1
        if len(errors) < MAX_LISTED_ERRORS:
            errors.append({"file": path, "where": where, "reason": reason, "message": message})

    with open(tmp / "tokens.bin", "wb") as tokfile:

        def flush() -> None:
            nonlocal n_tokens, max_id
            if not pending:
                return
            encoded = tok.encode_batch([text for _, _, text in pending])
            chunks = []
            for (doc, pos, text), ids in zip(pending, encoded):
                ids.append(eos)
                arr = np.asarray(ids, dtype=np.int64)
                max_id = max(max_id, int(arr.max()))
                chunks.append(arr.astype(dtype))
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                h0, h1 = np.frombuffer(digest, dtype="<u8")
                docs.append((doc.record, pos, doc.year, len(ids), h0, h1))
                n_tokens += len(ids)
            np.concatenate(chunks).tofile(tokfile)
            pending.clear()

        try:
            for event in read_records(path, fmt, **task["options"]):
                if isinstance(event, Delete):
                    deleted.append(event.record)
                    continue
                read += 1
                pos = -1
                if medline and event.record >= 0:
                    pos = len(seen)
                    seen.append(event.record)
                if isinstance(event, Skip):
                    if event.error:
                        if task["on_error"] == "raise":
                            raise _fail(task, event)
                        note_error(event.reason, event.where, event.detail)
                    skipped[event.reason] += 1
                    continue
                text = event.text
                if not text:
                    skipped["empty"] += 1
                    continue
                if len(text) < task["min_chars"]:
                    skipped["too_short"] += 1
                    continue
                pending.append((event, pos, text))
                if len(pending) >= task["batch_size"]:
                    flush()
        except DataError as exc:
            if task["on_error"] == "raise":
                raise
            file_error = {"file": path, "where": exc.where, "reason": exc.reason, "message": str(exc)}
            note_error(exc.reason, exc.where, str(exc))
        flush()

    np.save(tmp / "docs.npy", np.array(docs, dtype=UNIT_DOC_DTYPE))
    if medline:
        np.save(tmp / "seen.npy", np.asarray(seen, dtype=np.int64))
        np.save(tmp / "deleted.npy", np.asarray(deleted, dtype=np.int64))
    kept = len(docs)
    meta = {
        "unit_version": UNIT_VERSION,
        "path": path,
        **file_checksums(Path(path)),
        "read": read,
        "kept": kept,
        "skipped": dict(sorted(skipped.items())),
        "deletions": len(deleted),
        "max_token_id": max_id,
        "tokens": n_tokens,
        "errors": errors,
        "n_errors": n_errors,
        "file_error": file_error,
    }
    assert read == kept + sum(skipped.values()), "record accounting is off"
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return meta


def _unit_key(path: Path, fmt: str, options: dict, cfg: DataConfig, fingerprint: str, dtype: str) -> str:
    st = path.stat()
    ident = {"v": UNIT_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fmt": fmt,
             "options": options, "min_chars": cfg.min_chars, "on_error": cfg.on_error, "tok": fingerprint,
             "dtype": dtype}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _reader_options(src: SourceConfig, fmt: str) -> dict[str, Any]:
    if fmt == "medline":
        return {"languages": list(src.languages), "require_abstract": src.require_abstract,
                "exclude_publication_types": list(src.exclude_publication_types)}
    if fmt in ("jsonl", "parquet"):
        return {"text_field": src.text_field}
    if fmt == "text":
        return {"text_unit": src.text_unit}
    return {}


def _mp_context():
    """fork where the platform has it (fast start, works from any script); spawn elsewhere.

    Forking is safe here: the parent has not used the tokenizer's thread pool (it only loads
    and saves the tokenizer), and each worker turns that pool off before encoding.
    """
    import multiprocessing

    return get_context("fork" if "fork" in multiprocessing.get_all_start_methods() and os.name == "posix"
                       and sys.platform != "darwin" else "spawn")


def run_units(units: list[Unit], cfg: DataConfig, tokenizer_path: Path, dtype: str) -> list[dict[str, Any]]:
    """Phase 1 over all files: cached results are reused; the rest run on ``workers`` processes."""
    metas: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, unit in enumerate(units):
        meta_path = unit.dir / "meta.json"
        if meta_path.is_file():
            metas[i] = json.loads(meta_path.read_text())
        else:
            todo.append(i)
    if metas:
        log.info("resuming: %d of %d files already processed", len(metas), len(units))
    todo.sort(key=lambda i: -units[i].path.stat().st_size)  # largest first: better load balance
    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))
    done = 0

    def report(i: int, meta: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        metas[i] = meta
        log.info("[%d/%d] %s: %d read, %d kept, %d tokens%s", done, len(todo), units[i].path.name, meta["read"],
                 meta["kept"], meta["tokens"], f" ({meta['n_errors']} errors skipped)" if meta["n_errors"] else "")

    if todo and workers == 1:
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        try:
            _init_worker(str(tokenizer_path))
            for i in todo:
                report(i, process_unit(units[i].task(cfg, dtype)))
        finally:
            _WORKER.clear()
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker,
                                 initargs=(str(tokenizer_path),)) as pool:
            futures = {pool.submit(process_unit, units[i].task(cfg, dtype)): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    exc = fut.exception()
                    if exc is not None:
                        for other in pending:
                            other.cancel()
                        raise exc
                    report(futures[fut], fut.result())
    return [metas[i] for i in range(len(units))]


# =========================================================================== phase 2: select


class _TokenFiles:
    """Memory maps of the per-file token arrays, at most ``limit`` open at once."""

    def __init__(self, units: list[Unit], dtype: np.dtype, limit: int = 128):
        self.units, self.dtype, self.limit = units, dtype, limit
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __call__(self, u: int) -> np.ndarray:
        m = self._open.get(u)
        if m is None:
            path = self.units[u].dir / "tokens.bin"
            m = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.empty(0, self.dtype)
            self._open[u] = m
            if len(self._open) > self.limit:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(u)
        return m


class _Stream:
    """The concatenation of chosen documents' tokens (each ends with EOS), read by token offset."""

    def __init__(self, files: _TokenFiles, unit: np.ndarray, offset: np.ndarray, length: np.ndarray):
        self.files, self.unit, self.offset, self.length = files, unit, offset, length
        self.ends = np.cumsum(length, dtype=np.int64)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, n: int, out: np.ndarray) -> None:
        i = int(np.searchsorted(self.ends, start, side="right"))
        filled = 0
        while filled < n:
            doc_start = int(self.ends[i] - self.length[i])
            skip = start + filled - doc_start
            take = min(int(self.length[i]) - skip, n - filled)
            base = int(self.offset[i]) + skip
            out[filled:filled + take] = self.files(int(self.unit[i]))[base:base + take]
            filled += take
            i += 1


def _resolve_medline(unit_ids: list[int], units: list[Unit], docs: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], Counter, dict[str, int]]:
    """Update semantics: per PMID the last event (citation or deletion, in file order) wins."""
    ps, ks, del_all, seen_all = [], [], [], []
    for u in unit_ids:
        seen = np.load(units[u].dir / "seen.npy")
        deleted = np.load(units[u].dir / "deleted.npy")
        ps += [seen, deleted]
        ks += [(np.int64(u) << 32) + np.arange(len(seen), dtype=np.int64),
               (np.int64(u) << 32) + (1 << 31) + np.arange(len(deleted), dtype=np.int64)]
        del_all.append(deleted)
        seen_all.append(seen)
    keep: dict[int, np.ndarray] = {}
    counts: Counter[str] = Counter()
    if not ps:
        return keep, counts, {}
    p, k = np.concatenate(ps), np.concatenate(ks)
    order = np.lexsort((k, p))
    p, k = p[order], k[order]
    last = np.ones(len(p), dtype=bool)
    last[:-1] = p[1:] != p[:-1]
    win_p, win_k = p[last], k[last]
    for u in unit_ids:
        d = docs[u]
        if not len(d):
            keep[u] = np.zeros(0, dtype=bool)
            continue
        key = (np.int64(u) << 32) + d["pos"].astype(np.int64)
        wk = win_k[np.searchsorted(win_p, d["record"])]
        mine = wk == key
        by_delete = ~mine & ((wk & (1 << 31)) != 0)
        counts["deleted"] += int(by_delete.sum())
        counts["superseded"] += int((~mine & ~by_delete).sum())
        keep[u] = mine
    deletions = np.concatenate(del_all)
    unmatched = np.setdiff1d(deletions, np.concatenate(seen_all)).size
    return keep, counts, {"read": int(deletions.size), "pmids_without_citation": int(unmatched)}


def _dedup(cands: list[tuple[int, int, np.ndarray, np.ndarray]]) -> dict[tuple[int, int], np.ndarray]:
    """Exact duplicates by 128-bit text hash; the first in (source, file, record) order wins."""
    if not cands:
        return {}
    h0 = np.concatenate([c[2] for c in cands])
    h1 = np.concatenate([c[3] for c in cands])
    ordinal = np.arange(len(h0), dtype=np.int64)
    order = np.lexsort((ordinal, h1, h0))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (h0[order][1:] != h0[order][:-1]) | (h1[order][1:] != h1[order][:-1])
    keep = np.zeros(len(h0), dtype=bool)
    keep[order[first]] = True
    out, at = {}, 0
    for s, u, a, _ in cands:
        out[(s, u)] = keep[at:at + len(a)]
        at += len(a)
    return out


def _mix(names: list[str], avail: dict[str, int], ratios: dict[str, float] | None, mode: str,
         cap: int | None) -> dict[str, int]:
    """Training rows to take from each source so that the shares match ``ratios`` (in rows = tokens)."""
    if ratios is None:
        take = dict(avail)
    else:
        active = [n for n in names if ratios[n] > 0]
        empty = [n for n in active if avail[n] == 0]
        if empty:
            raise DataError(f"source(s) {', '.join(empty)} have no training sequences left but a ratio > 0: "
                            f"add data, lower val_sequences/seq_len, or set their ratio to 0", reason="empty_source")
        scale = [avail[n] / ratios[n] for n in active]
        total = min(scale) if mode == "downsample" else max(scale)
        take = {n: (int(np.floor(ratios[n] * total + 1e-6)) if n in active else 0) for n in names}
        if mode == "downsample":
            take = {n: min(take[n], avail[n]) for n in names}
    if cap is not None and sum(take.values()) > cap:
        factor = cap / sum(take.values())
        take = {n: int(np.floor(v * factor)) for n, v in take.items()}
    return take


def _select(units: list[Unit], by_source: list[list[int]], dedup: bool):
    """Which documents survive: MEDLINE update semantics per source, then exact dedup across sources."""
    unit_docs = {u: np.load(unit.dir / "docs.npy") for u, unit in enumerate(units)}
    keep = {u: np.ones(len(d), dtype=bool) for u, d in unit_docs.items()}
    extra_skips: list[Counter] = [Counter() for _ in by_source]
    deletions: list[dict[str, int]] = [{} for _ in by_source]
    for s, uids in enumerate(by_source):
        med = [u for u in uids if units[u].fmt == "medline"]
        if med:
            kept, counts, dels = _resolve_medline(med, units, unit_docs)
            keep.update(kept)
            extra_skips[s].update(counts)
            deletions[s] = dels
    if dedup:
        cands = [(s, u, unit_docs[u]["h0"][keep[u]], unit_docs[u]["h1"][keep[u]])
                 for s, uids in enumerate(by_source) for u in uids]
        first = _dedup(cands)
        for s, uids in enumerate(by_source):
            for u in uids:
                dup = np.flatnonzero(keep[u])[~first[(s, u)]]
                extra_skips[s]["duplicate"] += len(dup)
                keep[u][dup] = False
    return unit_docs, keep, extra_skips, deletions


@dataclass
class _Packed:
    """One source after the document shuffle: validation documents first, then training ones."""

    name: str
    n_docs: int
    val_docs: int
    val_rows: int
    train_rows: int
    tokens: dict[str, int]
    streams: dict[str, _Stream]
    tables: dict[str, np.ndarray]


def _pack_source(cfg: DataConfig, s: int, uids: list[int], unit_docs: dict[int, np.ndarray],
                 keep: dict[int, np.ndarray], files: _TokenFiles, file_idx: np.ndarray, warn) -> _Packed:
    """Shuffle a source's surviving documents (seed), carve whole validation documents, index both streams."""
    name, L = cfg.sources[s].name, cfg.seq_len
    unit, offset, length, record, year = [], [], [], [], []
    for u in uids:
        d, m = unit_docs[u], keep[u]
        starts = np.cumsum(d["ntok"], dtype=np.int64) - d["ntok"]
        unit.append(np.full(int(m.sum()), u, dtype=np.int32))
        offset.append(starts[m])
        length.append(d["ntok"][m])
        record.append(d["record"][m])
        year.append(d["year"][m])
    unit_a, offset_a, length_a, record_a, year_a = (np.concatenate(x) for x in (unit, offset, length, record, year))
    n_docs = len(length_a)
    perm = np.random.default_rng([cfg.seed, s]).permutation(n_docs)
    cum = np.cumsum(length_a[perm], dtype=np.int64)
    total = int(cum[-1]) if n_docs else 0
    total_rows = total // L
    v = min(cfg.val_sequences, int(cfg.max_val_fraction * total_rows))
    if v < cfg.val_sequences:
        warn(f"source {name}: only {total_rows} sequences of {L} tokens in all; holding out {v} "
             f"for validation instead of {cfg.val_sequences} (max_val_fraction={cfg.max_val_fraction})")
    k = 0 if v == 0 else int(np.searchsorted(cum, v * L, side="left")) + 1  # whole documents cover v rows
    val_tokens = int(cum[k - 1]) if k else 0
    train_tokens = total - val_tokens
    streams, tables = {}, {}
    for split, sel in (("val", perm[:k]), ("train", perm[k:])):
        stream = _Stream(files, unit_a[sel], offset_a[sel], length_a[sel])
        table = np.zeros(len(sel), dtype=DOC_DTYPE)
        table["file"] = file_idx[unit_a[sel]]
        table["record"] = record_a[sel]
        table["length"] = length_a[sel]
        table["start"] = stream.ends - length_a[sel]
        table["year"] = year_a[sel]
        streams[split], tables[split] = stream, table
    tokens = {"total": total, "val": v * L, "val_overflow_dropped": val_tokens - v * L,
              "train_available": (train_tokens // L) * L, "train_tail_dropped": train_tokens % L}
    return _Packed(name, n_docs, k, v, train_tokens // L, tokens, streams, tables)


def _row_table(names: list[str], take: dict[str, int], avail: dict[str, int], shuffle_seed: list[int] | None) -> np.ndarray:
    """Rows of a split: (source id, row in that source's stream), sources in order, then shuffled if seeded.

    A source asked for more rows than it has (``mix: repeat``) cycles through its rows.
    """
    rows = np.zeros(sum(take.values()), dtype=ROW_DTYPE)
    at = 0
    for s, name in enumerate(names):
        n = take[name]
        rows["source"][at:at + n] = s
        rows["row"][at:at + n] = np.arange(n, dtype=np.int64) % max(avail[name], 1)
        at += n
    return rows if shuffle_seed is None else rows[np.random.default_rng(shuffle_seed).permutation(len(rows))]


def _source_report(p: _Packed, units: list[Unit], metas: list[dict[str, Any]], extra: Counter,
                   deletions: dict[str, int], warn) -> dict[str, Any]:
    """The manifest entry of one source: files with checksums, every record accounted for, errors."""
    skipped: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    for meta in metas:
        skipped.update(meta["skipped"])
        errors += meta["errors"][: max(0, MAX_LISTED_ERRORS - len(errors))]
    skipped.update(extra)
    skipped = Counter({r: n for r, n in skipped.items() if n})
    read = sum(m["read"] for m in metas)
    assert read == p.n_docs + sum(skipped.values()), f"record accounting is off for source {p.name}"
    if p.n_docs == 0:
        warn(f"source {p.name}: no document survived cleaning (read {read}; skipped {dict(skipped)})")
    return {
        "format": sorted({u.fmt for u in units}),
        "files": [{"path": str(u.path), "bytes": m["bytes"], "sha256": m["sha256"], "md5": m["md5"],
                   "read": m["read"], "kept_after_cleaning": m["kept"],
                   **({"error": m["file_error"]["message"]} if m["file_error"] else {})}
                  for u, m in zip(units, metas)],
        "counts": {"read": read, "kept": p.n_docs, "skipped": dict(sorted(skipped.items())),
                   **({"deletions": deletions} if deletions else {})},
        "documents": {"val": p.val_docs, "train": p.n_docs - p.val_docs},
        "tokens": dict(p.tokens),
        "errors": errors,
        "n_errors": sum(m["n_errors"] for m in metas),
    }


# =========================================================================== the build


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise DataError(f"--out {out} exists and is not a data directory written by `biomamba data build`; "
                        f"choose a new or empty directory (it would be replaced)", reason="bad_out")


def build(cfg: DataConfig, out: str | Path, *,
          environment: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build the token shards of ``cfg`` into ``out`` (atomically); return the manifest.

    ``environment``, when given, is called at the end and its result saved as ``environment.json``.
    """
    t0 = time.perf_counter()
    out = Path(out).resolve()
    if not cfg.sources:
        raise DataError("the data config has no sources", reason="no_sources")
    _check_out(out)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning(message)

    # ---- inputs: local paths first (fail fast), then the tokenizer, then downloads (slow)
    local = {s: expand_paths(src) for s, src in enumerate(cfg.sources) if src.paths}
    tok = load_tokenizer(cfg.tokenizer)
    fingerprint = tok.fingerprint()
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    source_files: list[list[Path]] = []
    for s, src in enumerate(cfg.sources):
        if s in local:
            source_files.append(local[s])
        else:
            from biomamba.data.download import download_source

            source_files.append(download_source(src, Path(os.path.expanduser(cfg.download_dir))))

    work = out.parent / f".{out.name}.work"
    (work / "units").mkdir(parents=True, exist_ok=True)
    tok_path = tok.save(work)
    units: list[Unit] = []
    for s, (src, files) in enumerate(zip(cfg.sources, source_files)):
        for f_idx, path in enumerate(files):
            fmt = detect_format(path) if src.format == "auto" else src.format
            opts = _reader_options(src, fmt)
            key = _unit_key(path, fmt, opts, cfg, fingerprint, dtype)
            units.append(Unit(s, f_idx, path, fmt, opts, key, work / "units" / key))
    log.info("data build: %d sources, %d files, tokenizer %s (%s…)", len(cfg.sources), len(units), tok.source,
             fingerprint[:12])
    t1 = time.perf_counter()
    metas = run_units(units, cfg, tok_path, dtype)
    t2 = time.perf_counter()

    names = [s.name for s in cfg.sources]
    by_source = [[u for u, unit in enumerate(units) if unit.source == s] for s in range(len(names))]
    unit_docs, keep, extra_skips, deletions = _select(units, by_source, cfg.dedup)
    files_cache = _TokenFiles(units, np.dtype(dtype))
    file_idx = np.array([unit.file_index for unit in units], dtype=np.int32)
    packed = [_pack_source(cfg, s, uids, unit_docs, keep, files_cache, file_idx, warn)
              for s, uids in enumerate(by_source)]
    sources_out = {p.name: _source_report(p, [units[u] for u in uids], [metas[u] for u in uids], extra_skips[s],
                                          deletions[s], warn)
                   for s, (p, uids) in enumerate(zip(packed, by_source))}
    streams = {(split, p.name): p.streams[split] for p in packed for split in ("val", "train")}
    doc_tables = {(split, p.name): p.tables[split] for p in packed for split in ("val", "train")}
    avail = {p.name: p.train_rows for p in packed}
    val_rows = {p.name: p.val_rows for p in packed}
    L = cfg.seq_len

    # ---- mixing
    ratios = cfg.ratios()
    take = _mix(names, avail, ratios, cfg.mix, cfg.max_train_sequences)
    n_train = sum(take.values())
    if n_train == 0:
        raise DataError("no training sequences: the sources hold fewer tokens than seq_len after the validation "
                        f"split (available per source: {avail})", reason="empty_build")
    n_all = max(sum(take.values()), 1)
    for name in names:
        # per-source summary (the same numbers as in splits/mixing, gathered for readers of one source)
        sources_out[name]["train_sequences"] = take[name]
        sources_out[name]["val_sequences"] = val_rows[name]
        sources_out[name]["ratio_target"] = ratios[name] if ratios else None
        sources_out[name]["ratio_achieved"] = take[name] / n_all
        sources_out[name]["tokens"]["train_used"] = take[name] * L
        if take[name] > avail[name]:
            sources_out[name]["tokens"]["train_repeated_sequences"] = take[name] - avail[name]
            if take[name] > 4 * avail[name]:
                warn(f"source {name}: its {avail[name]} training sequences are repeated "
                     f"{take[name] / avail[name]:.1f} times to reach its ratio (mix=repeat)")
        elif take[name] < avail[name]:
            sources_out[name]["tokens"]["train_unused"] = (avail[name] - take[name]) * L
    if ratios and cfg.mix == "downsample":
        limiting = [n for n in names if ratios[n] > 0 and take[n] == avail[n]]
        unused = {n: avail[n] - take[n] for n in names if ratios[n] > 0 and take[n] < avail[n]}
        if unused:
            warn(f"mixing is limited by {', '.join(limiting)}: unused training sequences "
                 + ", ".join(f"{n}: {v}" for n, v in unused.items())
                 + " (mix=repeat repeats the smaller sources instead)")
    rows = _row_table(names, take, avail, shuffle_seed=[cfg.seed, len(names), 0x6D6978])
    val = _row_table(names, val_rows, val_rows, shuffle_seed=None)

    # ---- write
    manifest: dict[str, Any] = {}
    with atomic_dir(out) as tmp:
        tok.save(tmp)
        (tmp / "index").mkdir()
        splits: dict[str, Any] = {}
        for split, table in (("train", rows), ("val", val)):
            writer = ShardWriter(tmp, split, L, np.dtype(dtype), cfg.shard_sequences)
            buf = np.empty(L, dtype=dtype)
            for sid, row in zip(table["source"].tolist(), table["row"].tolist()):
                streams[(split, names[sid])].read(row * L, L, buf)
                writer.add(buf)
            np.save(tmp / split / "rows.npy", table)
            per_source = {n: int((table["source"] == s).sum()) for s, n in enumerate(names)}
            splits[split] = {
                "sequences": int(len(table)), "tokens": int(len(table)) * L,
                "sources": {n: {"sequences": c, "tokens": c * L} for n, c in per_source.items()},
                "shards": writer.close(),
            }
            for name in names:
                np.save(tmp / "index" / f"{split}-{name}.docs.npy", doc_tables[(split, name)])
        achieved = {n: (take[n] / n_train) for n in names}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "seq_len": L,
            "dtype": dtype,
            "eos_id": tok.eos_id,
            "vocab_size": tok.vocab_size,
            "max_token_id": max(m["max_token_id"] for m in metas),
            "tokenizer": {"source": tok.source, "fingerprint": fingerprint, "file": "tokenizer.json"},
            "seed": cfg.seed,
            "shard_sequences": cfg.shard_sequences,
            "source_order": names,
            "document_boundaries": "every document ends with EOS (id %d); seq_idx = number of EOS tokens before a "
                                   "position within its row, so a new document starts right after each EOS; a "
                                   "document may continue into the next row (seq_idx restarts at 0)" % tok.eos_id,
            "mixing": {
                "unit": "packed sequences (tokens)",
                "method": "each source is cleaned, deduplicated, shuffled by document (seed) and packed on its "
                          "own; validation documents are carved first; training sequences are then drawn from "
                          "each source in proportion to its ratio and shuffled together (seed)",
                "mode": cfg.mix,
                "target_ratios": ratios,
                "achieved_ratios": achieved,
                "dedup": "exact, by hash of the normalised text, across all sources (first occurrence wins)"
                         if cfg.dedup else "off",
            },
            "splits": splits,
            "sources": sources_out,
            "warnings": warnings,
            "config": to_dict(cfg),
        }
        write_json(tmp / "manifest.json", manifest)
        save_config(cfg, tmp / "config.yaml")
        t3 = time.perf_counter()
        total_tokens = sum(m["tokens"] for m in metas)
        stats = {"seconds": {"setup": t1 - t0, "read_tokenize": t2 - t1, "select_pack_write": t3 - t2,
                             "total": t3 - t0},
                 "workers": cfg.workers or os.cpu_count(), "files": len(units),
                 "tokens_tokenized": total_tokens,
                 "tokens_per_s_read_tokenize": total_tokens / max(t2 - t1, 1e-9)}
        write_json(tmp / "build_stats.json", stats)
        if environment is not None:
            write_json(tmp / "environment.json", environment())
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s: %d train + %d val sequences of %d tokens", out, n_train, len(val), L)
    return manifest
