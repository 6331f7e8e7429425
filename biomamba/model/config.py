"""Model configuration and presets matching the public ``state-spaces`` checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal


@dataclass
class ModelConfig:
    """Shape of a Mamba language model (Mamba2 by default, Mamba-1 with ``arch="mamba1"``).

    Field names follow the state-spaces ``config.json`` / ``ssm_cfg`` so that conversion is a
    rename, not a reinterpretation.
    """

    arch: Literal["mamba2", "mamba1"] = "mamba2"
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 16
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64  # Mamba2 only
    ngroups: int = 1  # Mamba2 only
    chunk_size: int = 256  # Mamba2 only: SSD chunk length
    dt_rank: int | None = None  # Mamba-1 only; None → ceil(d_model / 16)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    conv_bias: bool = True
    proj_bias: bool = False
    # Δ initialisation range and clamp (state-spaces defaults); dt_limit_max None = no upper clamp
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit_min: float = 0.0
    dt_limit_max: float | None = None

    def __post_init__(self) -> None:
        if self.d_model <= 0 or self.n_layer <= 0:
            raise ValueError("d_model and n_layer must be positive")
        if self.arch == "mamba2":
            if self.d_inner % self.headdim:
                raise ValueError(f"d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
            if self.nheads % self.ngroups:
                raise ValueError(f"nheads {self.nheads} is not a multiple of ngroups {self.ngroups}")
            if self.d_inner % self.ngroups:
                raise ValueError(f"d_inner {self.d_inner} is not a multiple of ngroups {self.ngroups}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size if m <= 1 else math.ceil(self.vocab_size / m) * m

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def conv_dim(self) -> int:
        """Channels through the causal conv: x, B and C for Mamba2; x alone for Mamba-1."""
        if self.arch == "mamba1":
            return self.d_inner
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def dt_limit(self) -> tuple[float, float]:
        return (self.dt_limit_min, math.inf if self.dt_limit_max is None else self.dt_limit_max)

    def num_parameters(self) -> int:
        """Parameter count (tied head counted once), computed from shapes alone."""
        d, di, n = self.d_model, self.d_inner, self.d_state
        if self.arch == "mamba2":
            h, g = self.nheads, self.ngroups
            in_proj = d * (2 * di + 2 * g * n + h)
            conv = self.conv_dim * self.d_conv + (self.conv_dim if self.conv_bias else 0)
            mixer = in_proj + conv + 3 * h + di + di * d  # dt_bias, A_log, D; gated norm; out_proj
        else:
            r = self.resolved_dt_rank
            mixer = (d * 2 * di + di * self.d_conv + (di if self.conv_bias else 0) + di * (r + 2 * n)
                     + r * di + di + di * n + di + di * d)
        per_layer = mixer + d
        embed = self.padded_vocab * d
        head = 0 if self.tie_embeddings else self.padded_vocab * d
        return embed + self.n_layer * per_layer + d + head


# state-spaces/mamba2-* shapes (config.json of each public checkpoint).
_MAMBA2 = {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48), "1.3b": (2048, 48), "2.7b": (2560, 64)}

PRESETS: dict[str, ModelConfig] = {
    **{size: ModelConfig(d_model=d, n_layer=n) for size, (d, n) in _MAMBA2.items()},
    # state-spaces/mamba-130m(-hf): the first BioMamba paper's Mamba-1 base model
    "mamba1-130m": ModelConfig(arch="mamba1", d_model=768, n_layer=24, d_state=16, pad_vocab_size_multiple=8),
    # for tests and the demo: real vocabulary, toy width
    "tiny": ModelConfig(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16),
    "tiny-mamba1": ModelConfig(arch="mamba1", d_model=64, n_layer=2, d_state=8),
}

HUB_IDS: dict[str, str] = {
    **{size: f"state-spaces/mamba2-{size}" for size in _MAMBA2},
    "mamba1-130m": "state-spaces/mamba-130m-hf",
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """A preset by name ("130m" … "2.7b", "mamba1-130m", "tiny"), optionally with fields replaced."""
    key = name.removeprefix("mamba2-")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[key], **overrides)
