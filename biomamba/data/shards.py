"""On-disk token shards, and the loader that training reads them with.

Layout of a data directory (written by ``biomamba data build``)::

    manifest.json           what is here and how it was made (see biomamba.data.build)
    tokenizer.json          the tokenizer that produced the ids
    train/train-00000.bin   rows: raw ``dtype`` (uint16/uint32), shape (rows, seq_len)
    train/rows.npy          per row: source id and row number in that source's split
    train/lengths.npy       packing false only: per row, its real (non-padding) length
    val/val-00000.bin       held-out rows, grouped by source
    val/rows.npy
    index/{split}-{source}.docs.npy   provenance: file, record id, token span of every document

Packed (``packing: true``): documents end with EOS and are packed back to back; a document
may continue into the next row. ``seq_idx`` (document index within a row, from 0) is derived
from the EOS positions: it steps up right after each EOS, so the state of the model can be
reset where a new document starts and never carries one document into another.

Padded (``packing: false``): one document per row (its tokens, EOS, cut to ``seq_len``),
then ``pad_id``. The item carries ``length`` (the real tokens); padding is ``seq_idx`` 1, a
document of its own, and the objective scores no position whose next token is padding.

Every shard's size is checked when a dataset opens, and its sha256 once per process, so a
truncated or corrupted file stops training with one line naming it (:class:`ShardError`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from biomamba.utils.io import file_digest

MANIFEST_FORMAT = "biomamba-packed-tokens"
# 2: adds packing false (lengths.npy) and the sha256 of rows.npy; version 1 (all packed) still reads
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)

ROW_DTYPE = np.dtype([("source", "u1"), ("row", "<i8")])
DOC_DTYPE = np.dtype([("file", "<i4"), ("record", "<i8"), ("start", "<i8"), ("length", "<i4"), ("year", "<i2")])


class ShardError(ValueError):
    """A data directory's file is missing, truncated or corrupted; the message names the file and the cause."""


def read_manifest(root: str | Path) -> dict[str, Any]:
    import json

    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no manifest.json (not a directory written by `biomamba data build`)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: not valid JSON ({exc}); the file is corrupted: rebuild the data") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{path}: not a biomamba token-shard manifest (format={fmt!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: manifest version {manifest.get('version')} is not supported "
                         f"(this biomamba reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild the data")
    return manifest


# files whose sha256 matched in this process: (path, size, mtime_ns, sha256)
_VERIFIED: set[tuple[str, int, int, str]] = set()
_REBUILD = "rebuild the data with `biomamba data build`"


def _file_problem(path: Path, size: int | None, sha: str | None, hash_it: bool) -> str | None:
    if not path.is_file():
        return f"{path}: missing (the data directory is incomplete; {_REBUILD})"
    st = path.stat()
    if size is not None and st.st_size != size:
        what = "truncated" if st.st_size < size else "longer than written"
        return f"{path}: {st.st_size:,} bytes, expected {size:,} ({what}; {_REBUILD})"
    if hash_it and sha:
        key = (str(path), st.st_size, st.st_mtime_ns, sha)
        if key not in _VERIFIED:
            if file_digest(path) != sha:
                return f"{path}: sha256 differs from manifest.json (corrupted or modified; {_REBUILD})"
            _VERIFIED.add(key)
    return None


def check_split(root: str | Path, manifest: dict[str, Any], split: str, hash_files: bool = True) -> list[str]:
    """Problems with a split's files, one line each naming the file: sizes always, sha256 if ``hash_files``."""
    root = Path(root)
    info = manifest["splits"][split]
    width = np.dtype(manifest["dtype"]).itemsize * int(manifest["seq_len"])
    problems = []
    for shard in info["shards"]:
        problem = _file_problem(root / shard["file"], int(shard["sequences"]) * width, shard.get("sha256"), hash_files)
        if problem:
            problems.append(problem)
    for key in ("rows", "lengths"):  # recorded from manifest version 2 on
        meta = info.get(key)
        if meta:
            problem = _file_problem(root / meta["file"], None, meta.get("sha256"), hash_files)
            if problem:
                problems.append(problem)
    if not manifest.get("packing", True) and not info.get("lengths"):
        problems.append(f"{root / 'manifest.json'}: split {split} has padded rows but names no lengths file")
    return problems


def seq_idx_from_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
    """Document index within the row: the number of EOS tokens strictly before each position."""
    is_eos = ids == eos_id
    out = np.zeros(ids.shape[-1], dtype=np.int32)
    np.cumsum(is_eos[:-1], out=out[1:])
    return out


