"""Build stage 2, per file in worker processes: read, clean, tokenise; write the unit's result.

A unit's result (``WORK/units/KEY/``): ``tokens.bin`` (every kept document's ids, each
followed by EOS, back to back), ``docs.npy`` (record id, length, text hash per document),
MEDLINE's ``seen.npy``/``deleted.npy`` and ``meta.json`` (counts, errors, checksums). It is
written under ``KEY.tmp`` and renamed into place only when whole, so a build killed mid-file
leaves a ``.tmp`` that the next run discards (and says so), and a finished unit is reused.

Memory does not grow with a document's length beyond its text (which the plain-text and
WikiText readers hold about twice; a JSONL or Parquet value a few times, as parsed and
normalised): documents are tokenised in pieces of at most ``PIECE_CHARS`` characters, at most
``BATCH_CHARS`` characters per tokenizer call, and the ids go to disk after each call. (The ``tokenizers`` library needs
about 150 bytes per character of the text it encodes at once: a 46 MB single-document file
took 7.5 GB when it was encoded whole.) Pieces are cut at a whitespace character between two
non-whitespace ones, where byte-level BPE pre-tokenizers (GPT-2, GPT-NeoX) split anyway and
BPE never merges across, so the ids equal those of the whole text (tested on real text); only
a window with no such place (16 Ki characters without whitespace) is cut hard, which may
change the ids at that one cut. (A tokenizer that marks the start of every input, as
SentencePiece-style ones do, would also differ at each cut: only documents longer than
``PIECE_CHARS`` are cut at all.) We chose this over capping a document's characters: nothing
is dropped, and the tokens do not depend on a setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from biomamba.data.config import DataConfig
from biomamba.data.plan import UNIT_VERSION, Unit, file_checksums
from biomamba.data.readers import DataError, Delete, Doc, Skip, read_records
from biomamba.data.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("biomamba.data")

MAX_LISTED_ERRORS = 1000
UNIT_DOC_DTYPE = np.dtype([("record", "<i8"), ("pos", "<i4"), ("year", "<i2"), ("ntok", "<i4"),
                           ("h0", "<u8"), ("h1", "<u8")])
PIECE_CHARS = 1 << 16  # characters per tokenizer input (a longer document is cut into pieces)
BATCH_CHARS = 1 << 18  # characters per tokenizer call: ~40 MB of tokenizer memory at ~150 B/char

# a whitespace character between two non-whitespace ones: a pre-token boundary for byte-level BPE
_CUT = re.compile(r"(?<=\S)\s(?=\S)")


def iter_pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
    """``(piece, is_last)``: ``text`` in order, each piece at most ``max_chars`` characters.

    A piece ends right before the last whitespace character in its final quarter that has
    non-whitespace on both sides; without one, at ``max_chars`` exactly.
    """
    n, start = len(text), 0
    while n - start > max_chars:
        hi = start + max_chars
        cut = hi
        for m in _CUT.finditer(text, start + max_chars * 3 // 4, hi + 1):
            cut = m.start()
        yield text[start:cut], False
        start = cut
    yield text[start:], True


class _Encoder:
    """Tokenises documents in bounded pieces; appends ids (+ EOS per document) to the token file."""

    def __init__(self, tok: Tokenizer, out: IO[bytes], dtype: np.dtype, batch_docs: int):
        self.tok, self.out, self.dtype, self.batch_docs = tok, out, dtype, batch_docs
        self.batch: list[tuple[int, str, bool]] = []  # (document number, piece, last piece of it)
        self.chars = 0
        self.open: dict[int, list] = {}  # document number → [record, pos, year, hasher, ntok]
        self.count = 0
        self.docs: list[tuple] = []
        self.tokens = 0
        self.max_id = -1

    def add(self, doc: Doc, pos: int) -> None:
        number = self.count
        self.count += 1
        self.open[number] = [doc.record, pos, doc.year, hashlib.blake2b(digest_size=16), 0]
        for piece, last in iter_pieces(doc.text):
            self.batch.append((number, piece, last))
            self.chars += len(piece)
            if self.chars >= BATCH_CHARS:
                self.flush()
        if len(self.open) >= self.batch_docs:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        encoded = self.tok.encode_batch([piece for _, piece, _ in self.batch])
        chunks = []
        for (number, piece, last), ids in zip(self.batch, encoded):
            state = self.open[number]
            state[3].update(piece.encode("utf-8"))  # the hash of the pieces in order = the hash of the text
            if last:
                ids.append(self.tok.eos_id)
            if ids:
                arr = np.asarray(ids, dtype=np.int64)
                self.max_id = max(self.max_id, int(arr.max()))
                chunks.append(arr.astype(self.dtype))
            state[4] += len(ids)
            if last:
                record, pos, year, hasher, ntok = self.open.pop(number)
                h0, h1 = np.frombuffer(hasher.digest(), dtype="<u8")
                self.docs.append((record, pos, year, ntok, h0, h1))
                self.tokens += ntok
        if chunks:
            np.concatenate(chunks).tofile(self.out)
        self.batch.clear()
        self.chars = 0


_WORKER: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the build's main process dies.

    Without it, pool workers outlive a SIGKILLed build (they are re-parented to init) and keep
    writing into the work directory that the next run is cleaning up and reusing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _init_worker(tokenizer_path: str, parent: int | None = None) -> None:
    """Load the tokenizer once per process; one core per worker (tokenizers' own threads off).

    Special tokens are *not* matched inside document text (``encode_special_tokens``): a
    literal ``<|endoftext|>`` in a web page must not become EOS, and added tokens such as
    ``assistant`` in some GPT-NeoX tokenizer files must not replace the ordinary BPE pieces.
    """
    if parent is not None:
        _die_with_parent(parent)
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
    seen: list[int] = []
    deleted: list[int] = []
    file_error: dict[str, str] | None = None

    def note_error(reason: str, where: str, message: str) -> None:
        nonlocal n_errors
        n_errors += 1
        if len(errors) < MAX_LISTED_ERRORS:
            errors.append({"file": path, "where": where, "reason": reason, "message": message})

    with open(tmp / "tokens.bin", "wb") as tokfile:
        enc = _Encoder(tok, tokfile, dtype, task["batch_size"])
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
                if not event.text:
                    skipped["empty"] += 1
                    continue
                if len(event.text) < task["min_chars"]:
                    skipped["too_short"] += 1
                    continue
                enc.add(event, pos)
        except DataError as exc:
            if task["on_error"] == "raise":
                raise
            file_error = {"file": path, "where": exc.where, "reason": exc.reason, "message": str(exc)}
            note_error(exc.reason, exc.where, str(exc))
        enc.flush()

    np.save(tmp / "docs.npy", np.array(enc.docs, dtype=UNIT_DOC_DTYPE))
    if medline:
        np.save(tmp / "seen.npy", np.asarray(seen, dtype=np.int64))
        np.save(tmp / "deleted.npy", np.asarray(deleted, dtype=np.int64))
    kept = len(enc.docs)
    meta = {
        "unit_version": UNIT_VERSION,
        "path": path,
        **file_checksums(Path(path)),
        "read": read,
        "kept": kept,
        "skipped": dict(sorted(skipped.items())),
        "deletions": len(deleted),
        "max_token_id": enc.max_id,
        "tokens": enc.tokens,
        "dtype": dtype.name,
        "errors": errors,
        "n_errors": n_errors,
        "file_error": file_error,
    }
    assert read == kept + sum(skipped.values()), "record accounting is off"
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return meta


def unit_problem(unit: Unit) -> str | None:
    """Why a finished-looking unit directory cannot be reused (None: it can)."""
    try:
        meta = json.loads((unit.dir / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        return f"meta.json unreadable ({exc})"
    if meta.get("unit_version") != UNIT_VERSION:
        return f"made by another version (unit format {meta.get('unit_version')})"
    names = ["docs.npy", "tokens.bin"] + (["seen.npy", "deleted.npy"] if unit.fmt == "medline" else [])
    missing = [n for n in names if not (unit.dir / n).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    expected = int(meta["tokens"]) * np.dtype(meta["dtype"]).itemsize
    size = (unit.dir / "tokens.bin").stat().st_size
    if size != expected:
        return f"tokens.bin has {size} bytes, expected {expected}"
    return None


def prepare_work(units: list[Unit], units_dir: Path) -> None:
    """Clear what an interrupted or different earlier build left in ``units_dir``, saying what and why."""
    by_name = {u.dir.name: u for u in units}
    stale = 0
    for entry in sorted(units_dir.iterdir()) if units_dir.is_dir() else []:
        unit = by_name.get(entry.name[:-4] if entry.name.endswith(".tmp") else entry.name)
        if unit is None:
            stale += 1
        elif entry.name.endswith(".tmp"):
            log.warning("an earlier build was interrupted while reading %s: discarding its partial result "
                        "(it is read again)", unit.path)
        elif (why := unit_problem(unit)) is not None:
            log.warning("discarding the intermediate result of %s from an earlier build: %s (it is read again)",
                        unit.path, why)
        else:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if stale:
        log.info("removed %d intermediate result(s) of an earlier build that this one does not use "
                 "(other files or settings)", stale)


def _mp_context():
    """fork where the platform has it (fast start, works from any script); spawn elsewhere.

    Forking is safe here: the parent has not used the tokenizer's thread pool (it only loads
    and saves the tokenizer), and each worker turns that pool off before encoding.
    """
    import multiprocessing

    return get_context("fork" if "fork" in multiprocessing.get_all_start_methods() and os.name == "posix"
                       and sys.platform != "darwin" else "spawn")


def run_units(units: list[Unit], cfg: DataConfig, tokenizer_path: Path, dtype: str) -> list[dict[str, Any]]:
    """Phase 1 over all files: finished results are reused; the rest run on ``workers`` processes."""
    if units:
        prepare_work(units, units[0].dir.parent)
    metas: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, unit in enumerate(units):
        if (unit.dir / "meta.json").is_file():
            metas[i] = json.loads((unit.dir / "meta.json").read_text())
        else:
            todo.append(i)
    if metas:
        log.info("resuming an earlier build: %d of %d files already tokenised (kept in %s)", len(metas), len(units),
                 units[0].dir.parent.parent)
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
                                 initargs=(str(tokenizer_path), os.getpid())) as pool:
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
