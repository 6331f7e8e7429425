"""Own data as a task (loader `records`): the same examples from JSONL, JSON, CSV, Parquet and a
saved `datasets` dataset; chat records rendered with only the last assistant turn supervised;
train/test overlap removed and counted; a bad record named by file and line (or skipped and
counted on request); and the README's three lines: SFT on a JSONL, then evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from biomamba.tasks import get_task
from biomamba.tasks.records import RecordError, render_chat, task_records

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"id": f"r{i}", "instruction": f"What does compound {i} inhibit?", "output": f"Target {i % 3}."}
        for i in range(12)]


def _write_all(tmp_path: Path) -> dict[str, Path]:
    files = {"jsonl": tmp_path / "d.jsonl", "json": tmp_path / "d.json", "csv": tmp_path / "d.csv",
             "parquet": tmp_path / "d.parquet", "datasets": tmp_path / "d-arrow"}
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    files["json"].write_text(json.dumps({"data": ROWS}))
    with files["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), files["parquet"])
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(files["datasets"]))
    return files


ARGS = {"fields": {"prompt": "instruction", "response": "output"}, "id_field": "id", "val_fraction": 0.25}


def test_every_format_gives_the_same_examples(tmp_path):
    files = _write_all(tmp_path)
    seen = {}
    for kind, path in files.items():
        stats: dict = {}
        train = task_records("train", {"train": [path]}, ARGS, stats)
        val = task_records("validation", {"train": [path]}, ARGS, {})
        seen[kind] = ([(e["id"], e["prompt"], e["response"]) for e in train], [e["id"] for e in val])
        assert stats["train_records"] == 12 and len(train) == 9 and len(val) == 3
        assert not {e["id"] for e in train} & set(seen[kind][1])  # validation carved from training
    assert all(v == seen["jsonl"] for v in seen.values())


def test_overlap_with_test_is_removed_and_counted(tmp_path):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    leaked = dict(ROWS[3], id="other-id", instruction="  what does COMPOUND 3 inhibit ")  # same prompt, new id
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS + [leaked]))
    test.write_text(json.dumps(ROWS[3]) + "\n" + json.dumps(ROWS[5]) + "\n")
    stats: dict = {}
    kept = task_records("train", {"train": [train], "test": [test]}, {**ARGS, "val_fraction": 0.0}, stats)
    assert stats["overlap_same_id"] == 2 and stats["overlap_same_question"] == 1
    assert stats["overlap_with_test_dropped"] == 3 and len(kept) == 10
    assert not {"r3", "r5", "other-id"} & {e["id"] for e in kept}


def test_chat_records_supervise_the_last_assistant_turn():
    prompt, response = render_chat([{"role": "system", "content": "Be brief."},
                                    {"from": "human", "value": "Name a fictional kinase."},
                                    {"role": "assistant", "content": "KRX9."},
                                    {"role": "user", "content": "Another?"},
                                    {"role": "assistant", "content": "TLP4."}],
                                   {"system": "{content}\n", "user": "User: {content}\n",
                                    "assistant": "Assistant: {content}\n", "cue": "Assistant:"}, "x")
    assert prompt == "Be brief.\nUser: Name a fictional kinase.\nAssistant: KRX9.\nUser: Another?\nAssistant:"
    assert response == " TLP4."
    with pytest.raises(RecordError, match="last turn must be the assistant"):
        render_chat([{"role": "user", "content": "hi"}], {"user": "{content}", "cue": ""}, "file.jsonl:3")


def test_bad_records_are_named_or_skipped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x", "instruction": "q"}) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"d.jsonl:2: no field 'output' \(for response\)"):
        task_records("train", {"train": [path]}, ARGS, {})
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x", "instruction": "q"}) + "\n")
    stats: dict = {}
    task_records("train", {"train": [path]}, {**ARGS, "on_error": "skip", "val_fraction": 0.0}, stats)
    assert stats["bad_records_skipped"] == 1 and stats["train_records"] == 1
    path.write_text("{not json\n")
    with pytest.raises(RecordError, match=r"d.jsonl:1: invalid JSON"):
        task_records("train", {"train": [path]}, ARGS, {})
    with pytest.raises(ValueError, match="unknown argument"):
        task_records("train", {"train": [path]}, {**ARGS, "feilds": {}}, {})


def test_readme_three_lines_fine_tune_and_evaluate_own_jsonl(tmp_path_factory, tmp_path):
    """SFT on the example JSONL (a tiny model from the demo data, a few steps), then `eval task`
    on its test file: the shipped example works as the README says."""
    from biomamba.cli import main as cli
    from test_train_support import demo_data

    task = get_task(str(REPO / "examples" / "own-data" / "task.yaml"))
    assert task.loader == "records" and len(task.load("test", data_root=REPO)) == 6
    data = demo_data(tmp_path_factory)
    base = tmp_path / "base"
    assert cli(["pretrain", "--config", str(REPO / "configs" / "pretrain" / "tiny.yaml"), f"--data={data}",
                "--out", str(base), "--train.max_steps=2", "--eval.every=0", "--checkpoint.every=0",
                "--model.overrides={d_model: 32, n_layer: 2, d_state: 8, headdim: 8}"]) == 0
    sft = tmp_path / "sft"
    assert cli(["sft", "--config", str(REPO / "configs" / "sft" / "own-data.yaml"), "--model", str(base / "final"),
                f"--data_root={REPO}", "--out", str(sft), "--train.max_steps=2", "--max_len=64",
                "--train.global_batch_size=8", "--train.per_device_train_batch_size=4"]) == 0
    counts = json.loads((sft / "sft_data.json").read_text())
    assert "overlap_with_test_dropped" in json.dumps(counts)  # the guard ran (and is counted)
    ev = tmp_path / "eval"
    assert cli(["eval", "task", "--task", str(REPO / "examples" / "own-data" / "task.yaml"), "--model",
                str(sft / "best"), f"--data_root={REPO}", "--out", str(ev), "--max_new_tokens=4"]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert results["n"] == 6 and 0.0 <= results["metrics"]["rouge"]["rougeL"] <= 1.0