class PackedDataset:
    """Random access to the rows of one split (optionally one source of it).

    ``ds[i]`` → ``{"input_ids": int64 (seq_len,), "seq_idx": int32 (seq_len,)}``, plus
    ``"length"`` (int64, the real tokens) when the data was built with ``packing: false``.
    Shards are memory-mapped lazily, so the object is cheap to pickle into DataLoader workers.
    Opening checks every shard of the split (size; sha256 too when ``verify``, once per
    process) and raises :class:`ShardError` naming the first bad file.
    """

    def __init__(self, root: str | Path, split: str = "train", source: str | None = None,
                 verify: bool = True) -> None:
        self.root = Path(root)
        self.manifest: dict = read_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise KeyError(f"{self.root}: no split {split!r} (have: {', '.join(splits)})")
        self.split = split
        info = splits[split]
        problems = check_split(self.root, self.manifest, split, hash_files=verify)
        if problems:
            more = (f" (and {len(problems) - 1} more problem(s): `biomamba data inspect {self.root} --verify` "
                    f"lists them)") if len(problems) > 1 else ""
            raise ShardError(problems[0] + more)
        self.seq_len: int = int(self.manifest["seq_len"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos_id: int = int(self.manifest["eos_id"])
        self.packing: bool = bool(self.manifest.get("packing", True))
        self._all_sources: list[str] = list(self.manifest["source_order"])
        self._shards: list[dict] = list(info["shards"])
        self._shard_rows = int(self.manifest["shard_sequences"])
        self._total = int(info["sequences"])
        self._lengths_file: str | None = None if self.packing else info["lengths"]["file"]
        self._rows: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._maps: dict[int, np.ndarray] = {}
        present = [s for s in self._all_sources if info["sources"].get(s, {}).get("sequences", 0) > 0]
        if source is not None:
            if source not in self._all_sources:
                raise KeyError(f"{self.root}: no source {source!r} (have: {', '.join(self._all_sources)})")
            sid = self._all_sources.index(source)
            self._index: np.ndarray | None = np.flatnonzero(self.rows["source"] == sid)
            self.sources: list[str] = [source] if len(self._index) else []
        else:
            self._index = None
            self.sources = present
        self.source = source

    # -- storage ---------------------------------------------------------------------------
    @property
    def rows(self) -> np.ndarray:
        """Per row: source id (index into ``manifest['source_order']``) and row in that source's split."""
        if self._rows is None:
            self._rows = np.load(self.root / self.split / "rows.npy", mmap_mode="r")
        return self._rows

    @property
    def lengths(self) -> np.ndarray | None:
        """Per row: its real (non-padding) tokens; None for packed data (every row is full)."""
        if self._lengths is None and self._lengths_file is not None:
            lengths = np.load(self.root / self._lengths_file, mmap_mode="r")
            if lengths.shape != (self._total,):
                raise ShardError(f"{self.root / self._lengths_file}: {lengths.shape[0]} lengths for "
                                 f"{self._total} rows ({_REBUILD})")
            self._lengths = lengths
        return self._lengths

    def _shard(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        if m is None:
            meta = self._shards[k]
            m = np.memmap(self.root / meta["file"], dtype=self.dtype, mode="r",
                          shape=(int(meta["sequences"]), self.seq_len))
            self._maps[k] = m
        return m

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        state["_rows"] = None
        state["_lengths"] = None
        return state

    # -- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) if self._index is not None else self._total

    def global_row(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} sequences")
        return int(self._index[i]) if self._index is not None else i

    def tokens(self, i: int) -> np.ndarray:
        """Row ``i`` as stored (uint16/uint32, padding included), without copying."""
        g = self.global_row(i)
        return self._shard(g // self._shard_rows)[g % self._shard_rows]

    def length(self, i: int) -> int:
        """Real (non-padding) tokens in row ``i``."""
        lengths = self.lengths
        return self.seq_len if lengths is None else int(lengths[self.global_row(i)])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ids = self.tokens(i).astype(np.int64)
        if self.packing:
            return {"input_ids": ids, "seq_idx": seq_idx_from_eos(ids, self.eos_id)}
        n = self.length(i)
        # padding is a document of its own (seq_idx 1): no state flows from it, and it is never scored
        seq_idx = (np.arange(self.seq_len) >= n).astype(np.int32)
        return {"input_ids": ids, "seq_idx": seq_idx, "length": np.int64(n)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    # -- provenance ------------------------------------------------------------------------
    def provenance(self, i: int) -> list[dict[str, Any]]:
        """The documents (source, file, record id, year) whose tokens are in row ``i``, in order."""
        g = self.global_row(i)
        sid, row = int(self.rows[g]["source"]), int(self.rows[g]["row"])
        name = self._all_sources[sid]
        docs = np.load(self.root / "index" / f"{self.split}-{name}.docs.npy", mmap_mode="r")
        files = self.manifest["sources"][name]["files"]

        def entry(d: np.void, continued: bool) -> dict[str, Any]:
            return {"source": name, "file": files[int(d["file"])]["path"], "record": int(d["record"]),
                    "year": int(d["year"]), "continued": continued}

        if not self.packing:  # row r of a source's split is its document r
            d = docs[row]
            return [{**entry(d, False), "truncated": int(d["length"]) > self.seq_len}]
        lo, hi = row * self.seq_len, (row + 1) * self.seq_len
        ends = docs["start"] + docs["length"]
        first = int(np.searchsorted(ends, lo, side="right"))
        out = []
        for d in docs[first:]:
            if d["start"] >= hi:
                break
            out.append(entry(d, bool(d["start"] < lo)))
        return out


class DistributedSequenceSampler:
    """Deterministic, resumable, rank-sharded order over ``num_sequences`` packed sequences.

    Each epoch has one global order: a permutation seeded by ``(seed, epoch)`` (identity when
    ``shuffle=False``). Rank ``r`` of ``W`` takes global positions ``c + r, c + r + W, ...``
    from the current position ``c`` (``consumed``), so the global order does not depend on
    ``W`` and a run can resume on a different number of ranks. The epoch is padded to a
    multiple of ``W`` by wrapping around to its start (every rank yields equally many
    indices); ``drop_last=True`` drops that tail instead.

    The trainer calls :meth:`advance` with the number of *global* sequences each optimiser
    step consumed; :meth:`state_dict` / :meth:`load_state_dict` save and restore the position.
    """

    def __init__(self, num_sequences: int, *, seed: int = 42, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        if num_sequences < 1:
            raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_sequences = int(num_sequences)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.consumed = 0
        self._perm: tuple[int, np.ndarray] | None = None

    def _order(self) -> np.ndarray:
        if self._perm is None or self._perm[0] != self.epoch:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_sequences)
            else:
                perm = np.arange(self.num_sequences)
            self._perm = (self.epoch, perm)
        return self._perm[1]

    @property
    def epoch_length(self) -> int:
        """Global positions in this epoch for the current world size (padded or trimmed to a multiple of W)."""
        n, w = self.num_sequences, self.world_size
        return (n // w) * w if self.drop_last else -(-n // w) * w

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a no-op when it is already the current epoch)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.consumed = 0

    def __len__(self) -> int:
        remaining = max(0, self.epoch_length - self.consumed)
        return max(0, -(-(remaining - self.rank) // self.world_size)) if remaining > self.rank else 0

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        positions = np.arange(self.consumed + self.rank, self.epoch_length, self.world_size)
        for p in positions:
            yield int(order[p % self.num_sequences])

    def advance(self, n_global: int) -> None:
        if n_global < 0:
            raise ValueError("advance() takes a non-negative count")
        self.consumed += int(n_global)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_sequences": self.num_sequences, "shuffle": self.shuffle, "world_size": self.world_size,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_sequences", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]!r}, this sampler has "
                                 f"{getattr(self, key)!r}: the data or seed changed, so the position is meaningless")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


class ShardWriter:
    """Writes rows of ``seq_len`` tokens into ``{split}/{split}-NNNNN.bin`` shard files of ``rows_per_shard`` rows."""

    def __init__(self, root: Path, split: str, seq_len: int, dtype: np.dtype, rows_per_shard: int):
        self.root, self.split, self.seq_len, self.dtype = root, split, seq_len, np.dtype(dtype)
        self.rows_per_shard = rows_per_shard
        (root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._buf = np.empty((rows_per_shard, seq_len), dtype=self.dtype)
        self._n = 0
        self.total = 0

    def add(self, row: np.ndarray) -> None:
        self._buf[self._n] = row
        self._n += 1
        self.total += 1
        if self._n == self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if self._n == 0:
            return
        name = f"{self.split}/{self.split}-{len(self.shards):05d}.bin"
        data = self._buf[: self._n].tobytes()
        (self.root / name).write_bytes(data)
        self.shards.append({"file": name, "sequences": self._n, "sha256": hashlib.sha256(data).hexdigest()})
        self._n = 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        return self.shards
