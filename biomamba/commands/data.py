"""`biomamba data`: build, inspect or download training data.

    biomamba data build --config configs/data/paper.yaml --out data/paper [--key=value ...] [--on-error skip]
    biomamba data inspect DIR [--samples 3] [--verify] [--json]
    biomamba data download --config configs/data/paper.yaml [--key=value ...]

Overrides are dotted config keys (``--seq_len=128 --workers=8``); a source's fields are
addressed by its name or position: ``--sources.pubmed.paths=[/data/pubmed/*.xml.gz]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from biomamba.commands import split_overrides
from biomamba.config import ConfigError, _merge, load_config, parse_overrides, read_yaml

SUBVERBS = {
    "build": "raw corpora → cleaned, tokenised, packed, mixed token shards + manifest.json",
    "inspect": "counts, ratios, checks and a few decoded samples of a data directory",
    "download": "fetch the raw files of sources that have a download spec (NLM baseline, Hugging Face)",
}


def _apply_source_overrides(data: dict[str, Any], nested: dict[str, Any]) -> None:
    """``sources.<name|index>.<field>=value`` edits that source in the YAML's list."""
    sources = data.get("sources")
    if not isinstance(sources, list):
        raise ConfigError("sources.<name>.<key> overrides need a config file that lists sources")
    for ref, fields in nested.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"override sources.{ref}: use sources.{ref}.<key>=value")
        names = [s.get("name") if isinstance(s, dict) else None for s in sources]
        if ref in names:
            at = names.index(ref)
        elif ref.isdigit() and int(ref) < len(sources):
            at = int(ref)
        else:
            raise ConfigError(f"override sources.{ref}: no source named {ref!r} (sources: "
                              f"{', '.join(str(n) for n in names)})")
        sources[at] = _merge(sources[at], fields)


def load_data_config(config: Path | None, overrides: list[str]):
    """YAML + overrides → DataConfig (``sources.<name>.<key>`` overrides edit one source)."""
    from biomamba.data.config import DataConfig

    data: dict[str, Any] = read_yaml(config) if config is not None else {}
    plain = []
    for item in overrides:
        key = (item[2:] if item.startswith("--") else item).split("=", 1)[0]
        if key.startswith("sources."):
            _apply_source_overrides(data, parse_overrides([item])["sources"])
        else:
            plain.append(item)
    try:
        return load_config(DataConfig, None, plain, base=data)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{f' (from {config})' if config else ''}") from None


def _logging(quiet: bool) -> None:
    logger = logging.getLogger("biomamba.data")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[data] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _build(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba data build", description=SUBVERBS["build"],
                                     epilog="Any config field can be overridden with --key=value "
                                            "(sources.<name>.<key> for one source).")
    parser.add_argument("--config", type=Path, help="YAML data config (configs/data/*.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="output data directory (written atomically)")
    parser.add_argument("--on-error", dest="on_error", choices=["raise", "skip"],
                        help="broken files/records: stop with the file and record named (raise) or skip, count "
                             "and list them in the manifest (skip)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    if args.on_error:
        overrides.insert(0, f"on_error={args.on_error}")
    cfg = load_data_config(args.config, overrides)
    _logging(args.quiet)
    from biomamba.utils.rundir import environment_info
    from biomamba.data.build import build

    manifest = build(cfg, args.out, environment=environment_info)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    ratios = ", ".join(f"{n} {r:.3f}" for n, r in manifest["mixing"]["achieved_ratios"].items())
    print(f"wrote {args.out}: {train['sequences']:,} train + {val['sequences']:,} val sequences of "
          f"{manifest['seq_len']} tokens ({train['tokens']:,} training tokens; shares {ratios})")
    n_err = sum(s.get("n_errors", 0) for s in manifest["sources"].values())
    if n_err:
        print(f"skipped {n_err} broken file(s)/record(s): listed in {args.out}/manifest.json")
    return 0


def _inspect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba data inspect", description=SUBVERBS["inspect"])
    parser.add_argument("dir", type=Path, help="a data directory written by `biomamba data build`")
    parser.add_argument("--samples", type=int, default=3, help="decoded training rows to show (default 3)")
    parser.add_argument("--chars", type=int, default=400, help="characters per sample (default 400)")
    parser.add_argument("--verify", action="store_true", help="check every shard's size and sha256")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    from biomamba.data.inspect import print_summary, summary, verify

    info = summary(args.dir, samples=args.samples, chars=args.chars)
    problems = verify(args.dir) if args.verify else []
    if args.json:
        info = {k: v for k, v in info.items() if k != "manifest"}
        info["verify"] = {"checked": args.verify, "problems": problems}
        print(json.dumps(info, indent=2))
    else:
        print_summary(info)
        if args.verify:
            print("\nverify: " + ("all shards match the manifest" if not problems else "\n  ".join(["FAILED"] + problems)))
    return 1 if problems else 0


def _download(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba data download", description=SUBVERBS["download"])
    parser.add_argument("--config", type=Path, help="YAML data config")
    parser.add_argument("--quiet", action="store_true")
    args, rest = parser.parse_known_args(argv)
    cfg = load_data_config(args.config, split_overrides(parser, rest))
    _logging(args.quiet)
    from biomamba.data.download import download_source

    root = Path(cfg.download_dir).expanduser()
    for src in cfg.sources:
        if src.download.kind == "none":
            print(f"{src.name}: local paths, nothing to download")
            continue
        files = download_source(src, root)
        print(f"{src.name}: {len(files)} file(s) under {files[0].parent if files else root}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: biomamba data {build,inspect,download} ...\n")
        for name, text in SUBVERBS.items():
            print(f"  {name:<9} {text}")
        print("\n" + (__doc__ or "").split("\n\n", 1)[1].strip())
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    handlers = {"build": _build, "inspect": _inspect, "download": _download}
    if sub not in handlers:
        print(f"biomamba data: unknown action {sub!r}; choose from {', '.join(handlers)}", file=sys.stderr)
        return 2
    return handlers[sub](rest)
