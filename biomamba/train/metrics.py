"""Training metrics: ``RUN/metrics.jsonl`` (one JSON object per logged step or validation,
always), TensorBoard, W&B and MLflow when asked for (``train.tensorboard``, ``train.trackers``),
and a one-line progress report.

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


class TrackerError(RuntimeError):
    pass


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class _TensorBoard:
    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _WandB:
    def __init__(self, out: Path, project: str, config: dict[str, Any]):
        import os

        import wandb

        # no key, no network: write the run under RUN/wandb (`wandb sync` uploads it later)
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=project, name=out.name, dir=str(out), config=config, mode=mode,
                              resume="allow", id=_run_id(out))

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log(_scalars(record), step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, out: Path, project: str, uri: str | None, config: dict[str, Any]):
        import os

        uri = uri or (out / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store, behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.client = mlflow.MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        found = self.client.search_runs([experiment_id], f"tags.biomamba_run = '{_run_id(out)}'", max_results=1)
        self.run_id = found[0].info.run_id if found else self.client.create_run(
            experiment_id, run_name=out.name, tags={"biomamba_run": _run_id(out)}).info.run_id
        if not found:
            for key, value in list(_flat(config).items())[:500]:  # MLflow caps params a run
                self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, record: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key.replace("/", "."), value, now, step) for key, value in _scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _run_id(out: Path) -> str:
    """One tracker run per run directory, so a resumed run continues the same curve."""
    import hashlib

    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


class MetricsLogger:
    """Writes on the main rank only; other ranks hold a no-op logger. A tracker asked for by
    name that is not installed stops the run at its start, saying what to install; TensorBoard
    on ``auto`` is used when installed, and its absence is said once."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool | str = "auto", trackers: list[str] | None = None,
                 project: str = "biomamba", tracking_uri: str | None = None, config: dict[str, Any] | None = None,
                 log=print):
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers: list[Any] = []
        if not enabled:
            return
        out = Path(out)
        if tensorboard:
            try:
                self.trackers.append(_TensorBoard(out))
            except ImportError:
                if tensorboard is True:
                    raise TrackerError("train.tensorboard is true but the tensorboard package is not installed "
                                       "(pip install 'biomamba[track]')") from None
                log("note: tensorboard is not installed: metrics go to metrics.jsonl only "
                    "(pip install 'biomamba[track]', or train.tensorboard=false to silence this)")
        for name in trackers or []:
            try:
                self.trackers.append(_WandB(out, project, config or {}) if name == "wandb"
                                     else _MLflow(out, project, tracking_uri, config or {}))
            except ImportError as exc:
                raise TrackerError(f"train.trackers names {name} but it is not installed ({exc.name}): "
                                   f"pip install 'biomamba[track]'") from exc

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
        step = int(record.get("step", 0))
        for tracker in self.trackers:
            tracker.log(record, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
