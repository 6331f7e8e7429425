"""`biomamba convert SRC DST --format hf|native|state-spaces`: checkpoints between layouts.

SRC is a directory in any supported layout or a hub id. The tokenizer stored beside SRC (or
given with --tokenizer) is copied along, so DST is self-contained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biomamba.config import ConfigError


def main(argv: list[str]) -> int:
    from biomamba.data.tokenizer import load_tokenizer
    from biomamba.model.checkpoint import (export_hf, export_state_spaces, load_model,
                                           read_checkpoint_config, save_model)

    parser = argparse.ArgumentParser(prog="biomamba convert", description=__doc__)
    parser.add_argument("src", help="checkpoint directory (state-spaces, Hugging Face or native) or hub id")
    parser.add_argument("dst", type=Path, help="output directory (written atomically)")
    parser.add_argument("--format", required=True, choices=["hf", "native", "state-spaces"])
    parser.add_argument("--tokenizer", help="tokenizer.json (or its directory) to store beside the weights")
    parser.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep")
    args = parser.parse_args(argv)
    import torch

    _, layout, src_dir = read_checkpoint_config(args.src)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    model = load_model(src_dir, dtype=dtype, backend="torch")
    tok_path = args.tokenizer or (src_dir if (src_dir / "tokenizer.json").is_file() else None)
    tokenizer = load_tokenizer(tok_path) if tok_path else None
    if args.format == "hf":
        export_hf(model, args.dst, tokenizer=tokenizer)
    elif args.format == "native":
        save_model(model, args.dst, tokenizer=tokenizer)
    elif args.format == "state-spaces":
        if args.tokenizer:
            raise ConfigError("the state-spaces layout carries no tokenizer; drop --tokenizer")
        export_state_spaces(model, args.dst)
    print(f"converted {args.src} ({layout}, {model.config.arch}, {model.num_parameters() / 1e6:.1f} M parameters) "
          f"→ {args.dst} ({args.format})")
    return 0
