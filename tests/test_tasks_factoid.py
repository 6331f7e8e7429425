"""Factoid QA (issue 20, items 1 and 10): train/test overlap removed by id and by normalised
question text and counted, year-specific training files through ``paths``, errors that name the
file and record, and answers scored by BioASQ's rule (lower-cased exact match, nothing else)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from biomamba.eval.metrics import factoid_metrics, normalize_answer
from biomamba.tasks import get_task
from biomamba.tasks.factoid import (load_factoid_golden, load_factoid_test, load_factoid_train, load_squad_factoid,
                                    merge_candidates, question_id, task_bioasq_factoid)

OVERLAP_COUNTS = ("overlap_with_test_dropped", "overlap_same_id", "overlap_same_question", "overlap_contexts_dropped")


def _norm(text: str) -> str:
    """An independent oracle for "the same question": lower-cased, whitespace collapsed, any
    non-word characters stripped at the ends (a superset of punctuation: a stricter check)."""
    return re.sub(r"^[\W_]+|[\W_]+$", "", " ".join(text.lower().split()))


# ---- synthetic files in BioBERT's SQuAD shape -----------------------------------------------------
def _qid(n: int) -> str:
    return f"{n:024x}"  # 24 hex characters, like BioASQ's ids


def _squad(questions: list[tuple[str, str, list[str]]], answer: str | None = "BRCA1") -> dict[str, Any]:
    """One article, one paragraph per (question, context) as BioBERT writes them; ``answer`` None
    writes a test file (no answers key)."""
    paragraphs = []
    for qid, question, contexts in questions:
        for i, context in enumerate(contexts):
            qa: dict[str, Any] = {"id": f"{qid}_{i:03d}", "question": question}
            if answer is not None:
                qa["answers"] = [{"text": answer, "answer_start": context.index(answer)}]
            paragraphs.append({"context": context, "qas": [qa]})
    return {"version": "BioASQ6b", "data": [{"title": "BioASQ6b", "paragraphs": paragraphs}]}


def _golden(answers: dict[str, list[list[str]]]) -> dict[str, Any]:
    return {"questions": [{"id": qid, "type": "factoid", "body": "q", "exact_answer": syn, "snippets": []}
                          for qid, syn in answers.items()]}


def _write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


CTX = ["BRCA1 is mutated in this cancer.", "Carriers of BRCA1 variants were studied."]
TEST_1 = [(_qid(1), "Which gene is mutated in hereditary breast cancer?", CTX)]
TEST_2 = [(_qid(2), "What is the target of trastuzumab?", CTX), (_qid(3), "Is IL-6 a cytokine?", CTX)]
TRAIN = [
    (_qid(1), "A reworded question with a test question's id", CTX),          # leaks by id
    (_qid(11), "  WHICH gene is mutated in  hereditary breast cancer ? ", CTX),  # leaks by text
    (_qid(12), "Is IL6 a cytokine?", CTX),  # differs from a test question inside: not the same question
    (_qid(13), "Which protein binds BRCA1?", CTX),
]
LEAKED = {_qid(1), _qid(11)}


@pytest.fixture
def overlapping(tmp_path: Path) -> Path:
    """A training file holding one test question by id and one by text, and two test batches."""
    root = tmp_path / "bioasq" / "factoid-squad"
    root.mkdir(parents=True)
    _write(root / "BioASQ-train-factoid-7b.json", _squad(TRAIN))
    _write(root / "BioASQ-test-factoid-4b-1.json", _squad(TEST_1, answer=None))
    _write(root / "BioASQ-test-factoid-4b-2.json", _squad(TEST_2, answer=None))
    _write(root / "4B1_golden.json", _golden({_qid(1): [["BRCA1"]]}))
    _write(root / "4B2_golden.json", _golden({_qid(2): [["HER2"], ["ERBB2"]], _qid(3): [["yes"]]}))
    return root


def _question_ids(examples: list[dict[str, Any]]) -> set[str]:
    return {question_id(ex["id"]) for ex in examples}


def test_training_questions_in_the_test_set_are_removed_and_counted(overlapping: Path):
    train_file, tests = overlapping / "BioASQ-train-factoid-7b.json", overlapping / "BioASQ-test-factoid-*.json"
    # the fixture really leaks: without the guard both leaked questions are trained on
    assert LEAKED <= _question_ids(load_factoid_train(train_file, "train", val_fraction=0.0))
    stats: dict[str, int] = {}
    train = load_factoid_train(train_file, "train", val_fraction=0.5, stats=stats, test=tests)
    val = load_factoid_train(train_file, "validation", val_fraction=0.5, test=tests)
    kept = _question_ids(train) | _question_ids(val)
    assert kept == {_qid(12), _qid(13)} and not _question_ids(train) & _question_ids(val)
    test = load_squad_factoid(tests)
    assert not kept & {q["id"] for q in test}
    assert not {_norm(ex["question"]) for ex in train + val} & {_norm(q["question"]) for q in test}
    assert stats == {"questions": 4, "contexts": 8, "overlap_with_test_dropped": 2, "overlap_same_id": 1,
                     "overlap_same_question": 1, "overlap_contexts_dropped": 4, "kept": len(train)}
    assert len(train) + len(val) == 4  # two questions of two contexts each remain


def test_no_overlap_is_counted_as_zero(overlapping: Path):
    stats: dict[str, int] = {}
    load_factoid_train(overlapping / "BioASQ-train-factoid-7b.json", test=overlapping / "BioASQ-test-factoid-4b-2.json",
                       stats=stats)
    assert {k: stats[k] for k in OVERLAP_COUNTS} == dict.fromkeys(OVERLAP_COUNTS, 0)  # the check was made


def test_loader_guards_train_and_validation_and_counts(overlapping: Path):
    # the task loader as the registry calls it: (split, file roles, loader args, stats)
    roles = {"train": str(overlapping / "BioASQ-train-factoid-7b.json"),
             "test": str(overlapping / "BioASQ-test-factoid-*.json"), "golden": str(overlapping / "4B*_golden.json")}
    for split in ("train", "validation"):
        stats: dict[str, int] = {}
        examples = task_bioasq_factoid(split, roles, {"val_fraction": 0.5, "seed": 1}, stats)
        assert examples and not _question_ids(examples) & LEAKED
        assert stats["overlap_with_test_dropped"] == 2 and stats["overlap_contexts_dropped"] == 4
    test = task_bioasq_factoid("test", roles, {}, {})
    assert [q["id"] for q in test] == [_qid(1), _qid(2), _qid(3)] and test[1]["answers"] == ["HER2", "ERBB2"]
    unguarded = task_bioasq_factoid("train", {"train": roles["train"]}, {"val_fraction": 0.0}, {})
    assert LEAKED <= _question_ids(unguarded)  # no test role: nothing to guard against
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['val_fracton'\]"):
        task_bioasq_factoid("train", roles, {"val_fracton": 0.2}, {})


def test_task_load_and_sft_counts_remove_the_overlap(overlapping: Path):
    # Task.load's stats dict is what `biomamba sft` writes to sft_data.json ("counts")
    task = get_task("bioasq_factoid")
    stats: dict[str, int] = {}
    train = task.load("train", data_root=overlapping.parent.parent, stats=stats, val_fraction=0.0)
    assert not _question_ids(train) & LEAKED
    assert stats["overlap_with_test_dropped"] == 2 and stats["overlap_contexts_dropped"] == 4


def test_year_specific_training_files_through_paths(tmp_path: Path):
    """The paper's per-year sets: a recipe names each year's files through the task's ``paths``."""
    root = tmp_path / "bioasq" / "factoid-squad"
    root.mkdir(parents=True)
    four_b = [(_qid(40 + i), f"4b training question {i}?", CTX) for i in range(3)]
    five_b = four_b + [(_qid(50), "5b training question?", CTX), (_qid(1), "4b's first test question", CTX)]
    _write(root / "BioASQ-train-factoid-4b.json", _squad(four_b))
    _write(root / "BioASQ-train-factoid-5b.json", _squad(five_b))  # a later year repeats earlier ones
    _write(root / "BioASQ-test-factoid-4b-1.json", _squad(TEST_1, answer=None))
    _write(root / "BioASQ-test-factoid-5b-1.json", _squad(TEST_2, answer=None))
    _write(root / "4B1_golden.json", _golden({_qid(1): [["BRCA1"]]}))
    _write(root / "5B1_golden.json", _golden({_qid(2): [["HER2"]], _qid(3): [["yes"]]}))
    task = get_task("bioasq_factoid")
    year = {"train": "bioasq/factoid-squad/BioASQ-train-factoid-4b.json",
            "test": "bioasq/factoid-squad/BioASQ-test-factoid-4b-*.json",
            "golden": "bioasq/factoid-squad/4B*_golden.json"}
    train = task.load("train", paths=year, data_root=tmp_path, val_fraction=0.0)
    assert _question_ids(train) == {q[0] for q in four_b} and len(train) == 6
    test = task.load("test", paths=year, data_root=tmp_path)
    assert [(q["id"], q["source"], q["answers"]) for q in test] == [(_qid(1), "4b-1", ["BRCA1"])]
    # several training files (a list or a glob) are merged by question id
    both = task.load("train", paths={"train": ["bioasq/factoid-squad/BioASQ-train-factoid-4b.json",
                                               "bioasq/factoid-squad/BioASQ-train-factoid-5b.json"],
                                     "test": "bioasq/factoid-squad/BioASQ-test-factoid-5b-*.json"},
                     data_root=tmp_path, val_fraction=0.0)
    assert _question_ids(both) == {q[0] for q in five_b} and len(both) == 2 * len(five_b)
    # the guard removes what the named test files hold: the 5b file's copy of a 4b test question
    stats: dict[str, int] = {}
    guarded = load_factoid_train(root / "BioASQ-train-factoid-5b.json", val_fraction=0.0, stats=stats,
                                 test=root / "BioASQ-test-factoid-4b-1.json")
    assert _qid(1) not in _question_ids(guarded) and stats["overlap_same_id"] == 1
    unguarded = load_factoid_train(root / "BioASQ-train-factoid-5b.json", val_fraction=0.0,
                                   test=root / "BioASQ-test-factoid-5b-1.json")
    assert _qid(1) in _question_ids(unguarded)  # not a 5b test question


