"""One module per CLI verb; each exposes ``main(argv: list[str]) -> int``.

``parse_verb_args`` implements the shared contract: ``--config FILE``, ``--out DIR`` and
dotted ``--key=value`` overrides validated into the verb's config dataclass.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from biomamba.config import load_config, save_config
from biomamba.utils.io import write_json

T = TypeVar("T")


@dataclass
class VerbArgs:
    config: Any
    out: Path | None
    args: argparse.Namespace


def verb_parser(verb: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"biomamba {verb}", description=description,
        epilog="Any config field can be overridden with --key=value (dotted for nested keys).",
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--out", type=Path, help="run directory (created; the resolved config is saved there)")
    return parser


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
    """Leftover arguments → ``--key=value`` overrides (``--key value`` allowed too)."""
    out, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--"):
            parser.error(f"unexpected argument {item!r}")
        if "=" not in item:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                parser.error(f"override {item} needs a value: use {item}=VALUE")
            item = f"{item}={rest[i + 1]}"
            i += 1
        out.append(item)
        i += 1
    return out


@dataclass
class ModelArgs:
    """How a verb loads a checkpoint: shared by generate, serve and eval."""

    model: str = ""  # checkpoint directory (any layout) or hub id
    tokenizer: str | None = None  # default: the checkpoint's own tokenizer.json, else GPT-NeoX
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    backend: str = "auto"  # kernel backend: auto | torch | triton | mamba_ssm


def parse_verb_args(parser: argparse.ArgumentParser, argv: list[str], cfg_cls: type[T],
                    base: dict[str, Any] | None = None,
                    flag_fields: dict[str, str] | None = None) -> VerbArgs:
    """Parse known flags; every remaining ``--key=value`` is a config override.

    ``flag_fields`` maps argparse dests to config keys, so that convenience flags such as
    ``--model`` land in the validated config like any override.
    """
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    for dest, key in (flag_fields or {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.insert(0, f"--{key}={value}")
    cfg = load_config(cfg_cls, args.config, overrides, base=base)
    return VerbArgs(config=cfg, out=args.out, args=args)


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


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, device: str = "auto", dtype: str = "auto",
                             backend: str = "auto"):
    """The model of a checkpoint (any layout or hub id) and its tokenizer: the one named, else the
    ``tokenizer.json`` stored beside the weights, else the GPT-NeoX default."""
    from biomamba.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
    from biomamba.model.checkpoint import load_model, resolve_checkpoint_dir

    dev = resolve_device(device)
    directory = resolve_checkpoint_dir(model)
    lm = load_model(directory, device=dev, dtype=resolve_dtype(dtype, dev), backend=backend).eval()
    if tokenizer is None:
        tokenizer = str(directory) if (directory / "tokenizer.json").is_file() else DEFAULT_TOKENIZER
    return lm, load_tokenizer(tokenizer)
