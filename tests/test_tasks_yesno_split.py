"""PubMedQA's two splits (``pubmedqa_split: official | paper``) and yes/no train/test overlap.

``paper`` is the second BioMamba paper's split: a seeded random 80/20 split of all PQA-L items
(seed 42), "maybe" dropped afterwards. ``official`` is the 500 ids of test_ground_truth.json.
Synthetic PQA-L-shaped files are written here; the real file is used when ../shared/data has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from biomamba.tasks import get_task, registry, yesno
from biomamba.tasks.common import normalize_question
from biomamba.tasks.yesno import load_pubmedqa, paper_split, split_digest

N_ITEMS = 40
PMIDS = [str(10000 + 37 * i) for i in range(N_ITEMS)]
# paper_split(PMIDS) with seed 42, pinned: numpy's PCG64 permutation (what the authors' datasets
# call draws) must not drift between machines or versions, or "the paper's split" changes
PAPER_TEST_SEED42 = ["10148", "10185", "10259", "10592", "10666", "11184", "11369", "11443"]


def _label(i: int) -> str:
    return "maybe" if i % 5 == 4 else ("yes" if i % 3 else "no")  # 8 maybe, 32 yes/no


def _pqal(tmp_path: Path, questions: dict[str, str] | None = None) -> dict[str, str]:
    """ori_pqal.json (40 items, 8 "maybe") and an official test_ground_truth.json (every other
    id); ``questions`` replaces the question text of some PMIDs. Returns the task's file roles."""
    questions = questions or {}
    items = {pmid: {"QUESTION": questions.get(pmid, f"Does drug {i} change outcome {i}?"),
                    "CONTEXTS": [f"Background {i}.", f"Results  {i}\nshown."], "LABELS": ["B", "R"],
                    "final_decision": _label(i), "LONG_ANSWER": "..."}
             for i, pmid in enumerate(PMIDS)}
    truth = {pmid: _label(i) for i, pmid in enumerate(PMIDS) if i % 2 == 0}
    (tmp_path / "ori_pqal.json").write_text(json.dumps(items))
    (tmp_path / "test_ground_truth.json").write_text(json.dumps(truth))
    return {"pqal": str(tmp_path / "ori_pqal.json"), "test_ids": str(tmp_path / "test_ground_truth.json")}


def _bioasq(path: Path, rows: list[tuple[str, str, str]]) -> str:
    """Raw BioASQ JSON with yes/no questions (id, body, answer)."""
    qs = [{"id": qid, "type": "yesno", "body": body, "exact_answer": answer,
           "snippets": [{"text": f"Snippet about {qid}."}]} for qid, body, answer in rows]
    path.write_text(json.dumps({"questions": qs}))
    return str(path)


def test_registry_dispatches_to_yesno_loaders():
    assert registry.LOADERS["pubmedqa"] is yesno.task_pubmedqa
    assert registry.LOADERS["yesno_mix"] is yesno.task_yesno_mix
    assert registry.LOADERS["bioasq_yesno"] is yesno.task_bioasq_yesno


# ---- the paper split on synthetic PQA-L ----------------------------------------------------------
def test_paper_split_sizes_disjoint_and_maybe_dropped_after(tmp_path):
    roles = _pqal(tmp_path)
    kw: dict[str, Any] = {"pubmedqa_split": "paper", "seed": 42, "test_fraction": 0.2}
    # 80/20 of ALL 40 items (maybe included), then "maybe" dropped from each part
    whole_test = load_pubmedqa(roles["pqal"], None, "test", binary=False, **kw)
    whole_train = load_pubmedqa(roles["pqal"], None, "train", binary=False, **kw)
    assert (len(whole_train), len(whole_test)) == (32, 8)
    assert [ex["id"] for ex in whole_test] == PAPER_TEST_SEED42
    assert sorted(ex["id"] for ex in whole_train + whole_test) == sorted(PMIDS)
    stats: dict[str, Any] = {}
    test = load_pubmedqa(roles["pqal"], None, "test", stats=stats, **kw)
    assert stats["read"] == 8 and stats["maybe_dropped"] == sum(ex["answer"] == "maybe" for ex in whole_test)
    assert [ex["id"] for ex in test] == [ex["id"] for ex in whole_test if ex["answer"] != "maybe"]
    assert {ex["answer"] for ex in test} <= {"yes", "no"}
    # the counts name the split, so results.json and sft_data.json do
    assert stats["pubmedqa_split"] == "paper" and stats["pubmedqa_split_seed"] == 42
    assert stats["pubmedqa_test_fraction"] == 0.2 and stats["pubmedqa_split_digest"] == split_digest(PAPER_TEST_SEED42)
    # ceil, as datasets' train_test_split: 41 items → 9 test
    assert len(paper_split([str(i) for i in range(41)])[1]) == 9


