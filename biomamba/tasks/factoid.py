"""Factoid QA (the first paper): BioASQ 4b/5b/6b factoid sets in BioBERT's SQuAD format.

One question has several contexts (one per snippet), ids ``<24-char question id>_NNN``. Test
files carry no answers; gold synonyms come from the golden files (raw BioASQ JSON). The model
answers each context; the candidates of all contexts are merged into one ranked list of at
most five (duplicates under the scoring rule merged), scored by strict/lenient accuracy and MRR.

* Evaluation example: ``{"id", "question", "contexts": [{"id", "text"}], "answers": [synonyms]}``.
* SFT example (training file with answer spans): ``{"id", "question", "context", "answer"}``,
  one per (question, context); validation is carved by question, so one question's contexts
  never straddle train and validation.
* Test leakage: a later year's training file holds most earlier test questions (the 7b file has
  112 of the 161 4b test questions and 110 of the 150 5b ones). Given the test files,
  :func:`load_factoid_train` removes every training question that is a test question, by id or
  by normalised text, before validation is carved, and counts what it removed.
* Per-year files (the paper's 4b/5b/6b training sets) are named through the task's ``paths``
  roles (``train``, ``test``, ``golden``: ``defs/bioasq_factoid.yaml``); :func:`task_bioasq_factoid`
  is the loader.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from biomamba.eval.metrics import MAX_FACTOID_CANDIDATES, flatten_synonyms, normalize_answer
from biomamba.tasks.common import (Example, FileRoles, PathSpec, count, drop_overlap, read_json, resolve_paths,
                                   split_off)

QID_LEN = 24


def question_id(context_id: str) -> str:
    """``56c073fcef6e394741000020_003`` → ``56c073fcef6e394741000020``."""
    qid, sep, suffix = context_id.rpartition("_")
    if not sep or not suffix.isdigit():
        raise ValueError(f"factoid context id {context_id!r} is not <question id>_NNN")
    return qid


def _read(path: Path, key: str, shape: str) -> list[Any]:
    """``path``'s top-level ``key`` list; anything else is an error naming the file."""
    try:
        doc = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"{path}: not {shape} (no top-level {key!r} list)")
    return doc[key]


def _squad_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(context, qa) for every record of a SQuAD-format file; a malformed record is an error
    naming the file and the record (its place and, once known, its id)."""
    for i, article in enumerate(_read(path, "data", "a SQuAD-format file")):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"{path}: data[{i}] has no 'paragraphs' list")
        for j, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise ValueError(f"{where} has no 'context' text")
            if not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{where} has no 'qas' list")
            for k, qa in enumerate(paragraph["qas"]):
                at = f"{where}.qas[{k}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    raise ValueError(f"{at} has no 'id'")
                at += f" (id {qa['id']!r})"
                try:
                    question_id(qa["id"])
                except ValueError as exc:
                    raise ValueError(f"{at}: {exc}") from None
                if not isinstance(qa.get("question"), str) or not qa["question"].strip():
                    raise ValueError(f"{at} has no 'question' text")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) and isinstance(x.get("text"), str)
                                                            for x in answers):
                    raise ValueError(f"{at}: 'answers' must be a list of {{\"text\": ..., \"answer_start\": ...}}")
                yield paragraph["context"], qa


def load_squad_factoid(paths: PathSpec, stats: dict[str, int] | None = None) -> list[Example]:
    """Questions grouped with their contexts (file and context order kept), each with ``source``
    (its file's name less ``BioASQ-test-factoid-`` and the suffix: ``4b-1``). Answer spans, when
    the file has them (training sets), are kept per context as ``answers``."""
    stats = {} if stats is None else stats
    questions: "OrderedDict[str, Example]" = OrderedDict()
    for path in resolve_paths(paths):
        source = path.stem.replace("BioASQ-test-factoid-", "")
        for context, qa in _squad_records(path):
            qid = question_id(qa["id"])
            if qid not in questions:
                questions[qid] = {"id": qid, "question": qa["question"].strip(), "contexts": [],
                                  "source": source}
                count(stats, "questions")
            q = questions[qid]
            if any(c["id"] == qa["id"] for c in q["contexts"]):
                count(stats, "duplicate_context_dropped")
                continue
            q["contexts"].append({"id": qa["id"], "text": context,
                                  "answers": [x["text"] for x in qa.get("answers", [])]})
            count(stats, "contexts")
    return list(questions.values())


def load_factoid_golden(paths: PathSpec) -> dict[str, list[str]]:
    """Question id → gold synonyms (all synonym lists of ``exact_answer`` flattened)."""
    gold: dict[str, list[str]] = {}
    for path in resolve_paths(paths):
        for i, q in enumerate(_read(path, "questions", "a BioASQ golden file")):
            if not isinstance(q, dict):
                raise ValueError(f"{path}: questions[{i}] is not an object")
            if q.get("type") != "factoid":
                continue
            if not isinstance(q.get("id"), str):
                raise ValueError(f"{path}: questions[{i}] (a factoid question) has no 'id'")
            gold[q["id"]] = flatten_synonyms(q.get("exact_answer"))
    return gold


def load_factoid_test(squad: PathSpec, golden: PathSpec, stats: dict[str, int] | None = None) -> list[Example]:
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


def load_factoid_train(paths: PathSpec, split: str = "train", val_fraction: float = 0.1, seed: int = 42,
                       stats: dict[str, int] | None = None, test: PathSpec | None = None) -> list[Example]:
    """SFT examples from SQuAD-format training file(s): one per (question, context) with the
    first answer span as target; ``split`` "validation" is a seeded share of the questions.
    With ``test`` (the SQuAD-format test files), training questions that are test questions (same
    id or normalised text) are removed first, so neither split holds one. Counted as yes/no counts
    them (``biomamba.tasks.common.drop_overlap``: ``overlap_with_test_dropped`` questions, of which
    ``overlap_same_id`` and ``overlap_same_question``), plus ``overlap_contexts_dropped``."""
    if split not in ("train", "validation"):
        raise ValueError(f"factoid training data has splits train and validation, not {split!r}")
    stats = {} if stats is None else stats
    questions = load_squad_factoid(paths, stats)
    if test is not None:  # one helper for every task: same id or same normalised question text
        contexts = sum(len(q["contexts"]) for q in questions)
        questions = drop_overlap(questions, load_squad_factoid(test), stats)
        count(stats, "overlap_contexts_dropped", contexts - sum(len(q["contexts"]) for q in questions))
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
    dropped, duplicates under :func:`normalize_answer` (the scoring rule) merged into their
    best-scored spelling."""
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


_LOADER_ARGS = frozenset({"val_fraction", "seed"})


def task_bioasq_factoid(split: str, paths: FileRoles, args: Mapping[str, Any],
                        stats: dict[str, Any]) -> list[Example]:
    """Loader ``bioasq_factoid`` (``(split, paths, args, stats) → examples``): "test" is the
    ``test`` files' questions with the ``golden`` synonyms; "train"/"validation" come from the
    ``train`` file(s), less every question of the ``test`` files when that role is given."""
    unknown = sorted(set(args) - _LOADER_ARGS)
    if unknown:  # a misspelt argument must not fall back to its default unnoticed
        raise ValueError(f"loader bioasq_factoid: unknown argument(s) {unknown}; known: {sorted(_LOADER_ARGS)}")
    if split == "test":
        return load_factoid_test(paths["test"], paths["golden"], stats)
    return load_factoid_train(paths["train"], split, args.get("val_fraction", 0.1), args.get("seed", 42), stats,
                              test=paths["test"] if "test" in paths else None)
