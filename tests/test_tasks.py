"""Task loaders on the real public samples (../shared/data), the registry, splits and mixing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from biomamba.config import ConfigError
from biomamba.tasks import get_task, task_names
from biomamba.tasks.common import balance_classes, mix_sources, split_off
from biomamba.tasks.factoid import load_factoid_golden, load_squad_factoid, merge_candidates, question_id
from biomamba.tasks.yesno import load_bioasq_yesno, parse_yesno


def test_registry_has_every_task_and_each_parses():
    assert task_names() == ["bioasq_factoid", "bioasq_yesno", "clinical_completion", "clinical_discharge",
                            "clinical_mix", "pubmedqa", "yesno_mix"]
    for name in task_names():
        task = get_task(name)
        assert task.name == name
        if task.kind == "choice":
            assert task.choices == {"yes": " yes", "no": " no"}
    with pytest.raises(KeyError, match="built-in tasks"):
        get_task("nope")


def test_task_yaml_errors_name_the_key(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\nkind: choice\nloader: pubmedqa\nmetric: classification\n"
                   "template: {text: 'Q: {question}', truncate: context}\nchoices: {a: ' a', b: ' b'}\n")
    with pytest.raises(ConfigError, match="truncate field 'context'"):
        get_task(bad)
    bad.write_text("name: t\nkind: choice\nloader: pubmedqa\nmetric: classification\ntemplte: {text: x}\n")
    with pytest.raises(ConfigError, match="templte"):
        get_task(bad)


def test_pubmedqa_official_binary_test_split(shared_data):
    task = get_task("pubmedqa")
    stats: dict[str, int] = {}
    test = task.load("test", data_root=shared_data, stats=stats)
    assert len(test) == 445
    assert Counter(ex["answer"] for ex in test) == {"yes": 276, "no": 169}
    assert stats["read"] == 500 and stats["maybe_dropped"] == 55  # counted, not silently gone
    truth = json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text())
    assert {ex["id"] for ex in test} == {k for k, v in truth.items() if v != "maybe"}
    # validation is carved from the 500 non-test items: disjoint from test and from train
    train = task.load("train", data_root=shared_data)
    val = task.load("validation", data_root=shared_data)
    ids = [{ex["id"] for ex in s} for s in (train, val, test)]
    assert not (ids[0] & ids[2]) and not (ids[1] & ids[2]) and not (ids[0] & ids[1])
    assert len(train) + len(val) == 445 and len(val) == pytest.approx(44.5, abs=2)
    prompt, target = task.render(test[0])
    assert prompt.startswith("Context: ") and prompt.endswith(f"\nQuestion: {test[0]['question']}\nAnswer:")
    assert target in (" yes", " no")


def test_bioasq_golden_counts(shared_data):
    stats: dict[str, int] = {}
    yesno = get_task("bioasq_yesno").load("test", data_root=shared_data, stats=stats)
    assert len(yesno) == 409 and stats["read"] == 409
    assert Counter(ex["answer"] for ex in yesno) == {"yes": 265, "no": 144}  # "Yes" normalised
    assert all(ex["context"] for ex in yesno)
    gold = load_factoid_golden(sorted((shared_data / "bioasq" / "golden").glob("*_golden.json")))
    assert len(gold) == 476 and all(gold.values())


def test_bioasq_train_validation_balance_and_test_overlap(shared_data):
    golden = shared_data / "bioasq" / "golden"
    task = get_task("bioasq_yesno")
    # "train" = the 7B and 8B batches, "test" = 8B and 9B: the 8B questions are overlap and must go
    paths = {"train": [str(golden / "7B*_golden.json"), str(golden / "8B*_golden.json")],
             "test": [str(golden / "8B*_golden.json"), str(golden / "9B*_golden.json")]}
    stats: dict[str, int] = {}
    train = task.load("train", paths=paths, stats=stats)
    val = task.load("validation", paths=paths)
    test = task.load("test", paths=paths)
    n_7b = len(load_bioasq_yesno(golden / "7B*_golden.json"))
    assert stats["overlap_with_test_dropped"] == len(load_bioasq_yesno(golden / "8B*_golden.json"))
    assert not {ex["id"] for ex in train + val} & {ex["id"] for ex in test}
    counts = Counter(ex["answer"] for ex in train)
    assert counts["yes"] == counts["no"]  # balanced by downsampling the majority
    assert len(train) + stats["balance_removed"] + len(val) == n_7b
    # the same call gives the same split (seeded)
    assert [ex["id"] for ex in task.load("train", paths=paths)] == [ex["id"] for ex in train]
    # upsampling keeps every example
    up = task.load("train", paths=paths, balance="upsample")
    assert Counter(ex["answer"] for ex in up)["yes"] == Counter(ex["answer"] for ex in up)["no"]
    assert len({ex["id"] for ex in up}) == len(train) + stats["balance_removed"]


def test_yesno_mix_share_and_per_source_test(shared_data):
    golden = shared_data / "bioasq" / "golden"
    task = get_task("yesno_mix")
    paths = {"train": str(golden / "7B*_golden.json"), "test": str(golden / "9B*_golden.json")}
    stats: dict[str, int] = {}
    # the official PubMedQA split, named, as these counts are the official ones (the task's
    # default is the paper's split: tests/test_tasks_yesno_split.py)
    mix = task.load("train", paths=paths, data_root=shared_data, stats=stats, bioasq_share=0.65,
                    pubmedqa_split="official")
    share = sum(ex["source"] == "bioasq" for ex in mix) / len(mix)
    assert share == pytest.approx(0.65, abs=0.01)
    assert stats["mix_bioasq"] + stats["mix_pubmedqa"] == len(mix)
    assert len({ex["id"] for ex in mix}) == len(mix)  # no repeats unless a larger total is asked
    test = task.load("test", paths=paths, data_root=shared_data, pubmedqa_split="official")
    assert Counter(ex["source"] for ex in test)["pubmedqa"] == 445


def test_split_balance_mix_helpers():
    exs = [{"id": i, "answer": "yes" if i % 3 else "no"} for i in range(100)]
    kept, carved = split_off(exs, 0.1, seed=42, stratify="answer")
    assert len(carved) == 10 and Counter(e["answer"] for e in carved) == {"yes": 7, "no": 3}
    assert sorted(e["id"] for e in kept + carved) == list(range(100))
    assert split_off(exs, 0.1, seed=42, stratify="answer") == (kept, carved)
    assert split_off(exs, 0.1, seed=7, stratify="answer")[1] != carved
    down = balance_classes(exs, "answer", "downsample")
    assert Counter(e["answer"] for e in down) == {"yes": 34, "no": 34}
    up = balance_classes(exs, "answer", "upsample")
    assert Counter(e["answer"] for e in up) == {"yes": 66, "no": 66}
    a = [{"id": f"a{i}"} for i in range(70)]
    b = [{"id": f"b{i}"} for i in range(100)]
    mixed, counts = mix_sources(a, b, 0.7)
    assert counts == {"first": 70, "second": 30, "total": 100}
    mixed, counts = mix_sources(a, b, 0.7, total=400)  # larger than the data: even repeats
    assert counts["first"] == 280 and max(Counter(e["id"] for e in mixed if e["id"][0] == "a").values()) == 4


def test_parse_yesno():
    assert parse_yesno(" Yes, it does.") == "yes"
    assert parse_yesno("no") == "no"
    assert parse_yesno("\n**No**") == "no"
    assert parse_yesno("The answer is yes.\nNo doubt.") == "yes"  # one of them alone in the first line
    assert parse_yesno("maybe") is None
    assert parse_yesno("") is None
    assert parse_yesno("Either yes or no") is None  # both, neither first: unparseable
    assert parse_yesno("Nothing") is None and parse_yesno("yesterday") is None


def test_factoid_squad_test_sets_and_gold(shared_data):
    task = get_task("bioasq_factoid")
    stats: dict[str, int] = {}
    test = task.load("test", data_root=shared_data, stats=stats)
    assert len(test) == 311 and "no_gold_dropped" not in stats  # 4b + 5b factoid questions, all with gold
    assert Counter(ex["source"] for ex in test)["4b-1"] == 39
    squad = load_squad_factoid(shared_data / "bioasq" / "factoid-squad" / "BioASQ-test-factoid-4b-1.json")
    assert sum(len(q["contexts"]) for q in squad) == 167 and len(squad) == 39
    assert all(len(q["id"]) == 24 and all(c["id"].startswith(q["id"] + "_") for c in q["contexts"]) for q in squad)
    assert all(not c["answers"] for q in squad for c in q["contexts"])  # test files carry no answers
    five_b4 = {ex["id"]: ex for ex in test}
    assert any(set(ex["answers"]) == {"Factor Xa", "Xa"} for ex in five_b4.values())  # two synonym lists flattened
    assert question_id("56c073fcef6e394741000020_003") == "56c073fcef6e394741000020"
    with pytest.raises(ValueError):
        question_id("no-suffix")


def test_factoid_train_examples_for_sft(shared_data):
    task = get_task("bioasq_factoid")
    # the whole file: no test role, so no test question is removed (tests/test_tasks_factoid.py)
    train = task.load("train", paths={"test": None}, data_root=shared_data)
    val = task.load("validation", paths={"test": None}, data_root=shared_data)
    assert len(train) + len(val) == 4231  # every context of the 530 questions has an answer span
    q_train = {question_id(ex["id"]) for ex in train}
    q_val = {question_id(ex["id"]) for ex in val}
    assert not q_train & q_val and len(q_train) + len(q_val) == 530  # split by question
    assert all(ex["answer"] in ex["context"] for ex in train[:200])
    prompt, target = task.render(train[0])
    assert prompt.endswith("\nAnswer:") and target == " " + train[0]["answer"]


def test_merge_candidates():
    per_context = [[("BRCA1", 0.9), ("brca2", 0.3)],
                   [("brca1", 0.95), ("TP53", 0.5)],  # duplicate of BRCA1: merged, best spelling kept
                   [],
                   [(" ", 0.99), ("p53", 0.5), ("ATM", 0.1), ("CHEK2", 0.05), ("PALB2", 0.01)]]
    assert merge_candidates(per_context) == ["brca1", "TP53", "p53", "brca2", "ATM"]
    assert merge_candidates([[("a", 0.0)], [("b", 0.0)]]) == ["a", "b"]  # ties: context order
