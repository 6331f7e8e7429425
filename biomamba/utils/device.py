"""Device and dtype names from configs ("auto", "bf16", …) → torch objects."""

from __future__ import annotations


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str = "auto", device: str = "cpu"):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(table)}")
    return table[name]
