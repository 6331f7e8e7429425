"""Kill a run with SIGKILL mid-way, resume it: every later step's loss equals the
uninterrupted run's exactly (same seed, CPU, same threading)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from test_train_support import REPO, env, pretrain_cmd, reference_config, reference_run, run_pretrain, train_losses


def _wait_for_step(out, proc, step: int, timeout: float = 180.0) -> int:
    metrics = out / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}")
        if metrics.is_file():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.01)
    raise AssertionError("the run did not reach the kill point in time")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path_factory, tmp_path):
    ref = train_losses(reference_run(tmp_path_factory))
    config = reference_config(tmp_path_factory)
    out = tmp_path / "run"
    proc = subprocess.Popen(pretrain_cmd(config, out), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(out, proc, 5)  # after the checkpoint at step 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before the kill"
    done = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert done and done[-1] < "step_00000012"

    # without --resume the run directory is protected
    plain = subprocess.run(pretrain_cmd(config, out), env=env(), cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 1 and "--resume" in plain.stderr

    run_pretrain(config, out, "--resume")
    resumed = train_losses(out)
    assert sorted(resumed) == sorted(ref) == list(range(1, 13))
    for step in ref:
        assert resumed[step] == ref[step], f"step {step}: {resumed[step]!r} != {ref[step]!r}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["steps_this_session"] < 12
    # validation after the resume equals the uninterrupted run's too (EMA restored exactly)
    ref_val = json.loads((reference_run(tmp_path_factory) / "summary.json").read_text())["val"]
    assert summary["val"] == pytest.approx(ref_val, rel=0, abs=0)
