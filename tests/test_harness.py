"""lm-evaluation-harness evaluates our checkpoint through its Python API, on a local task,
and agrees with our own evaluation of the same examples."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional `lmeval` extra")

from biomamba.data.tokenizer import load_tokenizer  # noqa: E402
from biomamba.demo_corpus import DEMO_DATA  # noqa: E402
from biomamba.model import MambaLM, model_preset, save_model  # noqa: E402
from helpers import randomize_weights  # noqa: E402


def test_local_yesno_task_through_lm_eval_matches_our_scoring(tmp_path, monkeypatch, neox_tokenizer_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from biomamba.eval.harness import BiomambaLM
    from biomamba.eval.lm import from_mamba

    pqal = json.loads((DEMO_DATA / "pubmedqa" / "demo-pqal.json").read_text())
    rows = [{"context": v["CONTEXTS"][0], "question": v["QUESTION"], "answer": v["final_decision"]}
            for v in pqal.values() if v["final_decision"] in ("yes", "no")][:16]
    data = tmp_path / "yesno.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(neox_tokenizer_path)
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=11).eval()
    save_model(model, tmp_path / "m", tokenizer=tok)

    task = {
        "task": "biomamba_demo_yesno", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "Context: {{context}}\nQuestion: {{question}}\nAnswer:",
        "doc_to_choice": ["yes", "no"], "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    lm = BiomambaLM(pretrained=str(tmp_path / "m"), batch_size=4, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], bootstrap_iters=0, log_samples=False)
    acc = out["results"]["biomamba_demo_yesno"]["acc,none"]

    ours = from_mamba(model, tok, batch_size=4)
    correct = 0
    for r in rows:
        prompt = f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer:"
        yes, no = ours.loglikelihood([(prompt, " yes"), (prompt, " no")])
        correct += ("yes" if yes >= no else "no") == r["answer"]
    assert acc == pytest.approx(correct / len(rows))


def test_lm_eval_command_line_runs_our_model(tmp_path, neox_tokenizer_path):
    """lm-eval's own command line (`run`), with --model biomamba registered by
    `python -m biomamba.eval.harness`, on a local task YAML; device and batch_size "auto" in the
    model arguments and flags are accepted. The accuracy equals the Python API's on the same task."""
    import subprocess
    import sys

    import yaml

    from biomamba.eval.harness import BiomambaLM

    pqal = json.loads((DEMO_DATA / "pubmedqa" / "demo-pqal.json").read_text())
    rows = [{"context": v["CONTEXTS"][0], "question": v["QUESTION"], "answer": v["final_decision"]}
            for v in pqal.values() if v["final_decision"] in ("yes", "no")][:8]
    (tmp_path / "yesno.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": "biomamba_cli_yesno", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(tmp_path / "yesno.jsonl")}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "Context: {{context}}\nQuestion: {{question}}\nAnswer:",
            "doc_to_choice": ["yes", "no"], "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "yesno.yaml").write_text(yaml.safe_dump(task))
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=11).eval()
    save_model(model, tmp_path / "m", tokenizer=load_tokenizer(neox_tokenizer_path))
    out = tmp_path / "out"
    env = {**__import__("os").environ, "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "biomamba.eval.harness", "run", "--model", "biomamba",
                           "--model_args", f"pretrained={tmp_path / 'm'},device=cpu,batch_size=auto",
                           "--tasks", "biomamba_cli_yesno", "--include_path", str(tmp_path / "tasks"),
                           "--output_path", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results*.json")).read_text())
    acc = results["results"]["biomamba_cli_yesno"]["acc,none"]
    lm = BiomambaLM(pretrained=str(tmp_path / "m"), batch_size="auto", device="cpu")
    api = lm_eval.simple_evaluate(model=lm, tasks=[task], bootstrap_iters=0, log_samples=False)
    assert acc == pytest.approx(api["results"]["biomamba_cli_yesno"]["acc,none"])
