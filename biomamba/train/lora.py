"""LoRA: low-rank adapters on the projections, ``y = W x + (α/r) · B A x`` (Hu et al., 2021).

Our own layer rather than peft's: the adapted module stays our ``Linear`` (same state-dict
names, so checkpoints, FSDP2's per-block sharding and the CUDA-graph micro-step see ordinary
parameters), the mixer's fused op still receives ``in_proj``'s output, and packed documents
are untouched (the adapter is per token). Only ``lora_A`` / ``lora_B`` train; ``B`` starts at
zero, so step 0 is the base model exactly.

Decoding reads the projection weights directly (``norm_linear`` fuses them with the norm), so
a model with unmerged adapters refuses to decode: :func:`merge_lora` folds ``(α/r) B A`` into
``W`` and gives back plain ``Linear`` modules. Exports are merged checkpoints; the adapters are
also written in peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``, keys
``base_model.model.<module>.lora_A.weight``), which peft loads onto the Hugging Face export.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biomamba.model.linear import Linear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


class LoRALinear(Linear):
    """A frozen ``Linear`` plus a trainable rank-``r`` update."""

    def __init__(self, base: Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises; B = 0
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self) -> Tensor:
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return (self.weight.float() + delta).to(self.weight.dtype)


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Wrap every ``Linear`` whose name ends in one of ``targets`` (e.g. ``in_proj``); freeze
    every other parameter. Returns the wrapped modules' names."""
    if rank < 1:
        raise ValueError(f"lora.rank must be >= 1, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and isinstance(module, Linear) and not isinstance(module, LoRALinear):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, leaf, LoRALinear(module, rank, alpha, dropout))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"lora.targets {targets} match no Linear module of the model "
                         f"(Mamba2: in_proj, out_proj)")
    return wrapped


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain ``Linear`` modules back (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            plain = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device="meta")
            plain.weight = nn.Parameter(module.merged_weight(), requires_grad=True)
            if module.bias is not None:
                plain.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=True)
            parent_name, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merged_state(state: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """A state dict with adapters (``X.lora_A``, ``X.lora_B``) → the plain one (``X.weight`` merged)."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for key in state:
        if key.endswith(".lora_A"):
            module = key[: -len(".lora_A")]
            a, b, w = state[key].float(), state[f"{module}.lora_B"].float(), state[f"{module}.weight"]
            out[f"{module}.weight"] = (w.float() + scaling * (b @ a)).to(w.dtype)
    return out


def adapter_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapters of a state dict under peft's names."""
    out = {}
    for key, value in state.items():
        if key.endswith((".lora_A", ".lora_B")):
            module, part = key.rsplit(".", 1)
            out[f"{_PEFT_PREFIX}{module}.{part}.weight"] = value.detach().contiguous()
    return out


def save_adapter(state: dict[str, Tensor], directory: str | Path, *, rank: int, alpha: float, dropout: float,
                 targets: list[str], base_model: str | None = None) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in peft's layout (atomic)."""
    from safetensors.torch import save_file

    from biomamba.utils.io import atomic_dir

    directory = Path(directory)
    tensors = adapter_tensors(state)
    if not tensors:
        raise ValueError("the state holds no LoRA adapters")
    with atomic_dir(directory) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / ADAPTER_WEIGHTS))
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
                  "lora_dropout": dropout, "target_modules": sorted(set(targets)), "bias": "none",
                  "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": base_model}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Apply the adapters saved in ``directory`` (peft layout, ours or peft's own) to ``model``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory}: peft_type {config.get('peft_type')!r}, only LORA is read")
    wrapped = apply_lora(model, list(config["target_modules"]), int(config["r"]), float(config["lora_alpha"]))
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    expected = {f"{_PEFT_PREFIX}{m}.lora_{p}.weight" for m in wrapped for p in "AB"}
    found = {k.replace(".default.weight", ".weight") for k in tensors}
    if found != expected:
        raise ValueError(f"{directory}: adapters for other modules: missing {sorted(expected - found)[:3]}, "
                         f"unexpected {sorted(found - expected)[:3]}")
    with torch.no_grad():
        for key, value in tensors.items():
            module, part = key.replace(".default.weight", ".weight")[len(_PEFT_PREFIX):].rsplit(".", 2)[:2]
            getattr(model.get_submodule(module), part).copy_(value)
    return wrapped


def lora_summary(model: nn.Module) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"trainable_parameters": trainable, "total_parameters": total,
            "trainable_fraction": trainable / total if total else 0.0}