BAD_RECORDS = [
    ({"version": "x"}, "no top-level 'data' list"),
    ({"data": [{"title": "t"}]}, r"data\[0\] has no 'paragraphs' list"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\]\.paragraphs\[0\] has no 'context' text"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q?"}]}]}]}, r"qas\[0\] has no 'id'"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": _qid(1) + "_000", "question": "q?"},
                                                       {"id": _qid(2) + "_001", "question": " "}]}]}]},
     rf"qas\[1\] \(id '{_qid(2)}_001'\) has no 'question' text"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": _qid(1), "question": "q?"}]}]}]},
     r"qas\[0\] \(id '0+1'\): factoid context id .* is not <question id>_NNN"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": _qid(1) + "_000", "question": "q?",
                                                        "answers": ["BRCA1"]}]}]}]}, r"'answers' must be a list"),
]


@pytest.mark.parametrize("doc,message", BAD_RECORDS)
def test_bad_squad_records_name_file_and_record(tmp_path: Path, doc: dict[str, Any], message: str):
    path = _write(tmp_path / "BioASQ-train-factoid-bad.json", doc)
    with pytest.raises(ValueError, match=message) as err:
        load_factoid_train(path)
    assert str(path) in str(err.value)


def test_bad_json_and_golden_files_name_the_file(tmp_path: Path):
    broken = tmp_path / "BioASQ-test-factoid-4b-1.json"
    broken.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: not valid JSON")):
        load_squad_factoid(broken)
    test = _write(tmp_path / "BioASQ-test-factoid-4b-2.json", _squad(TEST_1, answer=None))
    gold = _write(tmp_path / "4B1_golden.json", {"answers": []})
    with pytest.raises(ValueError, match=re.escape(f"{gold}: not a BioASQ golden file")):
        load_factoid_test(test, gold)
    no_id = _write(tmp_path / "4B2_golden.json", {"questions": [{"type": "yesno"}, {"type": "factoid", "body": "q"}]})
    with pytest.raises(ValueError, match=re.escape(f"{no_id}: questions[1] (a factoid question) has no 'id'")):
        load_factoid_golden(no_id)
    not_a_record = _write(tmp_path / "4B3_golden.json", {"questions": ["q"]})
    with pytest.raises(ValueError, match=re.escape(f"{not_a_record}: questions[0] is not an object")):
        load_factoid_golden(not_a_record)
    with pytest.raises(ValueError, match="splits train and validation"):
        load_factoid_train(test, split="test")


