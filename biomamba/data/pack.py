"""Build stage 4, rows: a source's surviving documents, shuffled, split, made into rows.

Each source on its own: its documents are shuffled (seed, source index) and the held-out
validation documents are taken first, whole. Then, with ``packing: true``, each split's
documents are concatenated (each ends with EOS) and cut into ``seq_len`` rows, the last
partial row dropped. With ``packing: false``, each document is one row: its tokens and EOS,
cut to ``seq_len`` (counted: documents and tokens cut) and padded; the row's real length
is written beside the shards so that padding is never scored.

Rows are addressed by number within a source's split; the tokens are read from the per-file
token arrays on demand (memory maps), never gathered in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from biomamba.data.config import DataConfig
from biomamba.data.plan import Unit
from biomamba.data.shards import DOC_DTYPE


class TokenFiles:
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


class Stream:
    """Chosen documents in order (each ends with EOS), read by token offset or by document."""

    def __init__(self, files: TokenFiles, unit: np.ndarray, offset: np.ndarray, length: np.ndarray):
        self.files, self.unit, self.offset, self.length = files, unit, offset, length
        self.ends = np.cumsum(length, dtype=np.int64)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, n: int, out: np.ndarray) -> None:
        """Tokens ``start .. start + n`` of the concatenation into ``out`` (packed rows)."""
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

    def read_doc(self, i: int, n: int, out: np.ndarray) -> int:
        """The first ``n`` tokens of document ``i`` (fewer if it is shorter) into ``out``; how many."""
        take = min(int(self.length[i]), n)
        base = int(self.offset[i])
        out[:take] = self.files(int(self.unit[i]))[base:base + take]
        return take


@dataclass
class SourceRows:
    """One source after the document shuffle and the validation split, as rows of ``seq_len``."""

    name: str
    packing: bool
    n_docs: int
    val_docs: int
    rows: dict[str, int]  # split → rows available
    tokens: dict[str, int]
    streams: dict[str, Stream]
    tables: dict[str, np.ndarray]  # split → documents index (DOC_DTYPE), in stream order
    # packing false: real (non-padding) tokens of each row, and per split the documents cut to seq_len
    row_len: dict[str, np.ndarray] | None = None
    truncation: dict[str, dict[str, int]] | None = None

    def real_tokens(self, split: str, rows: np.ndarray, seq_len: int) -> int:
        """Non-padding tokens in the given rows of ``split``."""
        if self.row_len is None:
            return int(len(rows)) * seq_len
        return int(self.row_len[split][rows].sum(dtype=np.int64))


def make_source_rows(cfg: DataConfig, s: int, uids: list[int], unit_docs: dict[int, np.ndarray],
                     keep: dict[int, np.ndarray], files: TokenFiles, file_idx: np.ndarray,
                     warn: Callable[[str], None]) -> SourceRows:
    """Shuffle a source's surviving documents (seed), carve whole validation documents, index the rows."""
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
    empty = [np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64),
             np.zeros(0, np.int16)]
    unit_a, offset_a, length_a, record_a, year_a = (np.concatenate(x) if x else e
                                                    for x, e in zip((unit, offset, length, record, year), empty))
    n_docs = len(length_a)
    perm = np.random.default_rng([cfg.seed, s]).permutation(n_docs)
    total = int(length_a.sum(dtype=np.int64))
    if cfg.packing:
        cum = np.cumsum(length_a[perm], dtype=np.int64)
        total_rows = total // L
        v = min(cfg.val_sequences, int(cfg.max_val_fraction * total_rows))
        if v < cfg.val_sequences:
            warn(f"source {name}: only {total_rows} sequences of {L} tokens in all; holding out {v} "
                 f"for validation instead of {cfg.val_sequences} (max_val_fraction={cfg.max_val_fraction})")
        k = 0 if v == 0 else int(np.searchsorted(cum, v * L, side="left")) + 1  # whole documents cover v rows
    else:
        v = k = min(cfg.val_sequences, int(cfg.max_val_fraction * n_docs))
        if v < cfg.val_sequences:
            warn(f"source {name}: only {n_docs} documents in all; holding out {v} for validation instead of "
                 f"{cfg.val_sequences} (max_val_fraction={cfg.max_val_fraction})")
    streams, tables = {}, {}
    for split, sel in (("val", perm[:k]), ("train", perm[k:])):
        stream = Stream(files, unit_a[sel], offset_a[sel], length_a[sel])
        table = np.zeros(len(sel), dtype=DOC_DTYPE)
        table["file"] = file_idx[unit_a[sel]]
        table["record"] = record_a[sel]
        table["length"] = length_a[sel]
        table["start"] = stream.ends - length_a[sel]
        table["year"] = year_a[sel]
        streams[split], tables[split] = stream, table
    if cfg.packing:
        val_tokens = int(streams["val"].total)
        train_tokens = total - val_tokens
        tokens = {"total": total, "val": v * L, "val_overflow_dropped": val_tokens - v * L,
                  "train_available": (train_tokens // L) * L, "train_tail_dropped": train_tokens % L}
        return SourceRows(name, True, n_docs, k, {"val": v, "train": train_tokens // L}, tokens, streams, tables)
    row_len, truncation = {}, {}
    for split in ("val", "train"):
        full = streams[split].length
        row_len[split] = np.minimum(full, L).astype(np.int32)
        cut = full - row_len[split]
        truncation[split] = {"documents": int((cut > 0).sum()), "tokens_cut": int(cut.sum(dtype=np.int64))}
    tokens = {"total": total, "val": int(row_len["val"].sum(dtype=np.int64)),
              "train_available": int(row_len["train"].sum(dtype=np.int64))}
    return SourceRows(name, False, n_docs, k, {"val": k, "train": n_docs - k}, tokens, streams, tables,
                      row_len, truncation)
