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
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from biomamba.commands import Progress, add_print_config, attach_config_help, print_config, split_overrides
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


def _parser(sub: str) -> argparse.ArgumentParser:
    from biomamba.data.config import DataConfig

    parser = argparse.ArgumentParser(prog=f"biomamba data {sub}", description=SUBVERBS[sub])
    attach_config_help(parser, DataConfig, note="A source's fields are overridden as --sources.<name>.<key>=value.")
    return parser


def _paths_hint(exc: Exception) -> str:
    """A source path that matches nothing: the builder names the source and the pattern; add what to pass."""
    return (f"{exc}. Relative paths are relative to the working directory ({Path.cwd()}); pass the files with "
            f"--sources.<name>.paths=[FILE_OR_GLOB, ...] or edit the config's sources")


class _DownloadWatch:
    """Progress of downloads we do not drive ourselves (worker threads, the hub client): the bytes
    under a directory, polled every ``every_s`` seconds from a background thread."""

    def __init__(self, root: Path, label: str, every_s: float = 2.0):
        import threading

        self.root, self.every_s = root, every_s
        self.progress = Progress(label, unit="B")
        self.start_bytes = self._bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _bytes(self) -> int:
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:  # renamed or removed by the downloader meanwhile
                    pass
        return total

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.progress.set(self._bytes() - self.start_bytes)

    def __enter__(self) -> "_DownloadWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.progress.close()


def _build(argv: list[str]) -> int:
    parser = _parser("build")
    parser.add_argument("--config", type=Path, help="YAML data config (configs/data/*.yaml)")
    parser.add_argument("--out", type=Path, help="output data directory (written atomically; required)")
    parser.add_argument("--on-error", dest="on_error", choices=["raise", "skip"],
                        help="broken files/records: stop with the file and record named (raise) or skip, count "
                             "and list them in the manifest (skip)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    add_print_config(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    if args.on_error:
        overrides.insert(0, f"on_error={args.on_error}")
    cfg = load_data_config(args.config, overrides)
    if args.print_config:
        print_config(cfg)
        return 0
    if args.out is None:
        parser.error("the following arguments are required: --out")
    _logging(args.quiet)
    from biomamba.utils.rundir import environment_info
    from biomamba.data.build import build

    from biomamba.data.records import DataError

    root = Path(cfg.download_dir).expanduser()
    downloads = any(src.download.kind != "none" and not src.paths for src in cfg.sources)
    if downloads:
        root.mkdir(parents=True, exist_ok=True)
    watch = _DownloadWatch(root, "data build: downloaded") if downloads else nullcontext()
    try:
        with watch:
            manifest = build(cfg, args.out, environment=environment_info)
    except DataError as exc:
        if exc.reason != "no_files":
            raise
        raise DataError(_paths_hint(exc), reason=exc.reason) from None
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
    parser = _parser("download")
    parser.add_argument("--config", type=Path, help="YAML data config")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    add_print_config(parser)
    args, rest = parser.parse_known_args(argv)
    cfg = load_data_config(args.config, split_overrides(parser, rest))
    if args.print_config:
        print_config(cfg)
        return 0
    _logging(args.quiet)
    from biomamba.data.download import download_source

    root = Path(cfg.download_dir).expanduser()
    for src in cfg.sources:
        if src.download.kind == "none":
            print(f"{src.name}: local paths, nothing to download")
            continue
        (root / src.name).mkdir(parents=True, exist_ok=True)
        with _DownloadWatch(root / src.name, f"data download {src.name}"):
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