# ---- the real 7b training file against the real 4b/5b test sets --------------------------------------
def test_real_7b_training_file_keeps_no_4b_or_5b_test_question(shared_data: Path):
    root = shared_data / "bioasq" / "factoid-squad"
    train_file = root / "BioASQ-train-factoid-7b.json"
    tests = sorted(root.glob("BioASQ-test-factoid-*.json"))
    if not train_file.is_file() or not tests:
        pytest.skip(f"{root} lacks BioASQ-train-factoid-7b.json or the BioASQ-test-factoid-*.json files")
    test = load_squad_factoid(tests)
    train_ids = {q["id"] for q in load_squad_factoid(train_file)}
    for year, leaked in (("4b", 112), ("5b", 110)):  # as the shared/data README counts them
        assert len(train_ids & {q["id"] for q in test if q["source"].startswith(year)}) == leaked
    stats: dict[str, int] = {}
    train = load_factoid_train(train_file, "train", stats=stats, test=tests)
    val = load_factoid_train(train_file, "validation", test=tests)
    kept = _question_ids(train) | _question_ids(val)
    assert not kept & {q["id"] for q in test}
    assert not {_norm(ex["question"]) for ex in train + val} & {_norm(q["question"]) for q in test}
    assert stats["overlap_with_test_dropped"] == 222 and len(kept) == 530 - 222
    assert len(train) + len(val) == 4231 - stats["overlap_contexts_dropped"]


