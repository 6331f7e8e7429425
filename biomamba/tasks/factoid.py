"""Factoid QA (the first paper): BioASQ 4b/5b/6b factoid sets in BioBERT's SQuAD format.

One question has several contexts (one per snippet), ids ``<24-char question id>_NNN``. Test
files carry no answers; gold synonyms come from the golden files (raw BioASQ JSON). The model
answers each context; the candidates of all contexts are merged into one ranked list of at
most five (case-insensitive duplicates merged), scored by strict/lenient accuracy and MRR.

* Evaluation example: ``{"id", "question", "contexts": [{"id", "text"}], "answers": [synonyms]}``.
* SFT example (training file with answer spans): ``{"id", "question", "context", "answer"}``,
  one per (question, context); validation is carved by question, so one question's contexts
  never straddle train and validation.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from biomamba.eval.metrics import MAX_FACTOID_CANDIDATES, flatten_synonyms, normalize_answer
from biomamba.tasks.common import Example, count, read_json, resolve_paths, split_off

QID_LEN = 24


def question_id(context_id: str) -> str:
    """``56c073fcef6e394741000020_003`` → ``56c073fcef6e394741000020``."""
    qid, sep, suffix = context_id.rpartition("_")
    if not sep or not suffix.isdigit():
        raise ValueError(f"factoid context id {context_id!r} is not <question id>_NNN")
    return qid


def load_squad_factoid(paths: Sequence[str | Path] | str | Path, stats: dict[str, int] | None = None) -> list[Example]:
    """Questions grouped with their contexts (file and context order kept), each with ``source``
    (its file's name less ``BioASQ-test-factoid-`` and the suffix: ``4b-1``). Answer spans, when
    the file has them (training sets), are kept per context as ``answers``."""
    stats = {} if stats is None else stats
    questions: "OrderedDict[str, Example]" = OrderedDict()
    for path in resolve_paths(paths):
        source = path.stem.replace("BioASQ-test-factoid-", "")
        for article in read_json(path)["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    qid = question_id(qa["id"])
                    if qid not in questions:
                        questions[qid] = {"id": qid, "question": qa["question"].strip(), "contexts": [],
                                          "source": source}
                        count(stats, "questions")
                    q = questions[qid]
                    if any(c["id"] == qa["id"] for c in q["contexts"]):
                        count(stats, "duplicate_context_dropped")
                        continue
                    q["contexts"].append({"id": qa["id"], "text": paragraph["context"],
                                          "answers": [a["text"] for a in qa.get("answers", [])]})
                    count(stats, "contexts")
    return list(questions.values())


def load_factoid_golden(paths: Sequence[str | Path] | str | Path) -> dict[str, list[str]]:
    """Question id → gold synonyms (all synonym lists of ``exact_answer`` flattened)."""
    gold: dict[str, list[str]] = {}
    for path in resolve_paths(paths):
        for q in read_json(path)["questions"]:
            if q.get("type") == "factoid":
                gold[q["id"]] = flatten_synonyms(q.get("exact_answer"))
    return gold


def load_factoid_test(squad: Sequence[str | Path] | str | Path, golden: Sequence[str | Path] | str | Path,
                      stats: dict[str, int] | None = None) -> list[Example]:
    """Test questions with their gold synonyms. A question with no gold cannot be scored: it is
    dropped and counted (``no_gold_dropped``)."""
    stats = {} if stats is None else stats
    gold = load_factoid_golden(golden)
    out = []
    for q in load_squad_factoid(squad, stats):
        synonyms = gold.get(q["id"])
        if not synonyms:
            count(stats, "no_gold_dropped")
            continue
        out.append({**q, "answers": synonyms})
    stats["kept"] = len(out)
    return out


def load_factoid_train(paths: Sequence[str | Path] | str | Path, split: str = "train", val_fraction: float = 0.1,
                       seed: int = 42, stats: dict[str, int] | None = None) -> list[Example]:
    """SFT examples from a SQuAD-format training set: one per (question, context) with the
    first answer span as target; ``split`` "validation" is a seeded share of the questions."""
    stats = {} if stats is None else stats
    questions = load_squad_factoid(paths, stats)
    train, val = split_off(questions, val_fraction, seed=seed)
    chosen = val if split == "validation" else train
    out = []
    for q in chosen:
        for c in q["contexts"]:
            if not c["answers"]:
                count(stats, "context_without_answer_dropped")
                continue
            out.append({"id": c["id"], "question": q["question"], "context": c["text"], "answer": c["answers"][0],
                        "answers": sorted(set(c["answers"]))})
    stats["kept"] = len(out)
    return out


def merge_candidates(per_context: Sequence[Sequence[tuple[str, float]]], k: int = MAX_FACTOID_CANDIDATES) -> list[str]:
    """Merge the (answer, score) candidates of all contexts of one question into one ranked list
    of at most ``k``: by score (higher first; ties keep context order, then rank), empty answers
    dropped, case-insensitive duplicates merged into their best-scored spelling."""
    flat: list[tuple[float, int, str]] = []
    order = 0
    for cands in per_context:
        for text, score in cands:
            flat.append((-float(score), order, text.strip()))
            order += 1
    flat.sort()
    out: list[str] = []
    seen: set[str] = set()
    for _, _, text in flat:
        key = normalize_answer(text)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) == k:
            break
    return out


def expand_contexts(example: Example) -> list[dict[str, Any]]:
    """One renderable example per context of a grouped question."""
    return [{"id": c["id"], "question": example["question"], "context": c["text"]} for c in example["contexts"]]
