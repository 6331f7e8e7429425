"""Supervised fine-tuning: a task's training split, rendered with the task's own template
(the one evaluation uses), instruction tokens masked out of the loss, and the shared trainer.

``run_sft(cfg, out)`` is what ``biomamba sft`` calls. Checkpoints are chosen on the task's
validation split (carved from training data), never on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from biomamba.train.config import CheckpointConfig, EvalConfig, OptimConfig, ScheduleConfig, TrainRecipe


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, llrd=1.0)


def _sft_schedule() -> ScheduleConfig:
    return ScheduleConfig(name="cosine", warmup=0.1, floor=0.1)


def _sft_eval() -> EvalConfig:
    return EvalConfig(every=0, at_start=True, max_sequences=0, ema=False)


def _sft_checkpoint() -> CheckpointConfig:
    return CheckpointConfig(best_metric="val/validation/loss", export=["best", "final"])


@dataclass
class SFTConfig(TrainRecipe):
    """Full-parameter SFT of ``model`` on ``task`` (a built-in task name or a task YAML)."""

    model: str = ""  # starting checkpoint: any layout or hub id
    tokenizer: str | None = None  # default: the checkpoint's own
    task: str = "yesno_mix"
    data_root: str = "data"  # the task's relative paths are under it (default: ./data, as the paper recipes lay it out)
    paths: dict[str, Any] = field(default_factory=dict)  # override the task's file roles
    task_args: dict[str, Any] = field(default_factory=dict)  # override the task's loader_args
    max_len: int = 1024  # tokens per example; the context is cut to fit, never the question or answer cue
    packing: bool = False  # pack examples into rows of max_len (seq_idx keeps them apart)
    backend: str = "auto"
    optim: OptimConfig = field(default_factory=_sft_optim)
    schedule: ScheduleConfig = field(default_factory=_sft_schedule)
    eval: EvalConfig = field(default_factory=_sft_eval)
    checkpoint: CheckpointConfig = field(default_factory=_sft_checkpoint)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: the starting checkpoint (directory or hub id) is required")
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")


def run_sft(cfg: SFTConfig, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from biomamba.utils.rundir import prepare_run_dir
    from biomamba.data.tokenizer import load_tokenizer
    from biomamba.model.checkpoint import load_model, resolve_checkpoint_dir
    from biomamba.tasks import get_task
    from biomamba.tasks.prompts import collate, pack
    from biomamba.train.distributed import setup_distributed
    from biomamba.train.objective import MaskedLabelObjective
    from biomamba.train.trainer import Trainer, collate_rows, data_fingerprint
    from biomamba.utils.io import write_json

    out = Path(out)
    info = setup_distributed(cfg.train.device)
    try:
        if info.is_main:
            prepare_run_dir(out, cfg, "sft")
        info.barrier()
        ckpt_dir = resolve_checkpoint_dir(cfg.model)
        tok_path = cfg.tokenizer or (ckpt_dir if (ckpt_dir / "tokenizer.json").is_file() else None)
        if tok_path is None:
            raise ValueError(f"{cfg.model} carries no tokenizer.json: pass --tokenizer")
        tokenizer = load_tokenizer(tok_path)
        task = get_task(cfg.task)
        stats: dict[str, dict[str, int]] = {"train": {}, "validation": {}}
        train = task.sft_examples("train", tokenizer, cfg.max_len, cfg.paths, cfg.data_root, stats["train"],
                                  **cfg.task_args)
        val = task.sft_examples("validation", tokenizer, cfg.max_len, cfg.paths, cfg.data_root,
                                stats["validation"], **cfg.task_args)
        if not train:
            raise ValueError(f"task {task.name}: no training examples (counts: {stats['train']})")
        if cfg.packing:
            train_rows, val_rows = pack(train, cfg.max_len, tokenizer.pad_id), pack(val, cfg.max_len, tokenizer.pad_id)
            collate_fn = collate_rows
        else:
            train_rows, val_rows = train, val
            collate_fn = partial(collate, pad_id=tokenizer.pad_id)
        if info.is_main:
            write_json(out / "sft_data.json", {"task": task.name, "counts": stats, "train_rows": len(train_rows),
                                               "validation_rows": len(val_rows), "packing": cfg.packing})
            log(f"sft {task.name}: {len(train)} training examples ({len(train_rows)} rows), {len(val)} validation; "
                f"counts {stats['train']}")
        model = load_model(ckpt_dir, device="cpu", dtype=torch.float32, backend="torch")
        fingerprint = data_fingerprint(task.name, cfg.max_len, cfg.packing, len(train),
                                       sum(len(e.input_ids) for e in train))
        trainer = Trainer(cfg, model, MaskedLabelObjective(), train_rows, {"validation": val_rows} if val_rows else {},
                          out, info, collate=collate_fn, backend=cfg.backend, fingerprint=fingerprint,
                          tokenizer=tokenizer, log=log)
        return trainer.fit()
    finally:
        info.close()
