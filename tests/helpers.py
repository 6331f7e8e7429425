"""Small helpers shared by tests."""

from __future__ import annotations

import torch

from biomamba.model import MambaLM


def randomize_weights(model: MambaLM, seed: int = 0) -> MambaLM:
    """Non-trivial random values for every parameter (norm weights ≠ 1, D ≠ 1, spread of A and Δ),
    so that a parity test exercises each of them."""
    g = torch.Generator().manual_seed(seed)

    def rand(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=g)))
            elif name.endswith(("dt_bias", "dt_proj.bias")):
                p.copy_(rand(p) * 0.5 - 2.0)
            elif name.endswith("norm.weight") or "norm_f" in name:
                p.copy_(1 + 0.2 * rand(p))
            elif "embedding" in name:
                p.copy_(0.05 * rand(p))
            else:
                p.copy_(rand(p) / p.shape[-1] ** 0.5)
    return model


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
