"""``biomamba data build``: raw corpora → cleaned, deduplicated, tokenised, mixed token shards.

The stages, each in its own module, all streaming (no corpus is ever held in memory, only
per-document metadata):

1. ``plan``: the files of each source, one work unit per file.
2. ``tokenise``, per file in worker processes (``workers``): read records, normalise
   whitespace, drop too-short ones, tokenise (in bounded pieces), append EOS, and write the
   file's tokens and document metadata (record id, length, text hash) to a work directory
   beside the output (``.OUT.work/``). Finished files are kept there, so an interrupted build
   resumes. Each file's result depends only on the file and the config, never on the worker
   count.
3. ``select``, in the main process, in config order (sources, then files as listed and
   sorted): MEDLINE update semantics (a later version of a PMID replaces the earlier one;
   ``DeleteCitation`` removes it), then exact duplicates dropped (first occurrence wins,
   across all sources).
4. ``pack``: each source's documents shuffled (seed), the held-out validation documents
   carved first (``val_sequences`` rows per source, whole documents only), then rows of
   ``seq_len``: packed back to back (``packing: true``) or one document per row, cut and
   padded (``packing: false``).
5. ``mix``: training rows drawn from each source by ``ratio`` (counted in rows, after each
   source was made into rows on its own), shuffled together (seed).
6. ``write``: shards + ``manifest.json`` into a temporary directory that is renamed into
   place only when complete.

Every record read is accounted for: ``read == kept + sum(skipped.values())`` per source, with
the reasons (``no_abstract``, ``non_english``, ``too_short``, ``duplicate``, ``superseded``,
``deleted``, ``invalid_json``, ...); broken files and records are listed in the manifest.

A build killed at any point (SIGKILL included) leaves no half-written output: the next run
on the same ``--out`` removes the partial results (half-tokenised files, a half-written
output directory), says so, and reuses every file that was tokenised completely. A lock in
the work directory keeps two builds from writing the same output at once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from biomamba.config import save_config, to_dict
from biomamba.data.config import DataConfig
from biomamba.data.mix import mix, require_training_rows, row_table
from biomamba.data.pack import SourceRows, TokenFiles, make_source_rows
from biomamba.data.plan import Unit, expand_paths, file_checksums, plan_units
from biomamba.data.readers import DataError
from biomamba.data.select import select_documents
from biomamba.data.shards import MANIFEST_FORMAT, MANIFEST_VERSION, ShardWriter
from biomamba.data.tokenise import MAX_LISTED_ERRORS, process_unit, run_units
from biomamba.data.tokenizer import Tokenizer, load_tokenizer
from biomamba.data.write import write_split
from biomamba.utils.io import atomic_dir, write_json

# public names of the build before it was split by stage (kept importable from here)
__all__ = ["build", "expand_paths", "file_checksums", "process_unit", "run_units", "ShardWriter", "Unit"]

log = logging.getLogger("biomamba.data")


def _source_report(p: SourceRows, units: list[Unit], metas: list[dict[str, Any]], extra: Counter,
                   deletions: dict[str, int], warn: Callable[[str], None]) -> dict[str, Any]:
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
    report: dict[str, Any] = {
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
    if p.truncation is not None:
        report["truncation"] = p.truncation
    return report


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise DataError(f"--out {out} exists and is not a data directory written by `biomamba data build`; "
                        f"choose a new or empty directory (it would be replaced)", reason="bad_out")


@contextmanager
def _lock(work: Path, out: Path) -> Iterator[None]:
    """Hold ``WORK/lock`` for the build: a second build of the same output stops at once.

    The lock dies with the process (and with its workers, which die with it), so a killed
    build never leaves a stale lock behind.
    """
    work.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(work / "lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise DataError(f"{out}: another `biomamba data build` (pid {holder}) is writing it (lock "
                            f"{work / 'lock'}); wait for it to finish or stop it", reason="busy") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def _clear_interrupted_output(out: Path) -> None:
    """Remove what a build of ``out`` killed while writing left beside it, and say so.

    ``atomic_dir`` writes into ``.OUT.XXXXXXXX.tmp`` and, when replacing an earlier output,
    parks that one at ``.OUT.old`` for a moment; only a killed build leaves either behind.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.tmp")
    for entry in sorted(out.parent.iterdir()):
        if pattern.fullmatch(entry.name) and entry.is_dir():
            log.warning("an earlier build of %s was interrupted while writing it: removing its half-written "
                        "output %s", out, entry.name)
            shutil.rmtree(entry)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir():
        log.warning("an earlier build of %s was interrupted while replacing it: removing the previous output "
                    "parked at %s", out, old.name)
        shutil.rmtree(old)


