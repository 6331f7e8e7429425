"""One trainer for continued pretraining and SFT.

``objective`` (what is predicted) · ``optim`` (AdamW groups with layer-wise LR decay) ·
``schedule`` (WSD, cosine, constant) · ``ema`` · ``checkpoint`` (sharded, atomic,
resumable) · ``distributed`` (single, DDP, FSDP2) · ``metrics`` · ``trainer`` (the loop) ·
``pretrain`` (the continued-pretraining entry point).
"""

from biomamba.train.config import (CheckpointConfig, EMAConfig, EvalConfig, LoopConfig, ModelSection, OptimConfig,
                                   PretrainConfig, ScheduleConfig, TrainRecipe)
from biomamba.train.objective import CausalLMObjective, LossModule, MaskedLabelObjective, next_token_targets
from biomamba.train.schedule import Schedule

__all__ = ["TrainRecipe", "PretrainConfig", "LoopConfig", "OptimConfig", "ScheduleConfig", "EMAConfig", "EvalConfig",
           "CheckpointConfig", "ModelSection", "CausalLMObjective", "MaskedLabelObjective", "LossModule",
           "next_token_targets", "Schedule", "Trainer", "run_pretrain"]


def __getattr__(name: str):
    if name == "Trainer":
        from biomamba.train.trainer import Trainer

        return Trainer
    if name == "run_pretrain":
        from biomamba.train.pretrain import run_pretrain

        return run_pretrain
    raise AttributeError(name)
