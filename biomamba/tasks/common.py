"""Helpers shared by the task loaders: path globs, seeded splits, class balancing, mixing, and
the removal of training items that are test items (by id or normalised question text).

Every loader returns plain dicts (one per example) and a ``stats`` dict counting what was
read, dropped and why, so no example disappears silently.
"""

from __future__ import annotations

import glob
import json
import os
import random
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

Example = dict[str, Any]


def resolve_paths(spec: str | Path | Sequence[str | Path], root: str | Path | None = None) -> list[Path]:
    """One path, a glob, or a list of them (relative ones under ``root``) → sorted existing files.
    A pattern that matches nothing is an error naming it."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for item in items:
        item = os.path.expanduser(str(item))
        if root is not None and not os.path.isabs(item):
            item = os.path.join(str(root), item)
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else ([item] if os.path.exists(item) else [])
        if not matches:
            raise FileNotFoundError(f"no file matches {item}")
        out.extend(Path(m) for m in matches)
    return out


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def split_off(examples: Sequence[Example], fraction: float, seed: int = 42,
              stratify: str | None = None) -> tuple[list[Example], list[Example]]:
    """(kept, carved): a seeded ``fraction`` of ``examples`` carved off (per class of
    ``stratify`` when given), order otherwise preserved. Used to carve the validation split from
    TRAINING data: checkpoints and prompts are chosen on it, never on the test set."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), not {fraction}")
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex[stratify] if stratify else None].append(i)
    rng = random.Random(seed)
    carved: set[int] = set()
    for key in sorted(groups, key=str):
        idx = groups[key][:]
        rng.shuffle(idx)
        carved.update(idx[:round(len(idx) * fraction)])
    return ([ex for i, ex in enumerate(examples) if i not in carved],
            [ex for i, ex in enumerate(examples) if i in carved])


def balance_classes(examples: Sequence[Example], key: str, mode: str = "downsample", seed: int = 42) -> list[Example]:
    """Equal counts per class of ``key``: "downsample" the larger classes (seeded sample) or
    "upsample" the smaller ones (repeat whole shuffled copies, then a seeded remainder);
    "none" returns the examples unchanged. The result is shuffled with the seed."""
    if mode == "none":
        return list(examples)
    if mode not in ("downsample", "upsample"):
        raise ValueError(f"balance must be none, downsample or upsample, not {mode!r}")
    groups: dict[Any, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex[key]].append(ex)
    if not groups:
        return []
    rng = random.Random(seed)
    target = (min if mode == "downsample" else max)(len(g) for g in groups.values())
    out: list[Example] = []
    for label in sorted(groups, key=str):
        out.extend(sample_exactly(groups[label], target, rng))
    rng.shuffle(out)
    return out


def sample_exactly(items: Sequence[Any], n: int, rng: random.Random) -> list[Any]:
    """``n`` items: a seeded sample without replacement when ``n`` ≤ len, else whole copies
    plus a sample of the remainder (every item used ⌊n/len⌋ or ⌈n/len⌉ times)."""
    if n <= len(items):
        return rng.sample(list(items), n)
    out: list[Any] = []
    while len(out) + len(items) <= n:
        out.extend(items)
    out.extend(rng.sample(list(items), n - len(out)))
    return out


def mix_sources(first: Sequence[Example], second: Sequence[Example], share_first: float, seed: int = 42,
                total: int | None = None) -> tuple[list[Example], dict[str, int]]:
    """A shuffled mixture in which ``share_first`` of the examples come from ``first`` (the
    BioASQ share of the yes/no mixture, 0.65–0.70 in the paper). Without ``total``, the mix is
    as large as it can be without repeating an example; a larger ``total`` repeats examples
    evenly. Returns the mixture and the counts drawn from each source."""
    if not 0 < share_first < 1:
        raise ValueError(f"share must be in (0, 1), not {share_first}")
    if not first or not second:
        raise ValueError(f"cannot mix: {len(first)} examples in the first source, {len(second)} in the second")
    if total is None:
        total = int(min(len(first) / share_first, len(second) / (1 - share_first)))
    n_first = round(total * share_first)
    n_second = total - n_first
    rng = random.Random(seed)
    mixed = sample_exactly(first, n_first, rng) + sample_exactly(second, n_second, rng)
    rng.shuffle(mixed)
    return mixed, {"first": n_first, "second": n_second, "total": total}


def cap_samples(examples: Sequence[Example], max_samples: int | None, seed: int = 42) -> list[Example]:
    """At most ``max_samples`` examples (a seeded sample, original order kept)."""
    if max_samples is None or len(examples) <= max_samples:
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), max_samples))
    return [ex for i, ex in enumerate(examples) if i in keep]


def count(stats: dict[str, int], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def unique_by(examples: Iterable[Example], key: Callable[[Example], Any], stats: dict[str, int],
              what: str = "duplicates") -> list[Example]:
    seen: set[Any] = set()
    out = []
    for ex in examples:
        k = key(ex)
        if k in seen:
            count(stats, what)
            continue
        seen.add(k)
        out.append(ex)
    return out

# ---- shared by the loaders: file roles, argument checks, train/test overlap ------------------
PathSpec = Sequence[str | Path] | str | Path  # one path, a glob, or a list of them
OVERLAP_COUNTS = ("overlap_with_test_dropped", "overlap_same_id", "overlap_same_question")


class FileRoles(Protocol):
    """A task's files by role (``biomamba.tasks.registry._Paths``, or a plain dict in tests)."""

    def __getitem__(self, role: str) -> Any: ...

    def __contains__(self, role: str) -> bool: ...


def normalize_question(text: str) -> str:
    """The text under which two questions are the same question: lower-cased, whitespace runs
    collapsed, punctuation and spaces stripped at both ends ("Is X ?" is "is x")."""
    text = " ".join(text.lower().split())
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or unicodedata.category(text[start]).startswith("P")):
        start += 1
    while end > start and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[start:end]


def drop_overlap(train: list[Example], test: Sequence[Example], stats: dict[str, Any],
                 text_key: str = "question") -> list[Example]:
    """Training examples whose id or normalised question text is a test example's are removed
    (BioASQ's later training sets contain earlier test batches; one question can also occur in
    both sources of the mixture). Counted: ``overlap_with_test_dropped`` = ``overlap_same_id`` +
    ``overlap_same_question`` (text alone); every key present, 0 included, so a run shows the
    check was made. ``text_key``: the field compared as text (own-data tasks: their prompt)."""
    ids = {ex["id"] for ex in test}
    questions = {normalize_question(ex[text_key]) for ex in test} - {""}
    for key in OVERLAP_COUNTS:
        count(stats, key, 0)
    kept = []
    for ex in train:
        if ex["id"] in ids:
            count(stats, "overlap_same_id")
        elif normalize_question(ex[text_key]) in questions:
            count(stats, "overlap_same_question")
        else:
            kept.append(ex)
    count(stats, "overlap_with_test_dropped", len(train) - len(kept))
    return kept


def check_loader_args(loader: str, args: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"loader {loader}: unknown argument(s) {unknown}; known: {sorted(known)}")
