"""One module per CLI verb; each exposes ``main(argv: list[str]) -> int``.

``parse_verb_args`` implements the shared contract: ``--config FILE``, ``--out DIR``, dotted
``--key=value`` overrides validated into the verb's config dataclass, and ``--print_config``.
``--help`` lists every field of that dataclass (type, default, the comment beside it in the
code), generated here from the dataclass itself so that it cannot drift from what the verb
accepts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import os
import sys
import textwrap
import time
import tokenize
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, TextIO, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from biomamba.config import load_config, to_dict

T = TypeVar("T")


@dataclass
class VerbArgs:
    config: Any
    out: Path | None
    args: argparse.Namespace


def verb_parser(verb: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"biomamba {verb}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any config field can be overridden with --key=value (dotted for nested keys).",
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--out", type=Path, help="run directory (created; the resolved config is saved there)")
    add_print_config(parser)
    return parser


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print_config", "--print-config", dest="print_config", action="store_true",
                        help="print the resolved config (defaults ← --config ← overrides) as YAML and exit")


def print_config(cfg: Any) -> None:
    """The resolved config as the YAML a run directory's config.yaml holds (usable as --config)."""
    sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    sys.stdout.flush()


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
    ``--model`` land in the validated config like any override. ``--help`` lists the config's
    fields; ``--print_config`` prints the resolved config and exits 0.
    """
    attach_config_help(parser, cfg_cls, base)
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    for dest, key in (flag_fields or {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.insert(0, f"--{key}={value}")
    cfg = load_config(cfg_cls, args.config, overrides, base=base)
    if getattr(args, "print_config", False):
        print_config(cfg)
        raise SystemExit(0)
    return VerbArgs(config=cfg, out=args.out, args=args)


# ---- --help from the config dataclass ----------------------------------------------------------
def attach_config_help(parser: argparse.ArgumentParser, cls: type, base: dict[str, Any] | None = None,
                       note: str = "") -> None:
    """``parser``'s help ends with every field of ``cls`` (``config_help``), then ``note``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    plain_help = parser.format_help

    def format_help() -> str:  # the field list is built only when help is shown (it reads the sources)
        parser.epilog = config_help(cls, base) + (f"\n\n{note}" if note else "")
        return plain_help()

    parser.format_help = format_help  # type: ignore[method-assign]


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Field name → the comment written beside it (same line) or just above it, for a dataclass
    and its dataclass bases. Empty where the source cannot be read (a frozen install)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments: dict[int, str] = {}  # line number → comment text
        try:
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.COMMENT:
                    comments[tok.start[0]] = tok.string.lstrip("#").strip()
        except (tokenize.TokenError, SyntaxError):
            continue
        for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, at = [], node.lineno - 1
            while at >= 1 and lines[at - 1].strip().startswith("#"):
                above.insert(0, comments.get(at, ""))
                at -= 1
            text = " ".join(part for part in (*above, comments.get(node.end_lineno or node.lineno, "")) if part)
            out[node.target.id] = text or out.get(node.target.id, "")
    return out


def type_text(tp: Any) -> str:
    """A type hint as a reader writes it: ``int``, ``str | None``, ``list[str]``, ``{a|b}``."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in get_args(tp))
    if origin is Literal:
        return "{" + "|".join(str(a) for a in get_args(tp)) + "}"
    if origin in (list, tuple, dict):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]" if args else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _value_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, str) and value == "":
        return '""'
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def config_fields(cls: type, defaults: Any = None, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field of config dataclass ``cls``,
    nested dataclasses flattened (their defaults taken from ``defaults``, an instance or a
    mapping, so that a verb's own section defaults show); a list of dataclasses shows its
    items' fields under ``key[].``."""
    hints = get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if isinstance(defaults, dict) and f.name in defaults:
            value = defaults[f.name]
        elif defaults is not None and not isinstance(defaults, dict) and hasattr(defaults, f.name):
            value = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            value = dataclasses.MISSING
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from config_fields(tp, value if value is not dataclasses.MISSING else None, key + ".")
            continue
        yield key, type_text(tp), _value_text(value), comments.get(f.name, "")
        item = get_args(tp)[0] if get_origin(tp) is list and get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):
            yield from config_fields(item, None, key + "[].")


