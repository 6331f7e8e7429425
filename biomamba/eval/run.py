"""What the ``biomamba eval`` verbs run, once the model is loaded: configs, results files and
tables. The verb loads the checkpoint, wraps it with ``biomamba.eval.lm.from_mamba`` (or
``from_transformers``) and calls :func:`run_task_eval` or :func:`run_perplexity`.

Results go to ``OUT/results.json``; the table goes to stdout and ``OUT/results.txt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from biomamba.eval.evaluate import evaluate_task, format_table
from biomamba.eval.metrics import NLLTotals
from biomamba.eval.perplexity import text_nll

log = logging.getLogger(__name__)

# the eval sub-verbs and the tasks each may run
SUBVERB_TASKS = {
    "yesno": ("yesno_mix", "pubmedqa", "bioasq_yesno"),
    "factoid": ("bioasq_factoid",),
    "clinical": ("clinical_completion", "clinical_discharge"),
    "task": (),  # any task: a built-in name or a task YAML (your own data: loader records)
}


@dataclass
class TaskEvalConfig:
    """``biomamba eval yesno|factoid|clinical``."""

    model: str = ""  # checkpoint directory or hub id (loaded by the verb)
    tokenizer: str | None = None  # default: the checkpoint's own
    task: str = "yesno_mix"  # a built-in task name or a task YAML file
    split: Literal["validation", "test"] = "test"  # choose checkpoints/prompts on validation; test once
    data_root: str = "data"  # the task's relative paths are under it (default: ./data, as the paper recipes lay it out)
    paths: dict[str, Any] = field(default_factory=dict)  # override the task's file roles
    task_args: dict[str, Any] = field(default_factory=dict)  # override the task's loader_args
    modes: list[Literal["loglikelihood", "generate"]] = field(default_factory=lambda: ["loglikelihood", "generate"])
    max_new_tokens: int | None = None  # default: the task's
    max_examples: int | None = None  # a seeded sample, for smoke runs
    batch_size: int = 8
    keep_text: bool | None = None  # generated text in results.json (default: QA yes, clinical no)
    seed: int = 42


def run_task_eval(cfg: TaskEvalConfig, lm, out_dir: str | Path | None = None, print_table: bool = True) -> dict[str, Any]:
    """Load the task's split, score it with ``lm`` (a Scorer and Generator), write results."""
    from biomamba.tasks import get_task
    from biomamba.tasks.common import cap_samples

    task = get_task(cfg.task)
    stats: dict[str, int] = {}
    examples = task.load(cfg.split, paths=cfg.paths, data_root=cfg.data_root, stats=stats, **cfg.task_args)
    examples = cap_samples(examples, cfg.max_examples, seed=cfg.seed)
    scorer = lm if (task.kind != "generation" and "loglikelihood" in cfg.modes) or task.kind == "factoid" else None
    generator = lm if task.kind != "choice" or "generate" in cfg.modes else None
    results = evaluate_task(task, examples, scorer=scorer, generator=generator,
                            max_new_tokens=cfg.max_new_tokens, keep_text=cfg.keep_text)
    results["split"] = cfg.split
    results["model"] = cfg.model
    results["data"] = stats
    table = format_table(results)
    if out_dir is not None:
        from biomamba.utils.io import atomic_write_text, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results)
        atomic_write_text(out / "results.txt", table + "\n")
    if print_table:
        print(table)
    return results


# ---- perplexity over raw text ------------------------------------------------------------------
@dataclass
class TextSource:
    name: str
    paths: list[str]
    format: str = "auto"  # a biomamba.data reader: jsonl | text | wikitext | medline | parquet | auto
    max_documents: int | None = None


@dataclass
class PerplexityConfig:
    """``biomamba eval ppl`` on raw text: each model with its own tokenizer, same documents."""

    models: list[str] = field(default_factory=list)  # ours or any transformers causal LM
    sources: list[TextSource] = field(default_factory=list)
    window: int = 1024
    stride: int = 512
    batch_size: int = 8
    prefix_eos: bool = True  # condition each document's first token on EOS, so every token is scored


def read_documents(source: TextSource, root: str | Path | None = None) -> list[str]:
    """The documents of a source (the data module's readers; records they skip are not scored)."""
    from biomamba.data.readers import Doc, read_records
    from biomamba.tasks.common import resolve_paths

    docs: list[str] = []
    for path in resolve_paths(source.paths, root):
        for event in read_records(path, source.format):
            if isinstance(event, Doc) and event.text.strip():
                docs.append(event.text)
                if source.max_documents is not None and len(docs) >= source.max_documents:
                    return docs
    return docs


def run_perplexity(model_name: str, lm, documents: dict[str, list[str]], window: int = 1024, stride: int = 512,
                   prefix_eos: bool = True) -> dict[str, NLLTotals]:
    """Token-weighted NLL totals per source for one model (``lm.nll_windows`` and its tokenizer)."""
    prefix = lm.tokenizer.eos_id if prefix_eos else None
    out = {}
    for name, docs in documents.items():
        out[name] = text_nll(docs, lm.tokenizer, lm.nll_windows, window=window, stride=stride, prefix_id=prefix)
        log.info("ppl %s on %s: %s", model_name, name, out[name].as_dict())
    return out


def perplexity_table(rows: dict[str, dict[str, NLLTotals]]) -> str:
    """One line per (model, source): tokens, perplexity per token, bits per byte, word perplexity.
    Perplexities per token differ with the tokenizer; bits per byte compare fairly."""
    head = ["model", "source", "tokens", "ppl/token", "bits/byte", "word ppl", "nonfinite"]
    lines = [head]
    for model, per_source in rows.items():
        for source, t in per_source.items():
            lines.append([model, source, str(t.tokens), f"{t.perplexity:.3f}", f"{t.bits_per_byte:.4f}",
                          f"{t.word_perplexity:.3f}", str(t.nonfinite)])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