def test_paper_split_is_deterministic_and_seeded(tmp_path):
    roles = _pqal(tmp_path)
    task = get_task("pubmedqa")
    args = {**task.loader_args, "pubmedqa_split": "paper"}
    first = yesno.task_pubmedqa("test", roles, args, {})
    again = yesno.task_pubmedqa("test", roles, args, {})
    assert [ex["id"] for ex in first] == [ex["id"] for ex in again]
    other = yesno.task_pubmedqa("test", roles, {**args, "pubmedqa_split_seed": 7}, {})
    assert {ex["id"] for ex in other} != {ex["id"] for ex in first}
    assert paper_split(PMIDS, seed=7)[1] != PAPER_TEST_SEED42 and len(paper_split(PMIDS, seed=7)[1]) == 8
    # train / validation / test of one seed never share an id
    parts = [{ex["id"] for ex in yesno.task_pubmedqa(s, roles, args, {})} for s in ("train", "validation", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 32  # every yes/no item is in exactly one part


def test_paper_split_ignores_hash_randomisation():
    code = ("from biomamba.tasks.yesno import paper_split; "
            f"print(paper_split({PMIDS!r}, seed=3)[1])")
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True, cwd=Path(__file__).resolve().parents[1]).stdout)
    assert len(outs) == 1 and outs.pop().strip() == str(paper_split(PMIDS, seed=3)[1])


def test_official_split_unchanged(tmp_path):
    roles = _pqal(tmp_path)
    task = get_task("pubmedqa")
    assert task.loader_args["pubmedqa_split"] == "official"  # the standalone task's default
    stats: dict[str, Any] = {}
    test = yesno.task_pubmedqa("test", roles, task.loader_args, stats)
    truth = json.loads(Path(roles["test_ids"]).read_text())
    assert [ex["id"] for ex in test] == [p for p in PMIDS if p in truth and truth[p] != "maybe"]
    assert stats["read"] == 20 and stats["pubmedqa_split"] == "official" and "pubmedqa_split_seed" not in stats
    train = yesno.task_pubmedqa("train", roles, task.loader_args, {})
    val = yesno.task_pubmedqa("validation", roles, task.loader_args, {})
    assert {ex["id"] for ex in train + val} == {p for i, p in enumerate(PMIDS) if i % 2 and _label(i) != "maybe"}
    # official needs the ids file; paper does not read it
    with pytest.raises(ValueError, match="test_ground_truth"):
        load_pubmedqa(roles["pqal"], None, "test")
    assert load_pubmedqa(roles["pqal"], str(tmp_path / "absent.json"), "test", pubmedqa_split="paper")


def test_bad_settings_and_records_are_named(tmp_path):
    roles = _pqal(tmp_path)
    with pytest.raises(ValueError, match="pubmedqa_split must be one of"):
        load_pubmedqa(roles["pqal"], None, "test", pubmedqa_split="authors")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['pubmedqa_splt'\]"):
        yesno.task_pubmedqa("test", roles, {"pubmedqa_splt": "paper"}, {})  # a typo never falls back silently
    with pytest.raises(ValueError, match="pubmedqa_test_fraction must be in"):
        paper_split(PMIDS, test_fraction=1.0)
    items = json.loads(Path(roles["pqal"]).read_text())
    del items[PMIDS[3]]["QUESTION"]
    Path(roles["pqal"]).write_text(json.dumps(items))
    with pytest.raises(ValueError, match=rf"ori_pqal.json: record {PMIDS[3]}: missing or empty 'QUESTION'"):
        load_pubmedqa(roles["pqal"], None, "test", pubmedqa_split="paper")
    items[PMIDS[3]]["QUESTION"] = "Q?"
    items[PMIDS[5]]["final_decision"] = "perhaps"
    Path(roles["pqal"]).write_text(json.dumps(items))
    with pytest.raises(ValueError, match=rf"record {PMIDS[5]}: 'final_decision' must be one of"):
        load_pubmedqa(roles["pqal"], None, "train", pubmedqa_split="paper")
    bad = _bioasq(tmp_path / "b.json", [("q" * 24, "", "yes")])
    with pytest.raises(ValueError, match=r"b.json: question 0 .*'body'"):
        yesno.load_bioasq_yesno(bad)


