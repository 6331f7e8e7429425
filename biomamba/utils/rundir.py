"""Run directories: every verb's ``--out`` gets the resolved config and the environment."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from biomamba.config import save_config
from biomamba.utils.io import write_json


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "git_commit": git_commit(),
        "argv": sys.argv,
    }
    return info


def prepare_run_dir(out: Path | None, cfg: Any, verb: str) -> Path:
    """Create the run directory and save the resolved config and environment into it."""
    if out is None:
        raise ValueError(f"biomamba {verb} needs --out DIR (the run directory)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "environment.json", environment_info())
    return out
