"""Exponential moving average of the weights: ``ema ← decay · ema + (1 − decay) · θ`` after
every optimizer update (the papers: decay 0.999).

The shadow copies have the parameters' own layout (sharded DTensors under FSDP2), so
updating, checkpointing and swapping them in for evaluation need no communication.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, named_params: list[tuple[str, nn.Parameter]], decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        with torch.no_grad():
            self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.decay
        try:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)
        except (RuntimeError, NotImplementedError, TypeError):  # foreach not available for this tensor type
            for s, p in zip(self.shadow, self.params):
                s.lerp_(p.detach(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for n, s in zip(self.names, self.shadow):
            if state[n] is not s:
                s.copy_(state[n])

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the block with the EMA weights in the model; the training weights come back bit for bit."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)
