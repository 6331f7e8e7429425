"""Yes/no QA: BioASQ raw JSON and PubMedQA PQA-L (binary), and their mixture.

An example is ``{"id", "question", "context", "answer": "yes"|"no", "source"}``.

* BioASQ (raw JSON, ``{"questions": [...]}``): yes/no questions, snippets joined as context
  (identical snippets once), ``exact_answer`` lower-cased ("Yes" occurs). Questions repeat
  across yearly training sets: kept once per id.
* PubMedQA PQA-L (``ori_pqal.json``, 1,000 expert-labelled items keyed by PMID), two ways to
  split it (loader argument ``pubmedqa_split``):

  - ``official``: test = the 500 ids of ``test_ground_truth.json``, train = the other 500.
  - ``paper``: the second BioMamba paper's split, a seeded random 80/20 split of all PQA-L
    items (800 train / 200 test at seed 42), made as the authors' code makes it
    (:func:`paper_split`). It needs no ``test_ids`` file.

  Binary = "maybe" dropped AFTER splitting, from each part (counted as ``maybe_dropped``).
* Train and test never share an item: training examples whose id or normalised question text
  is in the test set are removed before validation is carved (:func:`drop_overlap`; counted). In
  the mixture, each source's training data is checked against the whole mixed test set (BioASQ
  and PubMedQA test questions alike).
* Validation is carved from training data (stratified by answer, seed 42), never from test.
* The split used is named in the loader's counts (``pubmedqa_split``, and for ``paper`` its
  seed, test fraction and a digest of the test ids), which evaluation writes to results.json
  (``data``) and SFT to sft_data.json (``counts``).

The ``task_*`` functions are the loaders (``(split, paths, args, stats) → examples``) for the
loader names ``bioasq_yesno``, ``pubmedqa`` and ``yesno_mix`` of ``biomamba.tasks.registry.LOADERS``;
each rejects an argument it does not know.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from biomamba.tasks.common import (Example, FileRoles, PathSpec, balance_classes, check_loader_args, count,
                                   drop_overlap, mix_sources, read_json, resolve_paths,
                                   split_off, unique_by)

LABELS = ("yes", "no")
PQAL_LABELS = ("yes", "no", "maybe")
PUBMEDQA_SPLITS = ("official", "paper")

# loader arguments each task accepts (a misspelt one must not silently fall back to a default,
# e.g. ``pubmedqa_splt: paper`` quietly scoring the official split)
_BIOASQ_ARGS = frozenset({"val_fraction", "seed", "balance"})
_PUBMEDQA_SPLIT_ARGS = frozenset({"pubmedqa_split", "pubmedqa_split_seed", "pubmedqa_test_fraction"})
_PUBMEDQA_ARGS = frozenset({"binary", "val_fraction", "seed", "balance"}) | _PUBMEDQA_SPLIT_ARGS
_MIX_ARGS = (frozenset({"bioasq_share", "bioasq_balance", "binary", "val_fraction", "seed", "total"})
             | _PUBMEDQA_SPLIT_ARGS)


# ---- BioASQ -----------------------------------------------------------------------------------
def load_bioasq_yesno(paths: PathSpec, stats: dict[str, Any] | None = None) -> list[Example]:
    """Yes/no questions from BioASQ raw JSON files (training sets or golden test batches)."""
    stats = {} if stats is None else stats
    examples: list[Example] = []
    for path in resolve_paths(paths):
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("questions", []), list):
            raise ValueError(f"{path}: not BioASQ JSON (expected an object with a 'questions' list)")
        for i, q in enumerate(data.get("questions", [])):
            if not isinstance(q, dict) or q.get("type") != "yesno":
                continue
            count(stats, "read")
            for key in ("id", "body"):
                if not isinstance(q.get(key), str) or not q[key].strip():
                    raise ValueError(f"{path}: question {i} (id {q.get('id')!r}): missing or empty {key!r}")
            answer = q.get("exact_answer")
            if isinstance(answer, list):  # some releases wrap it: ["yes"]
                answer = answer[0] if len(answer) == 1 and isinstance(answer[0], str) else None
            answer = answer.strip().lower() if isinstance(answer, str) else None
            if answer not in LABELS:
                count(stats, "bad_answer_dropped")
                continue
            snippets: list[str] = []
            for s in q.get("snippets") or []:
                text = " ".join(str(s.get("text", "")).split())
                if text and text not in snippets:
                    snippets.append(text)
            if not snippets:
                count(stats, "no_snippets")
            examples.append({"id": q["id"], "question": q["body"].strip(), "context": " ".join(snippets),
                             "answer": answer, "source": "bioasq"})
    examples = unique_by(examples, lambda ex: ex["id"], stats, "duplicate_id_dropped")
    stats["kept"] = len(examples)
    return examples


# ---- PubMedQA PQA-L ---------------------------------------------------------------------------
def paper_split(pmids: Sequence[str], seed: int = 42, test_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """(train, test) PMIDs of the second paper's PubMedQA split, in input order.

    The authors' code splits the Hub's ``qiaojin/PubMedQA`` ``pqa_labeled`` rows with
    ``datasets.Dataset.train_test_split(test_size=0.2, seed=42)``; that method draws
    ``numpy.random.default_rng(seed).permutation(n)`` and sends the first ``ceil(fraction * n)``
    positions to test. We do the same over ``pmids`` in file order (the Hub rows are
    ``ori_pqal.json`` in file order: both start with PMID 21645374). No hashing, no set order:
    the same ids and seed give the same split on any machine."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"pubmedqa_test_fraction must be in (0, 1), not {test_fraction}")
    if len(set(pmids)) != len(pmids):
        raise ValueError("paper_split needs distinct ids")
    n_test = math.ceil(test_fraction * len(pmids))
    order = np.random.default_rng(seed).permutation(len(pmids))
    in_test = np.zeros(len(pmids), dtype=bool)
    in_test[order[:n_test]] = True
    return ([p for p, t in zip(pmids, in_test) if not t], [p for p, t in zip(pmids, in_test) if t])


