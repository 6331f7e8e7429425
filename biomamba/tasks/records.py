"""Your own data as a task: JSONL, JSON, CSV / TSV, Parquet or a ``datasets`` dataset, with a
field mapping, for SFT and evaluation (loader ``records``).

A task YAML names the files by split (``paths.train``, ``paths.test``, optionally
``paths.validation``) and how a record becomes an example:

* ``fields: {prompt: instruction, response: output}``: example field ← record field (dotted
  for nested JSON, e.g. ``meta.pmid``); the template and target use the example fields.
* ``messages: conversations``: a chat record (a list of ``{role, content}``, or ShareGPT's
  ``{from, value}``) is rendered with ``chat`` (a line format per role and the answer cue):
  everything before the last assistant turn is the prompt, that turn the response, so only it
  is supervised.

The rules are the paper tasks': validation is carved from training data (seeded) unless given;
a training record that is a test record (same id, or same normalised prompt) is removed and
counted; a record missing a field is an error naming the file and the record, or, with
``on_error: skip``, skipped and counted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from biomamba.tasks.common import (Example, FileRoles, check_loader_args, count, drop_overlap, split_off)

FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "datasets")
DEFAULT_CHAT = {"system": "{content}\n", "user": "User: {content}\n", "assistant": "Assistant: {content}\n",
                "cue": "Assistant:"}
_ROLES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}  # ShareGPT's names
_ARGS = frozenset({"format", "fields", "messages", "chat", "id_field", "val_fraction", "seed", "on_error",
                   "split_name"})


class RecordError(ValueError):
    pass


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower().removesuffix(".gz")
    for ext, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                      (".tsv", "tsv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return kind
    if path.is_dir():
        return "datasets"  # a dataset saved with datasets' save_to_disk
    raise RecordError(f"{path}: cannot tell the format from the name; set loader_args.format ({', '.join(FORMATS)})")


def _open_text(path: Path):
    import gzip

    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_records(path: Path, fmt: str = "auto", split_name: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; ``where`` names the file and the line / row for error messages."""
    kind = _format_of(path, fmt)
    if kind == "jsonl":
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise RecordError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc
    elif kind == "json":
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        rows = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise RecordError(f"{path}: expected a list of records (or {{\"data\": [...]}})")
        for n, row in enumerate(rows):
            yield f"{path}[{n}]", row
    elif kind in ("csv", "tsv"):
        with _open_text(path) as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t" if kind == "tsv" else ","), 2):
                yield f"{path}:{n}", row
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {n}", row
    elif kind == "datasets":
        yield from _datasets_records(path, split_name)
    else:
        raise RecordError(f"{path}: unknown format {kind!r}; choose from {', '.join(FORMATS)}")


def _datasets_records(spec: Path, split_name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A dataset saved with ``save_to_disk`` (Arrow + JSON: nothing executes on reading)."""
    import datasets

    loaded = datasets.load_from_disk(str(spec))
    if isinstance(loaded, datasets.DatasetDict):
        if split_name not in loaded:
            raise RecordError(f"{spec}: no split {split_name!r} (has {', '.join(loaded)})")
        loaded = loaded[split_name]
    for n, row in enumerate(loaded):
        yield f"{spec} row {n}", row


def _get(record: Mapping[str, Any], dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def render_chat(messages: Any, chat: Mapping[str, str], where: str) -> tuple[str, str]:
    """(prompt, response): the turns before the last assistant turn, then its text."""
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: messages must be a non-empty list of turns")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RecordError(f"{where}: turn {i} is not an object")
        role = m.get("role", m.get("from"))
        role = _ROLES.get(role, role)
        content = m.get("content", m.get("value"))
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise RecordError(f"{where}: turn {i} needs a role (system/user/assistant) and text content")
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        raise RecordError(f"{where}: the last turn must be the assistant's (it is the response)")
    prompt = "".join(chat[role].format(content=content) for role, content in turns[:-1]) + chat["cue"]
    return prompt, " " + turns[-1][1]


def _examples(paths: list[Path], args: Mapping[str, Any], split: str, stats: dict[str, Any]) -> list[Example]:
    fields: Mapping[str, str] = args.get("fields") or {}
    messages, chat = args.get("messages"), {**DEFAULT_CHAT, **(args.get("chat") or {})}
    id_field, on_error = args.get("id_field"), args.get("on_error", "raise")
    if not fields and not messages:
        raise RecordError("loader records: set loader_args.fields (example field: record field) or messages")
    if on_error not in ("raise", "skip"):
        raise RecordError(f"loader records: on_error must be raise or skip, not {on_error!r}")
    out: list[Example] = []
    for path in paths:
        for where, record in read_records(path, args.get("format", "auto"), args.get("split_name", split)):
            try:
                if not isinstance(record, Mapping):
                    raise RecordError(f"{where}: a record must be an object, got {type(record).__name__}")
                ex: Example = {}
                for name, source in fields.items():
                    try:
                        ex[name] = _get(record, source)
                    except KeyError:
                        raise RecordError(f"{where}: no field {source!r} (for {name}); the record has "
                                          f"{', '.join(map(str, record))}") from None
                if messages:
                    try:
                        turns = _get(record, messages)
                    except KeyError:
                        raise RecordError(f"{where}: no field {messages!r} (the messages)") from None
                    ex["prompt"], ex["response"] = render_chat(turns, chat, where)
            except RecordError:
                if on_error == "raise":
                    raise
                count(stats, "bad_records_skipped")
                continue
            ex["id"] = str(_get(record, id_field)) if id_field else where
            ex.setdefault("source", path.name)
            # the text compared across splits: the prompt, else every mapped field but the answer
            ex["_text"] = str(ex.get("prompt", " ".join(str(v) for k, v in ex.items()
                                                            if k not in ("id", "source", "response", "answer"))))
            out.append(ex)
    count(stats, f"{split}_records", len(out))
    return out


def task_records(split: str, paths: FileRoles, args: Mapping[str, Any], stats: dict[str, Any]) -> list[Example]:
    """Loader ``records``: ``test`` from ``paths.test``; ``validation`` from ``paths.validation``
    or carved (seeded) from training; ``train`` from ``paths.train`` less every test record."""
    check_loader_args("records", args, _ARGS)
    if split == "test":
        return _examples(paths["test"], args, "test", stats)
    train = _examples(paths["train"], args, "train", stats)
    if "test" in paths:
        train = drop_overlap(train, _examples(paths["test"], args, "test", {}), stats, text_key="_text")
    if "validation" in paths:
        val = _examples(paths["validation"], args, "validation", stats)
        train = drop_overlap(train, val, {}, text_key="_text")
        return train if split == "train" else val
    kept, val = split_off(train, args.get("val_fraction", 0.1), seed=args.get("seed", 42))
    return kept if split == "train" else val
