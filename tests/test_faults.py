"""Faults end in one clear line: `biomamba pretrain --resume` over a damaged or mismatched
checkpoint exits non-zero with a single line naming the file and the cause (no traceback),
and the checkpoint it refused is left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from biomamba import cli
from test_train_support import demo_data, recipe, write_recipe


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _digest(path: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


@pytest.fixture()
def run_with_checkpoint(tmp_path_factory, tmp_path, capsys):
    data = demo_data(tmp_path_factory)
    cfg = recipe(data, train={"max_steps": 2}, eval={"every": 0, "at_start": False},
                 checkpoint={"every": 2, "keep_last": 2, "export": []})
    config = write_recipe(tmp_path / "recipe.yaml", cfg)
    out = tmp_path / "run"
    code, err = _run(capsys, "pretrain", "--config", str(config), "--out", str(out))
    assert code == 0, err
    return config, out, out / "checkpoints" / "step_00000002"


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("biomamba pretrain:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_truncated_state_file(run_with_checkpoint, capsys):
    config, out, step = run_with_checkpoint
    shard = step / "state" / "model-rank00000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    before = _digest(step)
    code, err = _run(capsys, "pretrain", "--config", str(config), "--out", str(out), "--resume",
                     "--train.max_steps=4")
    line = _one_line(err)
    assert code == 1 and str(shard) in line and "not a readable state file" in line
    assert _digest(step) == before


def test_another_architecture(run_with_checkpoint, capsys):
    config, out, step = run_with_checkpoint
    code, err = _run(capsys, "pretrain", "--config", str(config), "--out", str(out), "--resume",
                     "--train.max_steps=4", "--model.overrides.n_layer=3")
    line = _one_line(err)
    assert code == 1 and "does not match this model/optimizer" in line and "layers.2" in line


def test_damaged_trainer_state(run_with_checkpoint, capsys):
    config, out, step = run_with_checkpoint
    (step / "trainer_state.json").write_text('{"step": 2, "sampler"')
    code, err = _run(capsys, "pretrain", "--config", str(config), "--out", str(out), "--resume",
                     "--train.max_steps=4")
    line = _one_line(err)
    assert code == 1 and "trainer_state.json: cannot read JSON" in line