def _manifest_texts(packing: bool, eos_id: int, pad_id: int) -> dict[str, str]:
    if packing:
        return {"document_boundaries": "every document ends with EOS (id %d); seq_idx = number of EOS tokens before "
                                       "a position within its row, so a new document starts right after each EOS; a "
                                       "document may continue into the next row (seq_idx restarts at 0)" % eos_id,
                "unit": "packed sequences (tokens)",
                "method": "each source is cleaned, deduplicated, shuffled by document (seed) and packed on its "
                          "own; validation documents are carved first; training sequences are then drawn from "
                          "each source in proportion to its ratio and shuffled together (seed)"}
    return {"document_boundaries": f"one document per row: its tokens and EOS (id {eos_id}), cut to seq_len when "
                                   f"longer (then without EOS), then padding (id {pad_id}); {{split}}/lengths.npy "
                                   f"holds each row's real length: padding is seq_idx 1 and never scored",
            "unit": "rows of one document each (padded, not packed)",
            "method": "each source is cleaned, deduplicated and shuffled by document (seed) on its own; "
                      "validation documents are carved first; training rows (documents) are then drawn from "
                      "each source in proportion to its ratio and shuffled together (seed)"}


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
    with _lock(work, out):
        _clear_interrupted_output(out)
        (work / "units").mkdir(exist_ok=True)
        tok_path = tok.save(work)
        units = plan_units(cfg, source_files, work / "units", fingerprint, dtype)
        log.info("data build: %d sources, %d files, tokenizer %s (%s…)", len(cfg.sources), len(units), tok.source,
                 fingerprint[:12])
        t1 = time.perf_counter()
        metas = run_units(units, cfg, tok_path, dtype)
        t2 = time.perf_counter()
        manifest = _assemble(cfg, out, units, metas, tok, fingerprint, dtype, warnings, warn, environment,
                             (t0, t1, t2))
        if not cfg.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _assemble(cfg: DataConfig, out: Path, units: list[Unit], metas: list[dict[str, Any]], tok: Tokenizer,
              fingerprint: str, dtype: str, warnings: list[str], warn: Callable[[str], None],
              environment: Callable[[], dict[str, Any]] | None, times: tuple[float, float, float]) -> dict[str, Any]:
    """Stages 3–6: select, make rows, mix, write (atomically); the manifest."""
    t0, t1, t2 = times
    names = [s.name for s in cfg.sources]
    by_source = [[u for u, unit in enumerate(units) if unit.source == s] for s in range(len(names))]
    unit_docs, keep, extra_skips, deletions = select_documents(units, by_source, cfg.dedup)
    files_cache = TokenFiles(units, np.dtype(dtype))
    file_idx = np.array([unit.file_index for unit in units], dtype=np.int32)
    sources = [make_source_rows(cfg, s, uids, unit_docs, keep, files_cache, file_idx, warn)
               for s, uids in enumerate(by_source)]
    sources_out = {p.name: _source_report(p, [units[u] for u in uids], [metas[u] for u in uids], extra_skips[s],
                                          deletions[s], warn)
                   for s, (p, uids) in enumerate(zip(sources, by_source))}
    avail = {p.name: p.rows["train"] for p in sources}
    val_rows = {p.name: p.rows["val"] for p in sources}
    L = cfg.seq_len

    # ---- mixing (by rows)
    require_training_rows(sources, cfg, {n: sources_out[n]["counts"]["read"] for n in names})
    ratios = cfg.ratios()
    take = mix(names, avail, ratios, cfg.mix, cfg.max_train_sequences)
    n_train = sum(take.values())
    if n_train == 0:
        raise DataError(f"no training rows after mixing: max_train_sequences={cfg.max_train_sequences} leaves none "
                        f"at these ratios (available rows per source: {avail})", reason="empty_build")
    for p in sources:
        name = p.name
        # per-source summary (the same numbers as in splits/mixing, gathered for readers of one source)
        sources_out[name]["train_sequences"] = take[name]
        sources_out[name]["val_sequences"] = val_rows[name]
        sources_out[name]["ratio_target"] = ratios[name] if ratios else None
        sources_out[name]["ratio_achieved"] = take[name] / n_train
        used = np.arange(take[name], dtype=np.int64) % max(avail[name], 1)
        sources_out[name]["tokens"]["train_used"] = p.real_tokens("train", used, L) if take[name] else 0
        if take[name] > avail[name]:
            sources_out[name]["tokens"]["train_repeated_sequences"] = take[name] - avail[name]
            if take[name] > 4 * avail[name]:
                warn(f"source {name}: its {avail[name]} training sequences are repeated "
                     f"{take[name] / avail[name]:.1f} times to reach its ratio (mix=repeat)")
        elif take[name] < avail[name]:
            unused = np.arange(take[name], avail[name], dtype=np.int64)
            sources_out[name]["tokens"]["train_unused"] = p.real_tokens("train", unused, L)
    if ratios and cfg.mix == "downsample":
        limiting = [n for n in names if ratios[n] > 0 and take[n] == avail[n]]
        unused_rows = {n: avail[n] - take[n] for n in names if ratios[n] > 0 and take[n] < avail[n]}
        if unused_rows:
            warn(f"mixing is limited by {', '.join(limiting)}: unused training sequences "
                 + ", ".join(f"{n}: {v}" for n, v in unused_rows.items())
                 + " (mix=repeat repeats the smaller sources instead)")
    rows = row_table(names, take, avail, shuffle_seed=[cfg.seed, len(names), 0x6D6978])
    val = row_table(names, val_rows, val_rows, shuffle_seed=None)

    # ---- write
    texts = _manifest_texts(cfg.packing, tok.eos_id, tok.pad_id)
    with atomic_dir(out) as tmp:
        tok.save(tmp)
        (tmp / "index").mkdir()
        splits: dict[str, Any] = {}
        for split, table in (("train", rows), ("val", val)):
            splits[split] = write_split(tmp, split, table, sources, L, np.dtype(dtype), cfg.shard_sequences,
                                        cfg.packing, tok.pad_id)
            for p in sources:
                np.save(tmp / "index" / f"{split}-{p.name}.docs.npy", p.tables[split])
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "seq_len": L,
            "packing": cfg.packing,
            **({} if cfg.packing else {"pad_id": tok.pad_id}),
            "dtype": dtype,
            "eos_id": tok.eos_id,
            "vocab_size": tok.vocab_size,
            "max_token_id": max(m["max_token_id"] for m in metas),
            "tokenizer": {"source": tok.source, "fingerprint": fingerprint, "file": "tokenizer.json"},
            "seed": cfg.seed,
            "shard_sequences": cfg.shard_sequences,
            "source_order": names,
            "document_boundaries": texts["document_boundaries"],
            "mixing": {
                "unit": texts["unit"],
                "method": texts["method"],
                "mode": cfg.mix,
                "target_ratios": ratios,
                "achieved_ratios": {n: (take[n] / n_train) for n in names},
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
    log.info("wrote %s: %d train + %d val rows of %d tokens (%s)", out, n_train, len(val), L,
             "packed" if cfg.packing else "one document each, padded")
    return manifest
