"""`biomamba eval ppl|yesno|factoid|clinical`: evaluate a checkpoint; results in OUT/results.json.

    biomamba eval ppl --model M --data DATA_DIR --out DIR        token shards (tokenizer-controlled)
    biomamba eval ppl --config configs/eval/ppl.yaml --out DIR   raw text, any causal LMs (contextual)
    biomamba eval yesno --config configs/eval/yesno.yaml --model M --out DIR
    biomamba eval factoid --config configs/eval/factoid.yaml --model M --out DIR
    biomamba eval clinical --config configs/eval/clinical.yaml --model M --out DIR

Thresholds, checkpoints and prompts are chosen with ``--split=validation`` (carved from the
training data); the test split is meant to be scored once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomamba.cli import CommandError
from biomamba.commands import Progress, explain_missing_task_files, parse_verb_args, verb_parser
from biomamba.model.checkpoint import load_model_and_tokenizer
from biomamba.utils.device import resolve_device, resolve_dtype
from biomamba.utils.rundir import prepare_run_dir
from biomamba.eval.run import SUBVERB_TASKS, PerplexityConfig, TaskEvalConfig
from biomamba.utils.io import atomic_write_text, write_json


@dataclass
class TaskEvalVerbConfig(TaskEvalConfig):
    label: str | None = None  # the model's name in tables (default: the --model value)
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    backend: str = "auto"  # kernel backend: auto | torch | triton | mamba_ssm


@dataclass
class PplVerbConfig(PerplexityConfig):
    model: str | None = None  # one of ours (shorthand for models: [M])
    data: str | None = None  # token shards from `biomamba data build`: scored per source
    split: str = "val"  # the shards' split (data only)
    max_sequences: int | None = None  # per source, shards only
    tokenizer: str | None = None  # default: the checkpoint's own
    label: str | None = None  # the model's name in tables (default: the --model value)
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    backend: str = "auto"  # kernel backend: auto | torch | triton | mamba_ssm


class _WithProgress:
    """An evaluation model (Scorer / Generator) that reports its progress: each request list is
    handed over in chunks of whole batches, so the batches, and with them the results, are the
    ones the model would have formed itself."""

    def __init__(self, lm: Any, label: str):
        self._lm, self._label = lm, label
        self._chunk = max(1, int(getattr(lm, "batch_size", 8) or 8)) * 4
        self._windows: Progress | None = None  # perplexity: windows scored (their number is known only at the end)

    def _chunked(self, what: str, items: list, call) -> list:
        out: list = []
        with Progress(f"{self._label} {what}", total=len(items), unit="requests") as progress:
            for start in range(0, len(items), self._chunk):
                out.extend(call(items[start:start + self._chunk]))
                progress.set(len(out))
        return out

    def loglikelihood(self, requests: Any) -> list[float]:
        return self._chunked("loglikelihood", list(requests), self._lm.loglikelihood)

    def generate(self, prompts: Any, max_new_tokens: int, stop: Any = ()) -> list[str]:
        return self._chunked("generate", list(prompts), lambda part: self._lm.generate(part, max_new_tokens, stop))

    def nll_windows(self, windows: Any) -> list[list[float]]:
        if self._windows is None:
            self._windows = Progress(f"{self._label} perplexity", unit="windows")
        out = self._lm.nll_windows(windows)
        self._windows.update(len(out))
        return out

    def close(self) -> None:
        if self._windows is not None:
            self._windows.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._lm, name)  # AttributeError as the model's: hasattr() answers for it
        if name == "generate_ranked":
            return lambda prompts, *args, **kw: self._chunked(
                "generate_ranked", list(prompts), lambda part: attr(part, *args, **kw))
        return attr


def _load_lm(name: str, cfg: Any):
    """Ours (any checkpoint layout) or, failing that, a transformers causal LM with its tokenizer."""
    from biomamba.eval.lm import from_mamba, from_transformers
    from biomamba.model.checkpoint import CheckpointError, read_checkpoint_config

    try:
        read_checkpoint_config(name)  # config files only: is it a Mamba checkpoint?
        ours = True
    except CheckpointError:
        ours = False
    if ours:
        model, tok = load_model_and_tokenizer(name, getattr(cfg, "tokenizer", None), cfg.device, cfg.dtype,
                                              cfg.backend)
        return from_mamba(model, tok, batch_size=cfg.batch_size)
    from biomamba.model.external import load_causal_lm

    device = resolve_device(cfg.device)
    try:
        model, tok, _ = load_causal_lm(name, device, resolve_dtype(cfg.dtype, str(device)))
    except CheckpointError as exc:
        raise CommandError(f"cannot load {name!r} as ours or as a transformers causal LM: {exc}") from exc
    return from_transformers(model, tok, batch_size=cfg.batch_size)


def _ppl(cfg: PplVerbConfig, out: Path) -> dict[str, Any]:
    from biomamba.eval.perplexity import shard_nll
    from biomamba.eval.run import perplexity_table, run_perplexity

    models = list(cfg.models) + ([cfg.model] if cfg.model else [])
    if not models:
        raise CommandError("eval ppl needs --model M (or models: [...] in the config)")
    if cfg.data is None and not cfg.sources:
        raise CommandError("eval ppl needs --data DATA_DIR (token shards) or sources: [...] (raw text)")
    rows: dict[str, dict[str, Any]] = {}
    if cfg.data is not None:
        for name in models:
            model, _ = load_model_and_tokenizer(name, cfg.tokenizer, cfg.device, cfg.dtype, cfg.backend)
            rows[cfg.label or name if len(models) == 1 else name] = shard_nll(
                model, cfg.data, cfg.split, cfg.batch_size, cfg.max_sequences)
    else:
        documents = {s.name: _source_documents(s) for s in cfg.sources}
        for name in models:
            lm = _WithProgress(_load_lm(name, cfg), f"eval ppl {name}")
            # windows within the model's positions (BioGPT: 1,024), the stride shrunk alike
            window = min(cfg.window, lm.max_length or cfg.window)
            stride = min(cfg.stride, max(1, window // 2)) if window < cfg.window else cfg.stride
            rows[cfg.label or name if len(models) == 1 else name] = run_perplexity(
                name, lm, documents, window, stride, cfg.prefix_eos)
            lm.close()
    table = perplexity_table(rows)
    print(table)
    results = {"task": "ppl", "mode": "shards" if cfg.data else "raw_text",
               "per_model": {m: {s: t.as_dict() for s, t in per.items()} for m, per in rows.items()}}
    if len(rows) == 1:
        label, per = next(iter(rows.items()))
        results["label"] = label
        results["per_source"] = results["per_model"][label]
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.txt", table + "\n")
    return results


def _source_documents(source: Any) -> list[str]:
    """A raw-text source's documents; a path that matches nothing says which source and what to pass."""
    from biomamba.eval.run import read_documents

    try:
        return read_documents(source)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"sources[{source.name}].paths: {exc} (relative paths are relative to the working directory, "
            f"{Path.cwd()}). Put the files there or list yours in the config: sources: [{{name: {source.name}, "
            f"paths: [FILE, ...], format: {source.format}}}]") from None


