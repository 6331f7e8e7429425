"""Build stage 6, writing: one split's rows into shard files, with its row table (and lengths).

Called inside the build's temporary output directory, which is renamed into place only when
everything is written: nothing here is ever seen half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomamba.data.pack import SourceRows
from biomamba.data.shards import ShardWriter
from biomamba.utils.io import file_digest


def _save_npy(root: Path, name: str, array: np.ndarray) -> dict[str, str]:
    np.save(root / name, array)
    return {"file": name, "sha256": file_digest(root / name)}


def write_split(root: Path, split: str, table: np.ndarray, sources: list[SourceRows], seq_len: int,
                dtype: np.dtype, shard_rows: int, packing: bool, pad_id: int) -> dict[str, Any]:
    """Write ``table``'s rows (source id, row in that source's split) as shards; the split's manifest entry."""
    L = seq_len
    writer = ShardWriter(root, split, L, dtype, shard_rows)
    buf = np.empty(L, dtype=dtype)
    lengths = None if packing else np.empty(len(table), dtype=np.int32)
    for j, (sid, row) in enumerate(zip(table["source"].tolist(), table["row"].tolist())):
        stream = sources[sid].streams[split]
        if packing:
            stream.read(row * L, L, buf)
        else:
            n = stream.read_doc(row, L, buf)
            buf[n:] = pad_id
            lengths[j] = n
        writer.add(buf)
    info: dict[str, Any] = {"sequences": int(len(table)), "tokens": int(len(table)) * L, "sources": {},
                            "shards": writer.close(), "rows": _save_npy(root, f"{split}/rows.npy", table)}
    for s, src in enumerate(sources):
        rows = table["row"][table["source"] == s]
        entry: dict[str, Any] = {"sequences": int(len(rows)), "tokens": src.real_tokens(split, rows, L)}
        if not packing:
            entry["truncated_rows"] = int((src.streams[split].length[rows] > L).sum())
        info["sources"][src.name] = entry
    if not packing:
        assert lengths is not None
        real = int(lengths.sum(dtype=np.int64))
        slots = int(len(table)) * L
        info["lengths"] = _save_npy(root, f"{split}/lengths.npy", lengths)
        info["tokens"] = real  # real tokens; padding counted apart
        info["padding_tokens"] = slots - real
        info["padding_fraction"] = (slots - real) / slots if slots else 0.0
        info["truncated_rows"] = sum(e["truncated_rows"] for e in info["sources"].values())
        info["tokens_cut"] = int(sum(
            (src.streams[split].length[table["row"][table["source"] == s]].astype(np.int64) - L).clip(0).sum()
            for s, src in enumerate(sources)))
    return info
