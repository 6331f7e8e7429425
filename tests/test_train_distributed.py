"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 follow the 1-process loss curve with the
same global batch (within 1e-5), and an FSDP-sharded checkpoint resumes on 1 process."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from test_train_support import REPO, demo_data, recipe, reference_run, run_pretrain, train_losses, write_recipe

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous_match_one_process(tmp_path_factory, tmp_path):
    """What a multi-node launch does, on loopback: two torchrun agents (`--nnodes 2
    --nproc_per_node 1`) meet through a c10d rendezvous (the first hosts the store, the
    second joins it) and train FSDP2 over gloo; the loss curve is the one-process run's."""
    import subprocess
    import sys

    from test_train_support import env

    ref = train_losses(reference_run(tmp_path_factory))
    data = demo_data(tmp_path_factory)
    cfg = recipe(data, train={"strategy": "fsdp", "per_device_train_batch_size": 2})
    config = write_recipe(tmp_path / "recipe.yaml", cfg)
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=biomamba-two-nodes",
               f"--rdzv_conf=is_host={'true' if node == 0 else 'false'}", "--max_restarts=0",
               "-m", "biomamba.cli", "pretrain", "--config", str(config), "--out", str(out)]
        agents.append(subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True))
    logs = []
    for proc in agents:
        try:
            logs.append(proc.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in agents:
                p.kill()
            raise
    assert all(p.returncode == 0 for p in agents), "\n---\n".join(log[-3000:] for log in logs)
    _compare(out, ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "fsdp"


def test_slurm_example_runs_a_valid_pretrain_command():
    """The shipped sbatch file's biomamba arguments parse against the pretrain config, and its
    global batch splits over its GPU count (the example cannot drift from the code)."""
    import re
    import shlex

    from biomamba.config import load_config
    from biomamba.train.config import PretrainConfig

    text = (REPO / "examples" / "slurm" / "pretrain-multinode.sbatch").read_text()
    command = shlex.split(re.sub(r"\\\n", " ", text.split("srun ", 1)[1]))
    args = command[command.index("pretrain") + 1:]
    config = REPO / args[args.index("--config") + 1]
    overrides = [a for a in args if a.startswith("--") and "=" in a]
    cfg = load_config(PretrainConfig, config, [o for o in overrides if not o.startswith("--resume")])
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    per_node = int(re.search(r"--nproc_per_node=(\d+)", text).group(1))
    assert cfg.train.strategy == "fsdp" and "--rdzv_backend=c10d" in command
    assert cfg.train.global_batch_size % (cfg.train.per_device_train_batch_size * nodes * per_node) == 0


def test_lora_under_fsdp_matches_one_process(tmp_path_factory, tmp_path):
    """FSDP2 shards blocks whose projections carry frozen base weights and trainable adapters:
    two ranks follow the one-process LoRA loss curve."""
    data = demo_data(tmp_path_factory)
    lora = {"enabled": True, "rank": 4, "alpha": 8.0}
    one = write_recipe(tmp_path / "one.yaml", recipe(data, train={"max_steps": 6}, lora=lora,
                                                     checkpoint={"every": 0, "export": []}))
    two = write_recipe(tmp_path / "two.yaml", recipe(data, train={"max_steps": 6, "strategy": "fsdp",
                                                                  "per_device_train_batch_size": 2},
                                                     lora=lora, checkpoint={"every": 0, "export": []}))
    run_pretrain(one, tmp_path / "one")
    run_pretrain(two, tmp_path / "two", nproc=2)
    ref = train_losses(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["lora"]["rank"] == 4
    _compare(tmp_path / "two", ref)
