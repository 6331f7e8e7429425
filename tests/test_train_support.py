"""Shared helpers for the trainer tests (imported by the other test_train_* modules).

The corpus is the package's embedded demo corpus, tokenised with a 384-token BPE trained on
it and packed into 64-token rows by the real data builder: seconds to build, real text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
_CACHE: dict[str, Any] = {}

# the small model every subprocess run uses: 2 blocks of width 32, the data's 384-token vocabulary
SMALL_MODEL = {"preset": "tiny", "vocab_size": "data", "backend": "torch",
               "overrides": {"d_model": 32, "n_layer": 2, "d_state": 8, "headdim": 8}}


def demo_data(tmp_path_factory) -> Path:
    """Token shards of the demo corpus (built once per test session)."""
    if "data" in _CACHE:
        return _CACHE["data"]
    from biomamba.config import from_dict
    from biomamba.data.build import build
    from biomamba.data.config import DataConfig
    from biomamba.data.tokenizer import train_tokenizer
    from biomamba.demo_corpus import DEMO_DATA, demo_texts

    root = tmp_path_factory.mktemp("train-data")
    train_tokenizer(demo_texts(DEMO_DATA), vocab_size=384).save(root / "tok")
    cfg = from_dict(DataConfig, {
        "tokenizer": str(root / "tok" / "tokenizer.json"), "seq_len": 64, "val_sequences": 16, "workers": 1,
        "sources": [
            {"name": "pubmed", "format": "medline", "ratio": 0.8, "paths": [str(DEMO_DATA / "medline" / "*.xml.gz")]},
            {"name": "c4", "format": "jsonl", "ratio": 0.1, "paths": [str(DEMO_DATA / "c4" / "c4-demo.jsonl")]},
            {"name": "wikipedia", "format": "wikitext", "ratio": 0.1,
             "paths": [str(DEMO_DATA / "wikitext" / "wiki-demo.raw")]},
        ]})
    build(cfg, root / "data")
    _CACHE["data"] = root / "data"
    return root / "data"


def recipe(data: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast recipe (12 steps of 8 sequences × 64 tokens) with per-section overrides."""
    base: dict[str, Any] = {
        "data": str(data),
        "model": dict(SMALL_MODEL),
        "train": {"seed": 42, "max_steps": 12, "global_batch_size": 8, "per_device_train_batch_size": 4,
                  "precision": "fp32", "log_every": 1, "tensorboard": False},
        "optim": {"lr": 3e-3, "llrd": 0.9},
        "schedule": {"name": "wsd"},
        "ema": {"decay": 0.9},
        "eval": {"every": 6, "max_sequences": 4, "batch_size": 4, "at_start": False},
        "checkpoint": {"every": 4, "keep_last": 10, "export": []},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def write_recipe(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # the same threading in every run: bit-identical CPU arithmetic
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("WORLD_SIZE", None)
    return e


def pretrain_cmd(config: Path, out: Path, *extra: str, nproc: int = 1) -> list[str]:
    cli = ["-m", "biomamba.cli", "pretrain", "--config", str(config), "--out", str(out), *extra]
    if nproc == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli]


def run_pretrain(config: Path, out: Path, *extra: str, nproc: int = 1, timeout: float = 240) -> None:
    proc = subprocess.run(pretrain_cmd(config, out, *extra, nproc=nproc), env=env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def train_losses(out: Path) -> dict[int, float]:
    """step → training loss from RUN/metrics.jsonl (log_every 1)."""
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses[rec["step"]] = rec["loss"]
    return losses


def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted 1-process run that the resume and multi-process tests compare with."""
    if "reference" in _CACHE:
        return _CACHE["reference"]
    data = demo_data(tmp_path_factory)
    root = tmp_path_factory.mktemp("train-reference")
    config = write_recipe(root / "recipe.yaml", recipe(data))
    run_pretrain(config, root / "run")
    _CACHE["reference"] = root / "run"
    _CACHE["reference_config"] = config
    return root / "run"


def reference_config(tmp_path_factory) -> Path:
    reference_run(tmp_path_factory)
    return _CACHE["reference_config"]


def test_recipe_helper_is_valid(tmp_path):
    """The helper's recipe is a valid PretrainConfig (guards the other tests' setup)."""
    from biomamba.config import from_dict
    from biomamba.train.config import PretrainConfig

    cfg = from_dict(PretrainConfig, recipe(tmp_path))
    assert cfg.train.global_batch_size == 8 and cfg.model.vocab_size == "data"


def make_trainer(cfg_dict: dict[str, Any], out: Path, device: str = "cpu", objective=None, val_sources=()):
    """An in-process Trainer over the demo shards (no validation data unless ``val_sources``)."""
    import torch

    from biomamba.config import from_dict
    from biomamba.data.shards import PackedDataset, read_manifest
    from biomamba.train.config import PretrainConfig
    from biomamba.train.distributed import DistInfo
    from biomamba.train.objective import CausalLMObjective
    from biomamba.train.pretrain import build_model
    from biomamba.train.trainer import Trainer

    cfg = from_dict(PretrainConfig, cfg_dict)
    model = build_model(cfg.model, read_manifest(cfg.data), seed=cfg.train.seed)
    val = {s: PackedDataset(cfg.data, "val", source=s) for s in val_sources}
    out.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, model, objective or CausalLMObjective(), PackedDataset(cfg.data, "train"), val, out,
                   DistInfo(device=torch.device(device)), backend="triton" if device == "cuda" else "torch",
                   log=lambda s: None)