def config_help(cls: type, base: dict[str, Any] | None = None, width: int = 100) -> str:
    """The ``--help`` section listing every config field of ``cls`` (``base``: the verb's own defaults)."""
    lines = [f"config fields ({cls.__name__}): set them in --config FILE.yaml or as --key=value "
             "(dotted for nested keys, e.g. --optim.lr=1e-4); --print_config shows the result"]
    for key, tp, default, text in config_fields(cls, base):
        lines.append(f"  --{key}: {tp} = {default}")
        if text:
            lines.append(textwrap.fill(text, width=width, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


# ---- progress ----------------------------------------------------------------------------------
def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}B" if prefix else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A progress line on stderr: ``label: done/total unit (rate, ETA)``.

    On a terminal the line is redrawn in place at most every 0.5 s; elsewhere (a log file, a
    pipe) a line is written every 30 s, so that short runs stay quiet and long ones leave a trace
    in their logs. ``BIOMAMBA_PROGRESS_S`` sets that interval (0: every update), ``=off`` silences it.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        setting = os.environ.get("BIOMAMBA_PROGRESS_S", "")
        self.off = setting.lower() == "off"
        try:
            self.every = float(setting) if setting and not self.off else (0.5 if self.tty else 30.0)
        except ValueError:
            self.every = 0.5 if self.tty else 30.0
        self.start = self.last = time.monotonic()
        self.done = 0
        self.drawn = False

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.off and now - self.last >= self.every:
            self._draw(now)

    def text(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        unit = f" {self.unit}" if self.unit and self.unit != "B" else ""
        done = _human(self.done, self.unit)
        rate_text = f"{_human(rate, self.unit)}/s" if self.unit == "B" else f"{rate:.1f}{unit}/s"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = _duration(left) if left != float("inf") else "?"
            return (f"{self.label}: {done}/{_human(self.total, self.unit)}{unit} "
                    f"({100 * self.done / self.total:.0f} %, {rate_text}, {_duration(elapsed)} elapsed, ETA {eta})")
        return f"{self.label}: {done}{unit} ({rate_text}, {_duration(elapsed)} elapsed)"

    def _draw(self, now: float) -> None:
        line = self.text(now)
        self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.stream.flush()
        self.last, self.drawn = now, True

    def close(self) -> None:
        """The final count, where a line was drawn before (a run too short for one stays silent)."""
        if self.drawn and not self.off:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- task files that are not there ------------------------------------------------------------
def missing_task_file_message(task_name: str, paths: dict[str, Any], data_root: str | Path | None,
                              error: str) -> str | None:
    """For a task loader's "no file matches X": which of the task's file roles X is, and what to
    pass instead (None when X is none of them)."""
    from biomamba.tasks import get_task

    try:
        task = get_task(task_name)
    except Exception:  # noqa: BLE001 - an unknown task has its own error elsewhere
        return None
    for role, spec in {**task.paths, **paths}.items():
        items = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
        for item in items:
            full = os.path.expanduser(str(item))
            if data_root is not None and not os.path.isabs(full):
                full = os.path.join(str(data_root), full)
            if full in error:
                root = Path(str(data_root or ".")).expanduser()
                relative = "" if root.is_absolute() else f" (relative to the working directory, {Path.cwd()})"
                where = (f"data_root {str(data_root)!r} does not exist{relative}" if not root.is_dir()
                         else f"nothing matches it under data_root {str(data_root)!r}{relative}")
                return (f"task {task.name}: file role paths.{role} = {item!r}: {where}. Pass --data_root=DIR "
                        f"(the directory that holds {item}) or --paths.{role}=FILE (a file, glob or list; "
                        f"relative paths are under data_root)")
    return None


@contextmanager
def explain_missing_task_files(task_name: str, paths: dict[str, Any], data_root: str | Path | None) -> Iterator[None]:
    """Re-raise a task's "no file matches" naming the file role, the pattern and what to pass."""
    try:
        yield
    except FileNotFoundError as exc:
        message = missing_task_file_message(task_name, paths, data_root, str(exc))
        if message is None:
            raise
        raise FileNotFoundError(message) from None