def evaluate_config(cfg: TaskEvalVerbConfig, out: Path | None = None, lm: Any = None,
                    print_table: bool = True) -> dict[str, Any]:
    """What ``biomamba eval yesno|factoid|clinical`` runs once its config is resolved, and what
    ``biomamba.evaluate`` calls: the run directory (``out``: config.yaml, environment.json,
    results.json, results.txt; None: nothing written), the model (``lm``: an evaluation model
    already built, else loaded from ``cfg.model``), the task's split scored with progress lines."""
    from biomamba.eval.evaluate import format_table
    from biomamba.eval.run import run_task_eval

    if not cfg.model:
        raise CommandError("evaluation needs a model: --model (a checkpoint directory or hub id)")
    if out is not None:
        prepare_run_dir(out, cfg, "eval")
    lm = _load_lm(cfg.model, cfg) if lm is None else lm
    with explain_missing_task_files(cfg.task, cfg.paths, cfg.data_root):
        results = run_task_eval(cfg, _WithProgress(lm, f"eval {cfg.task}"), out_dir=None, print_table=print_table)
    results["label"] = cfg.label or cfg.model
    if out is not None:
        write_json(out / "results.json", results)
        atomic_write_text(out / "results.txt", format_table(results) + "\n")
    return results


def _usage() -> str:
    return f"usage: biomamba eval {{ppl,{','.join(SUBVERB_TASKS)}}} [--help] ...\n\n{__doc__}"


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        print("`biomamba eval SUB --help` lists SUB's config fields.")
        return 0
    if not argv or argv[0] not in ("ppl", *SUBVERB_TASKS):
        print(_usage(), file=sys.stderr)
        raise CommandError(f"choose one of: ppl, {', '.join(SUBVERB_TASKS)}")
    sub, rest = argv[0], argv[1:]
    parser = verb_parser(f"eval {sub}", __doc__)
    parser.add_argument("--model")
    flags = {"model": "model"}
    if sub == "ppl":
        parser.add_argument("--data")
        flags["data"] = "data"
        v = parse_verb_args(parser, rest, PplVerbConfig, flag_fields=flags)
        out = prepare_run_dir(v.out, v.config, f"eval {sub}")
        _ppl(v.config, out)
        return 0
    v = parse_verb_args(parser, rest, TaskEvalVerbConfig, flag_fields=flags,
                        base={"task": SUBVERB_TASKS[sub][0]} if SUBVERB_TASKS[sub] else None)
    cfg: TaskEvalVerbConfig = v.config
    if SUBVERB_TASKS[sub] and cfg.task not in SUBVERB_TASKS[sub] and not cfg.task.endswith((".yaml", ".yml")):
        raise CommandError(f"eval {sub} runs the tasks {', '.join(SUBVERB_TASKS[sub])} (or a task YAML), "
                           f"not {cfg.task!r}")
    if not cfg.model:
        raise CommandError(f"eval {sub} needs --model (a checkpoint directory or hub id)")
    if v.out is None:
        raise CommandError(f"eval {sub} needs --out DIR (the run directory)")
    evaluate_config(cfg, v.out)
    return 0
