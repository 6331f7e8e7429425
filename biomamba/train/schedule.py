"""Learning-rate schedules as plain functions of the optimizer step.

``lr(step)`` is the peak-relative rate for the optimizer step with 0-based index ``step``
(the first update uses ``lr(0)``); layer-wise decay multiplies it per parameter group.

* ``wsd`` (second paper): linear warmup over ``warmup × T`` steps, ``stable × T`` steps at
  the peak, cosine decay to the floor over ``decay × T`` steps, then the floor for the rest.
* ``cosine`` (first paper): linear warmup, then cosine from the peak to the floor at the
  last step.
* ``constant``: linear warmup, then the peak.

Phase lengths are rounded half up. Warmup step ``s`` gets ``peak · (s + 1) / W`` (never
zero); decay step ``k`` (0-based within the decay) gets
``floor + (peak − floor) · ½ (1 + cos(π (k + 1) / D))``, so the last decay step lands on
the floor exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class Schedule:
    name: Literal["wsd", "cosine", "constant"]
    total_steps: int
    peak: float
    floor: float  # absolute learning rate at the end of the decay
    warmup: float = 0.10
    stable: float = 0.65
    decay: float = 0.20

    def __post_init__(self) -> None:
        if self.name not in ("wsd", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.name!r}; choose from wsd, cosine, constant")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        for key in ("warmup", "stable", "decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"schedule.{key} must be a fraction in [0, 1], got {getattr(self, key)}")
        if self.name == "wsd" and self.warmup + self.stable + self.decay > 1.0 + 1e-9:
            raise ValueError(f"schedule warmup + stable + decay = {self.warmup + self.stable + self.decay:g} > 1")
        if self.floor > self.peak:
            raise ValueError(f"the schedule floor {self.floor:g} is above the peak {self.peak:g}")

    @property
    def phases(self) -> tuple[int, int, int]:
        """(warmup, stable, decay) lengths in steps; for cosine the decay is everything after warmup."""
        t = self.total_steps
        w = min(_round(self.warmup * t), t)
        if self.name == "cosine":
            return w, 0, t - w
        if self.name == "constant":
            return w, t - w, 0
        s = min(_round(self.stable * t), t - w)
        d = min(_round(self.decay * t), t - w - s)
        return w, s, d

    def __call__(self, step: int) -> float:
        w, s, d = self.phases
        if step < w:
            return self.peak * (step + 1) / w
        if step < w + s:
            return self.peak
        if step < w + s + d:
            progress = (step - w - s + 1) / d
            return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak if self.name == "constant" else self.floor

    def state_dict(self) -> dict:
        return {"name": self.name, "total_steps": self.total_steps, "peak": self.peak, "floor": self.floor,
                "phases": list(self.phases)}
