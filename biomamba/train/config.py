"""The training recipe as typed dataclasses (YAML + ``--key=value`` overrides).

``TrainRecipe`` holds what every training verb shares (the loop, optimiser, schedule,
EMA, validation, checkpoints, resume); ``PretrainConfig`` adds the model and the data.
Defaults are the second BioMamba paper's recipe at 130M; ``configs/pretrain/`` holds one
file per model size and the first paper's Mamba-1 recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class LoopConfig:
    seed: int = 42
    epochs: int = 3
    # > 0: stop after this many optimizer steps (the schedule spans them); 0: epochs decide
    max_steps: int = 0
    # sequences per optimizer step over all ranks (the papers' "effective batch")
    global_batch_size: int = 256
    # sequences per forward pass on each device; accumulation = global / (micro × ranks)
    per_device_train_batch_size: int = 8
    # auto: bf16 autocast on GPU (fp32 master weights), fp32 on CPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # auto: one process → single, several (torchrun) → ddp
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    device: str = "auto"
    # recompute each block's activations in the backward (less memory, ~30 % more compute)
    activation_checkpointing: bool = False
    # stop with an error after this many non-finite steps in a row (each one is skipped)
    max_nonfinite_in_a_row: int = 10
    log_every: int = 10
    # TensorBoard under RUN/tensorboard: auto = when the package is installed (said once if not)
    tensorboard: bool | str = "auto"
    # also log to experiment trackers: wandb (W&B; offline unless WANDB_API_KEY / `wandb login`),
    # mlflow (tracking_uri, default a file store under RUN/mlruns). pip install 'biomamba[track]'
    trackers: list[Literal["wandb", "mlflow"]] = field(default_factory=list)
    tracking_project: str = "biomamba"  # the W&B project / MLflow experiment
    tracking_uri: str | None = None  # MLflow tracking server (http://…); W&B: set WANDB_BASE_URL instead
    # dense bf16 peak of one device in TFLOP/s for MFU; null = looked up from the device name
    peak_tflops: float | None = None
    # replay each micro-step (forward + backward) from a CUDA graph: the eager step of a small
    # model is host-bound. auto: on for one CUDA device without activation checkpointing;
    # true: required (an error where it cannot run); false: eager
    cuda_graph: bool | str = "auto"

    def __post_init__(self) -> None:
        for key in ("epochs", "global_batch_size", "per_device_train_batch_size", "log_every",
                    "max_nonfinite_in_a_row"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if isinstance(self.tensorboard, str) and self.tensorboard != "auto":
            raise ValueError(f"tensorboard must be true, false or auto, got {self.tensorboard!r}")
        if isinstance(self.cuda_graph, str) and self.cuda_graph != "auto":
            raise ValueError(f"cuda_graph must be true, false or auto, got {self.cuda_graph!r}")


@dataclass
class OptimConfig:
    lr: float = 1.5e-6  # peak learning rate of the block named by lr_anchor (see llrd)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # not on norms, biases, A_log, D, dt_bias
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    llrd: float = 0.90  # layer-wise LR decay factor (1.0 = off)
    tied_embedding_lr: Literal["embedding", "head"] = "embedding"
    # Which block learns at ``lr`` under layer-wise decay (the papers do not say): "top" (the
    # last block, the final norm and an untied head; lower blocks slower), or "bottom" (the
    # first block; higher blocks faster). The authors' scripts pass one top rate (5e-6) at every
    # size; the paper's per-size rates equal that script's bottom-block rate at 370M and 2.7B.
    lr_anchor: Literal["top", "bottom"] = "top"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.llrd <= 1:
            raise ValueError(f"llrd must be in (0, 1], got {self.llrd}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0")


@dataclass
class ScheduleConfig:
    name: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup: float = 0.10  # fractions of the total optimizer steps
    stable: float = 0.65  # wsd only
    decay: float = 0.20  # wsd only; the rest of the run stays at the floor
    floor: float = 0.1  # end rate as a fraction of the peak
    min_lr: float | None = None  # end rate in absolute terms (replaces floor), e.g. 1e-5 for the first paper


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.999


@dataclass
class EvalConfig:
    every: int = 0  # validate every N optimizer steps (0: only at the end)
    at_start: bool = True  # validate the starting weights before the first step
    max_sequences: int = 1000  # per held-out source (0 = all of them)
    batch_size: int = 8  # sequences per forward pass on each device
    ema: bool = True  # also validate the EMA weights
    sources: list[str] = field(default_factory=list)  # empty: every source with held-out data


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N optimizer steps (0: at each validation and at the end)
    keep_last: int = 2  # newest checkpoints kept (the best one is kept besides)
    # a key of the validation records: val/<source>/loss, val/all/loss, val_ema/all/loss, …
    best_metric: str = "val/all/loss"
    best_mode: Literal["min", "max"] = "min"
    # weights written for downstream verbs (native layout + tokenizer): best, final, final_ema
    export: list[str] = field(default_factory=lambda: ["best", "final", "final_ema"])

    def __post_init__(self) -> None:
        bad = sorted(set(self.export) - {"best", "final", "final_ema"})
        if bad:
            raise ValueError(f"checkpoint.export: unknown {bad}; choose from best, final, final_ema")
        if not (self.best_metric.startswith("val/") or self.best_metric.startswith("val_ema/")):
            raise ValueError(f"checkpoint.best_metric {self.best_metric!r} must be a validation key "
                             f"(val/<source>/loss, val/all/ppl, val_ema/all/loss, …)")


@dataclass
class LoRAConfig:
    """Low-rank adapters instead of full-parameter training (``biomamba.train.lora``)."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["in_proj", "out_proj"])  # Linear module names

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora: rank >= 1, alpha > 0 and dropout in [0, 1) (got {self.rank}, {self.alpha}, "
                             f"{self.dropout})")
        if not self.targets:
            raise ValueError("lora.targets: name at least one module (in_proj, out_proj)")


@dataclass
class TrainRecipe:
    """The parts of a training run that every training verb shares."""

    train: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # false: refuse a run directory with checkpoints; auto: continue from the latest if any;
    # true: continue from the latest (must exist); a path: continue from that checkpoint
    resume: bool | str = False


@dataclass
class ModelSection:
    # random initialisation from this preset when init_from is null (130m … 2.7b, mamba1-130m, tiny)
    preset: str = "130m"
    # starting weights: a checkpoint directory (any layout) or hub id; distinct from resuming a run
    init_from: str | None = None
    # preset fields replaced (random init only), e.g. {d_model: 32, n_layer: 2}
    overrides: dict[str, Any] = field(default_factory=dict)
    # random init only: null = the preset's; "data" = the token shards' tokenizer vocabulary
    vocab_size: int | str | None = None
    backend: str = "auto"  # kernel backend: auto | torch | triton | mamba_ssm

    def __post_init__(self) -> None:
        if isinstance(self.vocab_size, str) and self.vocab_size != "data":
            raise ValueError(f"model.vocab_size must be an integer, null or \"data\", got {self.vocab_size!r}")


@dataclass
class PretrainConfig(TrainRecipe):
    model: ModelSection = field(default_factory=ModelSection)
    data: str = ""  # token-shard directory written by `biomamba data build`

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: the token-shard directory (from `biomamba data build`) is required")
