"""Experiment tracking: metrics.jsonl always; TensorBoard, MLflow and W&B (offline) receive the
same numbers; a tracker asked for by name but not installed stops the run at its start; a
resumed run continues the same MLflow run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from biomamba.train.metrics import MetricsLogger, TrackerError
from test_train_support import demo_data, make_trainer, recipe


def _jsonl_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_tensorboard_and_mlflow_receive_the_jsonl_numbers(tmp_path_factory, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = demo_data(tmp_path_factory)
    out = tmp_path / "run"
    cfg = recipe(data, train={"max_steps": 4, "tensorboard": True, "trackers": ["mlflow"]},
                 eval={"every": 0, "at_start": False}, checkpoint={"every": 2, "keep_last": 5, "export": []})
    make_trainer(cfg, out).fit()
    losses = _jsonl_losses(out)
    assert sorted(losses) == [1, 2, 3, 4]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb.keys() == losses.keys() and all(tb[s] == pytest.approx(losses[s], rel=1e-6) for s in tb)

    client = mlflow.MlflowClient((out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("biomamba").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses)
    assert run.data.params["optim.lr"] == str(cfg["optim"]["lr"])

    # resumed: the same MLflow run goes on (steps 5-6 join 1-4)
    make_trainer({**cfg, "resume": "auto", "train": {**cfg["train"], "max_steps": 6}}, out).fit()
    runs = client.search_runs([client.get_experiment_by_name("biomamba").experiment_id])
    assert len(runs) == 1
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]


def test_wandb_offline_run_and_the_values_it_is_given(tmp_path, monkeypatch):
    """The real package offline (a run written under RUN/wandb, no network), and through a
    stand-in module the exact values and steps our logger hands it."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, True, tensorboard=False, trackers=["wandb"], config={"optim": {"lr": 1e-3}})
    logger.log({"step": 1, "loss": 2.5, "lr": 1e-3, "val/all/loss": 3.0, "skipped": 0, "note": "text"})
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")), "no offline run written"

    seen = []

    class FakeRun:
        def log(self, values, step):
            seen.append((step, values))

        def finish(self):
            seen.append("finished")

    fake = type(sys)("wandb")
    fake.init = lambda **kw: seen.append(("init", kw["project"], kw["mode"], kw["config"])) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (tmp_path / "b").mkdir()
    logger = MetricsLogger(tmp_path / "b", True, tensorboard=False, trackers=["wandb"], project="p",
                           config={"a": 1})
    logger.log({"step": 7, "loss": 2.5, "val/all/loss": float("nan"), "flag": True, "n": 3})
    logger.close()
    assert seen == [("init", "p", "offline", {"a": 1}), (7, {"loss": 2.5, "n": 3.0}), "finished"]
    del wandb


def test_a_missing_tracker_stops_the_run_at_its_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as if not installed
    with pytest.raises(TrackerError, match=r"train.trackers names mlflow but it is not installed"):
        MetricsLogger(tmp_path, True, tensorboard=False, trackers=["mlflow"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    notes = []
    MetricsLogger(tmp_path, True, tensorboard="auto", log=notes.append)
    assert notes and "tensorboard is not installed" in notes[0]
    with pytest.raises(TrackerError, match="tensorboard is true"):
        MetricsLogger(tmp_path, True, tensorboard=True)
