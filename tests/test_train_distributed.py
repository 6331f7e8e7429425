"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 follow the 1-process loss curve with the
same global batch (within 1e-5), and an FSDP-sharded checkpoint resumes on 1 process."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from test_train_support import recipe, reference_run, run_pretrain, train_losses, write_recipe, demo_data

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _compare(run, ref, tol=1e-5, steps=None):
    losses = train_losses(run)
    steps = steps or sorted(ref)
    for s in steps:
        assert abs(losses[s] - ref[s]) <= tol, f"step {s}: {losses[s]} vs {ref[s]}"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(strategy, tmp_path_factory, tmp_path):
    ref_run = reference_run(tmp_path_factory)
    ref = train_losses(ref_run)
    data = demo_data(tmp_path_factory)
    # 2 ranks × 2 sequences × 2 accumulation = the reference's 8 sequences per step (1 × 4 × 2)
    cfg = recipe(data, train={"strategy": strategy, "per_device_train_batch_size": 2})
    config = write_recipe(tmp_path / "recipe.yaml", cfg)
    out = tmp_path / "run"
    run_pretrain(config, out, nproc=2)
    _compare(out, ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == strategy
    ref_val = json.loads((ref_run / "summary.json").read_text())["val"]
    for key, value in ref_val.items():
        if key.endswith("/loss"):
            assert summary["val"][key] == pytest.approx(value, abs=1e-5), key

    if strategy == "fsdp":
        # the sharded checkpoint of step 8, loaded by a single process: same data order, same curve
        resumed = tmp_path / "resumed"
        run_pretrain(config, resumed, "--train.strategy=single", "--train.per_device_train_batch_size=8",
                     f"--resume={out / 'checkpoints' / 'step_00000008'}")
        losses = train_losses(resumed)
        assert sorted(losses) == [9, 10, 11, 12]
        _compare(resumed, ref, steps=[9, 10, 11, 12])
