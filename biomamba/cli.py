"""The ``biomamba`` command: one verb per stage of the method.

Every verb follows one contract so runs can be scripted and checked:
``--config FILE`` (YAML) plus dotted ``--key=value`` overrides, ``--out DIR`` for the run
directory (created; the resolved config is saved there as ``config.yaml``); data verbs write
``DIR/manifest.json``, training verbs ``DIR/metrics.jsonl`` and ``DIR/checkpoints/``, eval
verbs ``DIR/results.json``. Any failure exits non-zero with a one-line reason.

Verb implementations live in ``biomamba.commands.<verb>`` and are imported lazily so that
``biomamba --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb → one-line help. A test checks that each verb has its module in biomamba.commands.
VERBS: dict[str, str] = {
    "data": "build or inspect token shards from raw corpora (MEDLINE XML, C4, Wikipedia, JSONL)",
    "pretrain": "continued pretraining of a Mamba2 checkpoint on the mixed corpus",
    "sft": "supervised fine-tuning (instruction tokens masked) for yes/no QA or clinical writing",
    "eval": "evaluate: ppl | yesno | factoid | clinical",
    "generate": "generate text from a prompt or a JSONL file of prompts",
    "serve": "serve an OpenAI-compatible API (/v1/completions, /v1/chat/completions) with continuous batching",
    "convert": "convert checkpoints between state-spaces, Hugging Face and native layouts",
    "report": "write report.md and report.html for a run directory",
    "pipeline": "run the whole method end to end (the embedded demo with no arguments)",
    "study": "run a pipeline recipe over a grid of settings and compare the runs (tables, figures)",
    "env": "print versions, the device, and which kernel backend each op uses",
}


class CommandError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 1."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from biomamba import __version__

    parser = argparse.ArgumentParser(
        prog="biomamba",
        description="Adapt Mamba2 language models to biomedical and clinical text, and prove the result.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v:<10} {h}" for v, h in VERBS.items())
        + "\n\nEvery verb takes --config FILE, dotted --key=value overrides and --out DIR; "
          "`biomamba VERB --help` lists its config fields\n(type, default, meaning) and "
          "`--print_config` prints the resolved config. Also: python -m biomamba VERB ...",
    )
    parser.add_argument("verb", choices=list(VERBS), metavar="VERB", help="one of: " + ", ".join(VERBS))
    parser.add_argument("--version", action="version", version=f"biomamba {__version__}")
    if argv and argv[0] in ("--version", "-V"):
        print(f"biomamba {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        parser.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    module = importlib.import_module(f"biomamba.commands.{verb}")
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print(f"biomamba {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for every failure, traceback on demand
        from biomamba.config import ConfigError

        kind = "config error" if isinstance(exc, ConfigError) else type(exc).__name__
        print(f"biomamba {verb}: {kind}: {exc}", file=sys.stderr)
        if "BIOMAMBA_TRACEBACK" in __import__("os").environ:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
