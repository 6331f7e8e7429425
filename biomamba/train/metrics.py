"""Training metrics: ``RUN/metrics.jsonl`` (one JSON object per logged step or validation),
TensorBoard when the ``tensorboard`` package is installed, and a one-line progress report.

Training records: ``step``, ``epoch``, ``loss`` (token-weighted mean over the steps since
the last record), ``lr`` (the peak-layer rate), ``grad_norm``, ``tokens`` (seen so far),
``tokens_per_s``, ``mfu`` (GPU, bf16), ``step_s``, ``mem_gb`` (GPU peak), ``skipped``
(non-finite steps so far). Validation records: ``step`` plus ``val/<source>/loss``,
``val/<source>/ppl``, ``val/<source>/tokens`` per held-out source and ``val/all/…`` over all
of them; ``val_ema/…`` the same for the EMA weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from biomamba.utils.io import append_jsonl, atomic_write_text

# dense bf16 peak of one device, FLOP/s (tensor cores, no sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12,
                   "A800": 312e12, "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "A10": 125e12, "L4": 121e12,
                   "4090": 165e12, "3090": 71e12}


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def flops_per_token(n_params: int) -> float:
    """Training FLOPs per token ≈ 6 × parameters (forward 2, backward 4; the tied head's matmul
    counted once through the embedding). The SSD scan itself is not counted, so MFU is a
    slight underestimate."""
    return 6.0 * n_params


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds + 0.5)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(rec: dict[str, Any], total_steps: int, eta_s: float) -> str:
    parts = [f"step {rec['step']}/{total_steps}", f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.3e}"]
    tps = rec.get("tokens_per_s")
    if tps is not None:
        parts.append(f"{tps / 1e3:.1f}k tok/s" if tps >= 1e3 else f"{tps:.0f} tok/s")
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    if rec.get("grad_norm") is not None:
        parts.append(f"gnorm {rec['grad_norm']:.3g}")
    if rec.get("skipped"):
        parts.append(f"skipped {rec['skipped']}")
    parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes on the main rank only; other ranks hold a no-op logger."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool = True):
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        if self.tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
