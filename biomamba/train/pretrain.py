"""Continued pretraining: the token shards, the model (public weights or a preset), the
causal-LM objective, and the shared trainer.

``run_pretrain(cfg, out)`` is what ``biomamba pretrain`` calls, on each rank under torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from biomamba.train.config import ModelSection, PretrainConfig


def build_model(section: ModelSection, manifest: dict[str, Any] | None = None, seed: int = 42):
    """Starting weights (``init_from``: a checkpoint or hub id) or a seeded random init of ``preset``.
    fp32 master weights on the CPU; the trainer moves them."""
    from biomamba.model import MambaLM, model_preset
    from biomamba.model.checkpoint import load_model

    if section.init_from:
        if section.overrides or section.vocab_size is not None:
            raise ValueError("model.overrides and model.vocab_size apply to a random init only; the shape of "
                             "init_from comes from its checkpoint")
        return load_model(section.init_from, device="cpu", dtype=torch.float32, backend="torch")
    overrides = dict(section.overrides)
    if section.vocab_size == "data":
        if manifest is None or "vocab_size" not in manifest:
            raise ValueError("model.vocab_size: data needs a data directory whose manifest records vocab_size")
        overrides["vocab_size"] = int(manifest["vocab_size"])
    elif section.vocab_size is not None:
        overrides["vocab_size"] = int(section.vocab_size)
    try:
        cfg = model_preset(section.preset, **overrides)
    except TypeError as exc:
        raise ValueError(f"model.overrides: {exc}") from None
    torch.manual_seed(seed)
    return MambaLM(cfg)


def _fingerprint(manifest: dict[str, Any]) -> str:
    from biomamba.train.trainer import data_fingerprint

    shards = manifest["splits"]["train"]["shards"]
    return data_fingerprint(manifest.get("seq_len"), [(s.get("file"), s.get("sha256"), s.get("sequences"))
                                                      for s in shards])


def run_pretrain(cfg: PretrainConfig, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from biomamba.utils.rundir import prepare_run_dir
    from biomamba.data.shards import PackedDataset, read_manifest
    from biomamba.train.distributed import setup_distributed
    from biomamba.train.objective import CausalLMObjective
    from biomamba.train.trainer import Trainer

    out = Path(out)
    info = setup_distributed(cfg.train.device)
    try:
        if info.is_main:
            prepare_run_dir(out, cfg, "pretrain")
        info.barrier()
        data_dir = Path(cfg.data).expanduser()
        manifest = read_manifest(data_dir)
        train = PackedDataset(data_dir, "train")
        val = {}
        if "val" in manifest["splits"]:
            sources = list(cfg.eval.sources) or list(PackedDataset(data_dir, "val").sources)
            val = {s: PackedDataset(data_dir, "val", source=s) for s in sources}
            val = {s: ds for s, ds in val.items() if len(ds)}
        elif cfg.eval.sources:
            raise ValueError(f"eval.sources given but {data_dir} has no validation split")
        model = build_model(cfg.model, manifest, seed=cfg.train.seed)
        top = int(manifest.get("max_token_id", manifest.get("vocab_size", 0) - 1))
        if top >= model.config.padded_vocab:
            raise ValueError(f"the data holds token id {top} but the model's vocabulary has "
                             f"{model.config.padded_vocab} rows: the data was tokenised for another model")
        tokenizer = _data_tokenizer(data_dir, manifest, cfg.model.init_from, log if info.is_main else None)
        trainer = Trainer(cfg, model, CausalLMObjective(), train, val, out, info, backend=cfg.model.backend,
                          fingerprint=_fingerprint(manifest), tokenizer=tokenizer, log=log)
        return trainer.fit()
    finally:
        info.close()


def _data_tokenizer(data_dir: Path, manifest: dict[str, Any], init_from: str | None,
                    log: Callable[[str], None] | None):
    """The tokenizer the shards were made with (stored beside them), to ship with the exported
    weights; warns when the starting checkpoint carries a different one."""
    from biomamba.data.tokenizer import load_tokenizer

    path = data_dir / manifest.get("tokenizer", {}).get("file", "tokenizer.json")
    if not path.is_file():
        return None
    tok = load_tokenizer(path)
    if init_from and log is not None:
        try:
            from biomamba.model.checkpoint import resolve_checkpoint_dir

            theirs = resolve_checkpoint_dir(init_from) / "tokenizer.json"
            if theirs.is_file() and load_tokenizer(theirs).fingerprint() != tok.fingerprint():
                log(f"WARNING: {init_from} carries a different tokenizer than the data in {data_dir}; "
                    f"the token ids may not mean what the model learned")
        except Exception:  # noqa: BLE001 - a warning only
            pass
    return tok