# ---- train/test overlap ------------------------------------------------------------------------
def test_pubmedqa_overlap_by_question_text_removed(tmp_path):
    """Two PMIDs with one question (case, spacing and end punctuation differ), one in each part
    of the paper split: the training copy goes, and is counted."""
    in_test, in_train = PAPER_TEST_SEED42[1], next(p for p in PMIDS if p not in PAPER_TEST_SEED42
                                                   and _label(PMIDS.index(p)) != "maybe")
    roles = _pqal(tmp_path, {in_test: "Is  aspirin useful after stroke?",
                             in_train: "is aspirin useful after STROKE ?"})
    args = {**get_task("pubmedqa").loader_args, "pubmedqa_split": "paper", "val_fraction": 0.0}
    stats: dict[str, Any] = {}
    train = yesno.task_pubmedqa("train", roles, args, stats)
    assert in_test in {ex["id"] for ex in yesno.task_pubmedqa("test", roles, args, {})}
    assert in_train not in {ex["id"] for ex in train}
    assert stats["overlap_same_question"] == 1 and stats["overlap_same_id"] == 0
    assert stats["overlap_with_test_dropped"] == 1 and len(train) == stats["kept"] - 1


def _mix_files(tmp_path: Path) -> dict[str, str]:
    """PQA-L plus BioASQ train/test where one BioASQ training question is a PubMedQA paper-test
    question, one PubMedQA training question is a BioASQ test question, and one BioASQ training
    id is a BioASQ test id."""
    p_test = PAPER_TEST_SEED42[1]
    p_train = next(p for p in PMIDS if p not in PAPER_TEST_SEED42 and _label(PMIDS.index(p)) != "maybe")
    roles = _pqal(tmp_path, {p_train: "Do statins prevent delirium?"})
    p_test_question = f"Does drug {PMIDS.index(p_test)} change outcome {PMIDS.index(p_test)}?"
    train_rows = [(f"{i:024x}", f"BioASQ question {i}?", "yes" if i % 2 else "no") for i in range(1, 21)]
    train_rows += [("a" * 24, p_test_question.upper(), "yes"), ("b" * 24, "Old wording of a test question?", "no")]
    test_rows = [("b" * 24, "Is the reworded test question here?", "no"),
                 ("c" * 24, "do statins prevent delirium", "yes")]
    roles["train"] = _bioasq(tmp_path / "train.json", train_rows)
    roles["test"] = _bioasq(tmp_path / "golden.json", test_rows)
    return roles


def test_mix_removes_cross_source_overlap_and_counts_reach_sft(tmp_path):
    roles = _mix_files(tmp_path)
    task = get_task("yesno_mix")
    assert task.loader_args["pubmedqa_split"] == "paper"  # the mixture uses the paper's split
    test = task.load("test", paths=roles)
    stats: dict[str, Any] = {}
    train = task.load("train", paths=roles, stats=stats, val_fraction=0.0)
    test_ids = {ex["id"] for ex in test}
    test_questions = {normalize_question(ex["question"]) for ex in test}
    assert not {ex["id"] for ex in train} & test_ids
    assert not {normalize_question(ex["question"]) for ex in train} & test_questions
    assert stats["bioasq_overlap_same_id"] == 1 and stats["bioasq_overlap_same_question"] == 1
    assert stats["pubmedqa_overlap_same_question"] == 1 and stats["pubmedqa_overlap_with_test_dropped"] == 1
    assert stats["pubmedqa_split"] == "paper" and stats["pubmedqa_split_digest"] == split_digest(PAPER_TEST_SEED42)
    assert Counter(ex["source"] for ex in test)["pubmedqa"] == len(load_pubmedqa(
        roles["pqal"], None, "test", pubmedqa_split="paper"))

    class CharTokenizer:  # what Task.sft_examples needs: encode/decode and an EOS id
        eos_id = 0

        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    # the counts SFT writes to sft_data.json ({"counts": {"train": stats, ...}}) carry them
    sft_stats: dict[str, Any] = {}
    task.sft_examples("train", CharTokenizer(), 2048, paths=roles, stats=sft_stats)
    assert sft_stats["bioasq_overlap_with_test_dropped"] == 2 and sft_stats["pubmedqa_overlap_with_test_dropped"] == 1
    assert sft_stats["pubmedqa_split"] == "paper"