# ---- scoring: BioASQ's rule -------------------------------------------------------------------------
def test_answers_match_ignoring_case_only():
    gold = [["human african  trypanosomiasis"],  # a real 6b gold answer (issue 20), two spaces inside
            ["Human African  Trypanosomiasis"],
            ["BRCA1", "breast cancer 1"],
            ["Factor Xa"],
            [" fewer than 100"]]  # a real 4B4 gold synonym, leading space
    cands = [["human african trypanosomiasis"],   # one space: a different string, no match
             ["p53", "human african  trypanosomiasis"],  # same string but for case: rank 2
             ["Breast Cancer 1"],                 # case-insensitive: rank 1
             ["factor Xa.", "factor-xa", "FACTOR XA"],  # punctuation counts: rank 3
             ["fewer than 100"]]                  # surrounding space counts too
    m = factoid_metrics(gold, cands)
    assert m["strict_accuracy"] == pytest.approx(1 / 5)
    assert m["lenient_accuracy"] == pytest.approx(3 / 5)
    assert m["mrr"] == pytest.approx((0 + 1 / 2 + 1 + 1 / 3 + 0) / 5)
    assert normalize_answer(" TNF  Alpha ") == " tnf  alpha "
    # duplicates among candidates are merged under the same rule
    assert merge_candidates([[("TNF alpha", 0.9)], [("tnf ALPHA", 0.8), ("TNF  alpha", 0.7)]]) == ["TNF alpha",
                                                                                                 "TNF  alpha"]


def test_real_gold_with_inner_double_space_scores_strictly(shared_data: Path):
    golden = sorted((shared_data / "bioasq" / "golden").glob("7B1_golden.json"))
    if not golden:
        pytest.skip(f"{shared_data / 'bioasq' / 'golden'} has no 7B1_golden.json")
    synonyms = load_factoid_golden(golden)["5be48987133db5eb7800001c"]
    assert "Kaposi's  sarcoma" in synonyms  # two spaces, as in the file
    assert factoid_metrics([synonyms], [["kaposi's  sarcoma"]])["strict_accuracy"] == 1.0
    assert factoid_metrics([synonyms], [["Kaposi's sarcoma"]])["strict_accuracy"] == 0.0
