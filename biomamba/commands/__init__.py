"""One module per CLI verb; each exposes ``main(argv: list[str]) -> int``.

``parse_verb_args`` implements the shared contract: ``--config FILE``, ``--out DIR`` and
dotted ``--key=value`` overrides validated into the verb's config dataclass.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from biomamba.config import load_config

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
    """How a verb loads a checkpoint: shared by generate and serve."""

    model: str = ""  # checkpoint directory (any layout) or hub id
    tokenizer: str | None = None  # default: the checkpoint's own tokenizer.json, else GPT-NeoX
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    backend: str = "auto"  # kernel backend: auto | torch | triton | mamba_ssm
    state_dtype: str = "float32"  # decoding's SSM state: float32 | bfloat16 (half the memory)


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
