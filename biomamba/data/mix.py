"""Build stage 5, mixing: how many training rows each source gives, and their order.

Mixing is by rows, after each source was made into rows on its own: with packing a row is
``seq_len`` tokens, without it one document. ``mix: downsample`` uses all of the limiting
source and part of the others; ``mix: repeat`` cycles through the small sources instead.
"""

from __future__ import annotations

import numpy as np

from biomamba.data.config import DataConfig
from biomamba.data.pack import SourceRows
from biomamba.data.readers import DataError
from biomamba.data.shards import ROW_DTYPE


def why_no_training_rows(src: SourceRows, cfg: DataConfig, read: int | None = None) -> str:
    """Why ``src`` has no training row, and what would give it some (one sentence)."""
    if src.n_docs == 0:
        seen = f" of the {read} record(s) read" if read is not None else ""
        return (f"source {src.name}: no document survived reading and cleaning{seen} (see the skip counts "
                f"logged above; min_chars={cfg.min_chars})")
    train_docs = src.n_docs - src.val_docs
    if train_docs == 0:
        took = "it" if src.n_docs == 1 else f"all {src.n_docs}"
        return (f"source {src.name} has only {src.n_docs} document(s) and the validation split took {took} "
                f"(held-out rows are carved from whole documents; val_sequences={cfg.val_sequences}): add "
                f"documents, lower val_sequences (0 holds none out), or, if a file is one huge document, "
                f"read it as several (text sources: text_unit: paragraph or line)")
    tokens = int(src.streams["train"].total)
    return (f"source {src.name}: its {train_docs} training document(s) hold {tokens} tokens, fewer than "
            f"seq_len={cfg.seq_len} (validation took {src.val_docs} document(s)): add documents, lower "
            f"seq_len or val_sequences")


def require_training_rows(sources: list[SourceRows], cfg: DataConfig, reads: dict[str, int]) -> None:
    """Raise (naming each source and the reason) when the mix would have no row of a source it needs."""
    ratios = cfg.ratios()
    needed = [s for s in sources if ratios is None or ratios[s.name] > 0]
    empty = [s for s in needed if s.rows["train"] == 0]
    if ratios is None and len(empty) < len(needed):
        return  # without ratios, any source with rows is enough
    if empty:
        reasons = "; ".join(why_no_training_rows(s, cfg, reads.get(s.name)) for s in empty)
        extra = " (or set its ratio to 0)" if ratios is not None and len(empty) < len(needed) else ""
        raise DataError(f"no training rows: {reasons}{extra}", reason="empty_source" if ratios else "empty_build")


def mix(names: list[str], avail: dict[str, int], ratios: dict[str, float] | None, mode: str,
        cap: int | None) -> dict[str, int]:
    """Training rows to take from each source so that the shares match ``ratios`` (in rows)."""
    if ratios is None:
        take = dict(avail)
    else:
        active = [n for n in names if ratios[n] > 0]
        scale = [avail[n] / ratios[n] for n in active]
        total = min(scale) if mode == "downsample" else max(scale)
        take = {n: (int(np.floor(ratios[n] * total + 1e-6)) if n in active else 0) for n in names}
        if mode == "downsample":
            take = {n: min(take[n], avail[n]) for n in names}
    if cap is not None and sum(take.values()) > cap:
        factor = cap / sum(take.values())
        take = {n: int(np.floor(v * factor)) for n, v in take.items()}
    return take


def row_table(names: list[str], take: dict[str, int], avail: dict[str, int],
              shuffle_seed: list[int] | None) -> np.ndarray:
    """Rows of a split: (source id, row in that source's split), sources in order, then shuffled if seeded.

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