def split_digest(ids: Iterable[str]) -> str:
    """A short fingerprint of a set of test ids: two runs scored the same items iff it matches."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:12]


def _read_pqal(path: Path) -> dict[str, dict[str, Any]]:
    items = read_json(path)
    if not isinstance(items, dict) or not items:
        raise ValueError(f"{path}: not PubMedQA PQA-L (expected a non-empty object keyed by PMID)")
    for pmid, item in items.items():
        if not isinstance(item, dict):
            raise ValueError(f"{path}: record {pmid}: expected an object, got {type(item).__name__}")
        if not isinstance(item.get("QUESTION"), str) or not item["QUESTION"].strip():
            raise ValueError(f"{path}: record {pmid}: missing or empty 'QUESTION'")
        contexts = item.get("CONTEXTS")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise ValueError(f"{path}: record {pmid}: 'CONTEXTS' must be a list of strings")
        label = item.get("final_decision")
        if not isinstance(label, str) or label.strip().lower() not in PQAL_LABELS:
            raise ValueError(f"{path}: record {pmid}: 'final_decision' must be one of {PQAL_LABELS}, "
                             f"not {label!r}")
    return items


def load_pubmedqa(pqal: PathSpec, test_ids: PathSpec | None, split: str, binary: bool = True,
                  stats: dict[str, Any] | None = None, *, pubmedqa_split: str = "official", seed: int = 42,
                  test_fraction: float = 0.2) -> list[Example]:
    """PubMedQA PQA-L, the ``split`` part ("train" or "test") of the ``pubmedqa_split`` scheme:
    ``official`` (test = the ids of ``test_ids``, ``test_ground_truth.json``) or ``paper``
    (:func:`paper_split` of all items with ``seed`` and ``test_fraction``; ``test_ids`` unused).
    "maybe" items are dropped after splitting when ``binary``. Carve validation from "train"
    with :func:`train_validation`."""
    if split not in ("train", "test"):
        raise ValueError(f"PubMedQA PQA-L has parts train and test, not {split!r}")
    if pubmedqa_split not in PUBMEDQA_SPLITS:
        raise ValueError(f"pubmedqa_split must be one of {PUBMEDQA_SPLITS}, not {pubmedqa_split!r}")
    stats = {} if stats is None else stats
    path = resolve_paths(pqal)[0]
    items = _read_pqal(path)
    truth: dict[str, str] = {}
    if pubmedqa_split == "official":
        if test_ids is None:
            raise ValueError("pubmedqa_split 'official' needs the test ids file (paths.test_ids: "
                             "test_ground_truth.json)")
        truth_path = resolve_paths(test_ids)[0]
        truth = read_json(truth_path)
        if not isinstance(truth, dict):
            raise ValueError(f"{truth_path}: expected an object PMID → label")
        missing = [pmid for pmid in truth if pmid not in items]
        if missing:
            raise ValueError(f"{len(missing)} test ids of {truth_path} are not in {path} (e.g. {missing[0]})")
        test = set(truth)
    else:
        test = set(paper_split(list(items), seed, test_fraction)[1])
        stats.update(pubmedqa_split_seed=seed, pubmedqa_test_fraction=test_fraction)
    stats["pubmedqa_split"] = pubmedqa_split
    stats["pubmedqa_split_digest"] = split_digest(test)
    examples = []
    for pmid, item in items.items():  # file order, so the examples' order is stable too
        if (pmid in test) != (split == "test"):
            continue
        count(stats, "read")
        label = item["final_decision"].strip().lower()
        if pmid in truth and str(truth[pmid]).strip().lower() != label:
            count(stats, "label_disagrees_with_ground_truth")  # the ground-truth file wins
            label = str(truth[pmid]).strip().lower()
        if binary and label == "maybe":
            count(stats, "maybe_dropped")
            continue
        examples.append({"id": pmid, "question": item["QUESTION"].strip(),
                         "context": " ".join(" ".join(c.split()) for c in item["CONTEXTS"]),
                         "answer": label, "source": "pubmedqa"})
    stats["kept"] = len(examples)
    return examples


# ---- splits, overlap, mixing ------------------------------------------------------------------
def train_validation(examples: list[Example], split: str, val_fraction: float, seed: int, balance: str,
                     stats: dict[str, Any]) -> list[Example]:
    """The ``train`` (class-balanced as asked) or ``validation`` (natural distribution) part."""
    train, val = split_off(examples, val_fraction, seed=seed, stratify="answer")
    if split == "validation":
        return val
    balanced = balance_classes(train, "answer", balance, seed=seed)
    if balance != "none":
        count(stats, "balance_added" if balance == "upsample" else "balance_removed", abs(len(balanced) - len(train)))
    return balanced


def mix_yesno(bioasq: list[Example], pubmedqa: list[Example], bioasq_share: float, seed: int = 42,
              total: int | None = None, stats: dict[str, Any] | None = None) -> list[Example]:
    """The SFT mixture: ``bioasq_share`` of the examples from BioASQ (0.65–0.70 in the paper)."""
    mixed, counts = mix_sources(bioasq, pubmedqa, bioasq_share, seed=seed, total=total)
    if stats is not None:
        stats.update(mix_bioasq=counts["first"], mix_pubmedqa=counts["second"])
    return mixed


# ---- task loaders: (split, paths, args, stats) → examples -------------------------------------
def _pubmedqa_parts(paths: FileRoles, args: Mapping[str, Any], stats: dict[str, Any],
                    want_train: bool) -> tuple[list[Example], list[Example]]:
    """(train, test) of PubMedQA under the task's split scheme; ``stats`` counts the part asked
    for (train when ``want_train``, else test). Train is not yet checked against test."""
    scheme = args.get("pubmedqa_split", "official")
    kw = dict(binary=args.get("binary", True), pubmedqa_split=scheme, seed=args.get("pubmedqa_split_seed", 42),
              test_fraction=args.get("pubmedqa_test_fraction", 0.2))
    test_ids = paths["test_ids"] if scheme == "official" else None  # paper: no ids file needed
    test = load_pubmedqa(paths["pqal"], test_ids, "test", stats={} if want_train else stats, **kw)
    train = load_pubmedqa(paths["pqal"], test_ids, "train", stats=stats, **kw) if want_train else []
    return train, test


def task_bioasq_yesno(split: str, paths: FileRoles, args: Mapping[str, Any], stats: dict[str, Any]) -> list[Example]:
    """Loader ``bioasq_yesno``: test = the golden batches (``paths.test``); train/validation from
    ``paths.train`` minus any test question, then carved and class-balanced."""
    check_loader_args("bioasq_yesno", args, _BIOASQ_ARGS)
    if split == "test":
        return load_bioasq_yesno(paths["test"], stats)
    train = load_bioasq_yesno(paths["train"], stats)
    if "test" in paths:  # training sets of later years contain earlier test batches
        train = drop_overlap(train, load_bioasq_yesno(paths["test"], {}), stats)
    return train_validation(train, split, args.get("val_fraction", 0.1), args.get("seed", 42),
                            args.get("balance", "downsample"), stats)


def task_pubmedqa(split: str, paths: FileRoles, args: Mapping[str, Any], stats: dict[str, Any]) -> list[Example]:
    """Loader ``pubmedqa``: the ``pubmedqa_split`` scheme's test part, or train/validation carved
    from its train part after removing any test question (same id or text)."""
    check_loader_args("pubmedqa", args, _PUBMEDQA_ARGS)
    train, test = _pubmedqa_parts(paths, args, stats, want_train=split != "test")
    if split == "test":
        return test
    train = drop_overlap(train, test, stats)
    return train_validation(train, split, args.get("val_fraction", 0.1), args.get("seed", 42),
                            args.get("balance", "none"), stats)


def _prefixed(prefix: str, counts: Mapping[str, Any]) -> dict[str, Any]:
    # the split keys already name their source ("pubmedqa_split"): no "pubmedqa_pubmedqa_split"
    return {(k if k.startswith(prefix) else prefix + k): v for k, v in counts.items()}


def task_yesno_mix(split: str, paths: FileRoles, args: Mapping[str, Any], stats: dict[str, Any]) -> list[Example]:
    """Loader ``yesno_mix``: test and validation hold both sources whole (reported per source);
    train is the BioASQ-share mixture. Each source's training data loses every question of the
    whole mixed test set (either source), by id or text, before validation is carved."""
    check_loader_args("yesno_mix", args, _MIX_ARGS)
    b_stats: dict[str, Any] = {}
    p_stats: dict[str, Any] = {}
    seed = args.get("seed", 42)
    if split == "test":
        bioasq = load_bioasq_yesno(paths["test"], b_stats)
        pubmed = _pubmedqa_parts(paths, args, p_stats, want_train=False)[1]
    else:
        b_test = load_bioasq_yesno(paths["test"], {}) if "test" in paths else []
        p_train, p_test = _pubmedqa_parts(paths, args, p_stats, want_train=True)
        both_tests = b_test + p_test
        bioasq = drop_overlap(load_bioasq_yesno(paths["train"], b_stats), both_tests, b_stats)
        pubmed = drop_overlap(p_train, both_tests, p_stats)
        val_fraction = args.get("val_fraction", 0.1)
        bioasq = train_validation(bioasq, split, val_fraction, seed, args.get("bioasq_balance", "downsample"), b_stats)
        pubmed = train_validation(pubmed, split, val_fraction, seed, "none", p_stats)
    stats.update(_prefixed("bioasq_", b_stats))
    stats.update(_prefixed("pubmedqa_", p_stats))
    if split != "train":  # validation and test: both sources whole, reported per source
        return bioasq + pubmed
    return mix_yesno(bioasq, pubmed, args.get("bioasq_share", 0.7), seed=seed, total=args.get("total"), stats=stats)


# ---- parsing generations ----------------------------------------------------------------------
_FIRST_WORD = re.compile(r"^[\W_]*(yes|no)\b", re.IGNORECASE)
_ANY_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yesno(text: str) -> str | None:
    """The answer in a generation: its first word when that is yes/no, else the one of yes/no
    that appears alone in the first line; ``None`` (unparseable, counted as wrong) otherwise."""
    text = text.strip()
    m = _FIRST_WORD.match(text)
    if m:
        return m.group(1).lower()
    first_line = text.split("\n", 1)[0]
    found = {w.lower() for w in _ANY_WORD.findall(first_line)}
    return found.pop() if len(found) == 1 else None