def test_results_json_names_the_split(tmp_path):
    from biomamba.eval.run import TaskEvalConfig, run_task_eval

    class Fake:  # a Scorer and a Generator: " yes" always more likely, "yes" always generated
        def loglikelihood(self, requests):
            return [0.0 if cont == " yes" else -1.0 for _, cont in requests]

        def generate(self, prompts, max_new_tokens, stop=()):
            return ["yes"] * len(prompts)

    roles = _mix_files(tmp_path)
    for scheme in ("paper", "official"):
        cfg = TaskEvalConfig(model="fake", task="yesno_mix", paths=roles, task_args={"pubmedqa_split": scheme})
        run_task_eval(cfg, Fake(), tmp_path / scheme, print_table=False)
        saved = json.loads((tmp_path / scheme / "results.json").read_text())
        assert saved["data"]["pubmedqa_split"] == scheme
        n_pubmed = saved["metrics"]["loglikelihood"]["by_source"]["pubmedqa"]["n"]
        assert n_pubmed == saved["data"]["pubmedqa_kept"]
    paper = json.loads((tmp_path / "paper" / "results.json").read_text())["data"]
    official = json.loads((tmp_path / "official" / "results.json").read_text())["data"]
    assert paper["pubmedqa_split_digest"] != official["pubmedqa_split_digest"]


# ---- the real PQA-L file -------------------------------------------------------------------------
def test_real_pqal_paper_split(shared_data, tmp_path):
    """The paper's split of the real 1,000 PQA-L items: 800 train / 200 test (80/20 of all items,
    seed 42, as the authors' code splits them), then "maybe" dropped from each part: 715 / 175
    yes/no items (the test part: 103 yes, 72 no, 25 maybe). The other reading, dropping "maybe"
    first, would give 712 / 178 and match neither of the paper's numbers."""
    pqal = shared_data / "pubmedqa" / "ori_pqal.json"
    if not pqal.is_file():
        pytest.skip(f"{pqal} not found: the real PubMedQA PQA-L file is needed for this test")
    items = json.loads(pqal.read_text())
    train_ids, test_ids = paper_split(list(items))
    assert (len(train_ids), len(test_ids)) == (800, 200) and not set(train_ids) & set(test_ids)
    # pinned (file order, numpy PCG64): a change here changes "the paper's test set"
    assert test_ids[:3] == ["9488747", "26037986", "26852225"] and split_digest(test_ids) == "f239619909ca"
    assert Counter(items[p]["final_decision"] for p in test_ids) == {"yes": 103, "no": 72, "maybe": 25}
    stats: dict[str, Any] = {}
    test = get_task("pubmedqa").load("test", data_root=shared_data, stats=stats, pubmedqa_split="paper")
    assert len(test) == 175 and stats["read"] == 200 and stats["maybe_dropped"] == 25
    assert stats["pubmedqa_split_digest"] == split_digest(test_ids)
    train_stats: dict[str, Any] = {}
    train = get_task("pubmedqa").load("train", data_root=shared_data, stats=train_stats, pubmedqa_split="paper",
                                      val_fraction=0.0)
    assert len(train) == 715 and train_stats["read"] == 800 and train_stats["overlap_with_test_dropped"] == 0
    # the mixture's PubMedQA test part is the same 175 items, without reading test_ground_truth.json
    mix_paths = {"test": str(shared_data / "bioasq" / "golden" / "9B*_golden.json"), "test_ids": None}
    mix_test = get_task("yesno_mix").load("test", paths=mix_paths, data_root=shared_data)
    assert {ex["id"] for ex in mix_test if ex["source"] == "pubmedqa"} == {ex["id"] for ex in test}
