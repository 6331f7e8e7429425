"""Yes/no QA: BioASQ raw JSON and PubMedQA PQA-L (binary), and their mixture.

An example is ``{"id", "question", "context", "answer": "yes"|"no", "source"}``.

* BioASQ (raw JSON, ``{"questions": [...]}``): yes/no questions, snippets joined as context
  (identical snippets once), ``exact_answer`` lower-cased ("Yes" occurs). Questions repeat
  across yearly training sets: kept once per id. Training questions that also appear in the
  test files (same id or same question text) are removed and counted.
* PubMedQA PQA-L (``ori_pqal.json``, 1,000 items keyed by PMID): the official test split is
  the 500 ids of ``test_ground_truth.json``; the other 500 are training data. Binary = "maybe"
  dropped (counted).
* Validation is carved from training data (stratified by answer, seed 42), never from test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from biomamba.tasks.common import (Example, balance_classes, count, mix_sources, read_json, resolve_paths,
                                   split_off, unique_by)

LABELS = ("yes", "no")


def _norm_question(text: str) -> str:
    return " ".join(text.lower().split())


def load_bioasq_yesno(paths: Sequence[str | Path] | str | Path, stats: dict[str, int] | None = None) -> list[Example]:
    """Yes/no questions from BioASQ raw JSON files (training sets or golden test batches)."""
    stats = {} if stats is None else stats
    examples: list[Example] = []
    for path in resolve_paths(paths):
        for q in read_json(path).get("questions", []):
            if q.get("type") != "yesno":
                continue
            count(stats, "read")
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


def load_pubmedqa(pqal: str | Path, test_ids: str | Path, split: str, binary: bool = True,
                  stats: dict[str, int] | None = None) -> list[Example]:
    """PubMedQA PQA-L: ``split`` "test" is the official 500-id test set, "train" the rest
    (carve validation from it with :func:`split_off`)."""
    if split not in ("train", "test"):
        raise ValueError(f"PubMedQA PQA-L has splits train and test, not {split!r}")
    stats = {} if stats is None else stats
    items: dict[str, Any] = read_json(resolve_paths(pqal)[0])
    truth: dict[str, str] = read_json(resolve_paths(test_ids)[0])
    missing = [pmid for pmid in truth if pmid not in items]
    if missing:
        raise ValueError(f"{len(missing)} test ids of {test_ids} are not in {pqal} (e.g. {missing[0]})")
    examples = []
    for pmid, item in items.items():
        if (pmid in truth) != (split == "test"):
            continue
        count(stats, "read")
        label = str(item["final_decision"]).strip().lower()
        if split == "test" and truth[pmid].strip().lower() != label:
            count(stats, "label_disagrees_with_ground_truth")  # the ground-truth file wins
            label = truth[pmid].strip().lower()
        if binary and label == "maybe":
            count(stats, "maybe_dropped")
            continue
        examples.append({"id": pmid, "question": item["QUESTION"].strip(),
                         "context": " ".join(" ".join(c.split()) for c in item["CONTEXTS"]),
                         "answer": label, "source": "pubmedqa"})
    stats["kept"] = len(examples)
    return examples


def drop_overlap(train: list[Example], test: list[Example], stats: dict[str, int]) -> list[Example]:
    """Training examples whose id or question text is in the test set are removed (BioASQ's
    later training sets contain earlier test batches)."""
    ids = {ex["id"] for ex in test}
    questions = {_norm_question(ex["question"]) for ex in test}
    kept = [ex for ex in train if ex["id"] not in ids and _norm_question(ex["question"]) not in questions]
    count(stats, "overlap_with_test_dropped", len(train) - len(kept))
    return kept


def train_validation(examples: list[Example], split: str, val_fraction: float, seed: int, balance: str,
                     stats: dict[str, int]) -> list[Example]:
    """The ``train`` (class-balanced as asked) or ``validation`` (natural distribution) part."""
    train, val = split_off(examples, val_fraction, seed=seed, stratify="answer")
    if split == "validation":
        return val
    balanced = balance_classes(train, "answer", balance, seed=seed)
    if balance != "none":
        count(stats, "balance_added" if balance == "upsample" else "balance_removed", abs(len(balanced) - len(train)))
    return balanced


def mix_yesno(bioasq: list[Example], pubmedqa: list[Example], bioasq_share: float, seed: int = 42,
              total: int | None = None, stats: dict[str, int] | None = None) -> list[Example]:
    """The SFT mixture: ``bioasq_share`` of the examples from BioASQ (0.65–0.70 in the paper)."""
    mixed, counts = mix_sources(bioasq, pubmedqa, bioasq_share, seed=seed, total=total)
    if stats is not None:
        stats.update(mix_bioasq=counts["first"], mix_pubmedqa=counts["second"])
    return mixed


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
