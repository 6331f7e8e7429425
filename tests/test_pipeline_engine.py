"""The pipeline engine: requirement checks before work, skipping finished stages, failures."""

from __future__ import annotations

import json

import pytest

from biomamba.config import from_dict
from biomamba.pipeline import PipelineConfig, PipelineError, run_pipeline


def _cfg(**extra) -> PipelineConfig:
    return from_dict(PipelineConfig, {"name": "t", "stages": [
        {"name": "data", "verb": "data", "args": ["build"], "config": "{configs}/data/x.yaml",
         "overrides": {"seq_len": 64, "sources": [{"name": "a"}]}},
        {"name": "base", "verb": "pretrain", "overrides": {"data": "{run}/data"}},
        {"name": "ppl", "verb": "eval", "args": ["ppl"], "overrides": {"model": "{run}/base/model"}},
    ], **extra})


def _fake_invoke(calls, fail_on=None):
    def invoke(argv):
        calls.append(argv)
        out = argv[argv.index("--out") + 1]
        verb = argv[0]
        if verb == fail_on:
            return 1
        from pathlib import Path

        done = {"data": "manifest.json", "pretrain": "summary.json", "eval": "results.json"}[verb]
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / done).write_text("{}")
        return 0
    return invoke


def test_runs_stages_in_order_with_placeholders_then_skips_them(tmp_path):
    calls = []
    run_pipeline(_cfg(), tmp_path, _fake_invoke(calls), log=lambda m: None)
    assert [c[0] for c in calls] == ["data", "pretrain", "eval"]
    assert calls[0][:2] == ["data", "build"] and "--seq_len=64" in calls[0]
    assert "--sources=[{name: a}]" in calls[0]
    assert f"--data={tmp_path}/data" in calls[1] and "--resume=auto" in calls[1]
    assert f"--model={tmp_path}/base/model" in calls[2]
    record = json.loads((tmp_path / "pipeline.json").read_text())
    assert all(s["status"] == "done" for s in record["stages"].values())
    calls.clear()
    run_pipeline(_cfg(), tmp_path, _fake_invoke(calls), log=lambda m: None)
    assert calls == []  # everything finished: nothing re-runs


def test_failure_stops_and_rerun_resumes_from_the_failed_stage(tmp_path):
    calls = []
    with pytest.raises(PipelineError, match="stage base failed"):
        run_pipeline(_cfg(), tmp_path, _fake_invoke(calls, fail_on="pretrain"), log=lambda m: None)
    assert [c[0] for c in calls] == ["data", "pretrain"]
    calls.clear()
    run_pipeline(_cfg(), tmp_path, _fake_invoke(calls), log=lambda m: None)
    assert [c[0] for c in calls] == ["pretrain", "eval"]


def test_unmet_requirements_stop_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(requires=[
        {"what": "base model", "hub_id": "state-spaces/mamba2-130m"},
        {"what": "MIMIC-IV-Note discharge.csv.gz", "path": "{run}/nowhere/discharge.csv.gz",
         "hint": "credentialed PhysioNet access"},
        {"what": "present file", "path": str(tmp_path)},
    ])
    calls = []
    with pytest.raises(PipelineError) as err:
        run_pipeline(cfg, tmp_path / "run", _fake_invoke(calls), log=lambda m: None)
    message = str(err.value)
    assert "nothing was done" in message and "state-spaces/mamba2-130m" in message
    assert "discharge.csv.gz" in message and "credentialed" in message and "present file" not in message
    assert calls == []


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(Exception, match="unique"):
        from_dict(PipelineConfig, {"stages": [{"name": "a", "verb": "data"}, {"name": "a", "verb": "eval"}]})


def test_stage_overrides_apply_by_verb_subcommand_and_name(tmp_path):
    calls = []
    cfg = _cfg(stage_overrides={"pretrain": {"train.max_steps": 3}, "eval ppl": {"batch_size": 2},
                                "base": {"train.max_steps": 5}})
    run_pipeline(cfg, tmp_path, _fake_invoke(calls), log=lambda m: None)
    assert "--train.max_steps=5" in calls[1] and "--train.max_steps=3" not in calls[1]  # the name wins
    assert "--batch_size=2" in calls[2]
