"""AdamW parameter groups: layer-wise learning-rate decay (LLRD) and selective weight decay.

Layer-wise decay with factor ``f`` over ``N`` blocks (the papers: 0.90 at 130M, 0.95
above): block ``i`` learns at ``peak · f^(N−1−i)``, the embedding at ``peak · f^N`` (the
lowest), the final norm and an untied head at the peak. With ``anchor="bottom"`` every rate
is divided by ``f^(N−1)``, so that block 0 learns at ``peak`` instead (``OptimConfig.lr_anchor``). All ``state-spaces`` Mamba2
checkpoints tie the head to the embedding: one matrix cannot have two rates, so the tied
matrix gets the embedding's rate by default (``tied_embedding_lr: head`` gives it the
head's instead).

No weight decay on norms, biases, ``A_log``, ``D`` and ``dt_bias`` (and Mamba-1's
``dt_proj.bias``); everything else (projections, conv weights, the embedding) decays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

_NO_DECAY_SUFFIXES = ("A_log", "D", "dt_bias", "bias")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def no_weight_decay(name: str) -> bool:
    """True for parameters excluded from weight decay (norms, biases, A_log, D, dt_bias)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _NO_DECAY_SUFFIXES:
        return True
    owner = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    return "norm" in owner  # backbone.layers.i.norm, mixer.norm (gated), backbone.norm_f


def layer_lr_scale(name: str, n_layer: int, factor: float, tied: bool, tied_embedding_lr: str = "embedding") -> float:
    """The LLRD multiplier of parameter ``name`` (a dotted name as in ``MambaLM.named_parameters``)."""
    match = _LAYER.search(name)
    if match:
        i = int(match.group(1))
        return factor ** (n_layer - 1 - i)
    if "embedding" in name or (tied and name.endswith("lm_head.weight")):
        if tied and tied_embedding_lr == "head":
            return 1.0
        return factor ** n_layer
    return 1.0  # norm_f, untied lm_head


@dataclass
class ParamInfo:
    name: str
    lr_scale: float
    weight_decay: float


def param_table(named_params: Iterable[tuple[str, nn.Parameter]], n_layer: int, *, weight_decay: float,
                llrd: float = 1.0, tied: bool = True, tied_embedding_lr: str = "embedding",
                anchor: str = "top") -> list[ParamInfo]:
    """Per trainable parameter: its LLRD multiplier and weight decay (for logging and tests)."""
    if anchor not in ("top", "bottom"):
        raise ValueError(f"lr anchor must be top or bottom, got {anchor!r}")
    lift = 1.0 / llrd ** (n_layer - 1) if anchor == "bottom" else 1.0
    rows = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        rows.append(ParamInfo(name, layer_lr_scale(name, n_layer, llrd, tied, tied_embedding_lr) * lift,
                              0.0 if no_weight_decay(name) else weight_decay))
    return rows


def _strip(name: str) -> str:
    # names seen through wrappers (LossModule.model., DDP module.) → the model's own names
    for prefix in ("module.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def is_tied(module: nn.Module) -> bool:
    """True when the head's weight is the embedding's (one parameter under two names)."""
    owners: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(_strip(name))
    return any(any(n.endswith("lm_head.weight") for n in names) and any("embedding" in n for n in names)
               for names in owners.values())


def param_groups(module: nn.Module, n_layer: int, *, weight_decay: float, llrd: float = 1.0,
                 tied: bool | None = None, tied_embedding_lr: str = "embedding", anchor: str = "top") -> list[dict]:
    """Optimizer groups, one per (LLRD multiplier, weight decay); each carries ``lr_scale``.
    ``tied`` None: detected from the module."""
    groups: dict[tuple[float, float], dict] = {}
    if tied is None:
        tied = is_tied(module)
    named = [(_strip(n), p) for n, p in module.named_parameters()]
    by_name = dict(named)
    for info in param_table(named, n_layer, weight_decay=weight_decay, llrd=llrd, tied=tied,
                            tied_embedding_lr=tied_embedding_lr, anchor=anchor):
        key = (info.lr_scale, info.weight_decay)
        group = groups.setdefault(key, {"params": [], "lr_scale": info.lr_scale, "weight_decay": info.weight_decay})
        group["params"].append(by_name[info.name])
    # deterministic order: lowest rate first, decayed before not decayed
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], -k[1]))]


def build_optimizer(module: nn.Module, n_layer: int, *, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, llrd: float = 1.0, tied: bool | None = None,
                    tied_embedding_lr: str = "embedding", anchor: str = "top") -> torch.optim.AdamW:
    groups = param_groups(module, n_layer, weight_decay=weight_decay, llrd=llrd, tied=tied,
                          tied_embedding_lr=tied_embedding_lr, anchor=anchor)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr × lr_scale``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
