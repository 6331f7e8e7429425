"""Tasks as data: a YAML file names a loader, the files it reads, the prompt template (with
its truncatable field), the target, the answer choices or generation settings, and the
metric (lm-evaluation-harness style). ``get_task(name)`` reads ``biomamba/tasks/defs/NAME.yaml``;
``get_task(path)`` reads any YAML file of the same shape.

The one place a task becomes code is its loader (below): a function from (split, files,
arguments) to examples. Everything else is rendering with the template, and scoring in
``biomamba.eval.evaluate``. The same template renders a task for SFT and for evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from biomamba.tasks import clinical, factoid, records, yesno
from biomamba.tasks.common import Example, count, resolve_paths
from biomamba.tasks.prompts import Encoded, Prompt, Template, TokenizerLike, encode_example

log = logging.getLogger(__name__)

DEFS_DIR = Path(__file__).resolve().parent / "defs"
SPLITS = ("train", "validation", "test")


@dataclass
class GenerationSpec:
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])


@dataclass
class Task:
    """One downstream task, read from YAML (see ``defs/``)."""

    name: str
    kind: Literal["choice", "factoid", "generation"]
    loader: str
    template: Template
    metric: Literal["classification", "factoid", "rouge"]
    description: str = ""
    paths: dict[str, Any] = field(default_factory=dict)  # file role → path/glob/list, relative to data_root
    loader_args: dict[str, Any] = field(default_factory=dict)
    target: str = " {answer}"  # the response, rendered from the example's fields
    choices: dict[str, str] = field(default_factory=dict)  # label → continuation scored by log-likelihood
    parse: Literal["yesno", "factoid", "none"] = "none"  # how a generation becomes a prediction
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    group_by: str | None = "source"  # example field to report metrics per value of (besides overall)

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(f"task {self.name}: unknown loader {self.loader!r}; known: {sorted(LOADERS)}")
        if self.kind == "choice" and len(self.choices) < 2:
            raise ValueError(f"task {self.name}: a choice task needs at least two choices")

    # ---- data -------------------------------------------------------------------------------
    def load(self, split: str, paths: dict[str, Any] | None = None, data_root: str | Path | None = None,
             stats: dict[str, Any] | None = None, **loader_args: Any) -> list[Example]:
        """Examples of ``split`` ("train", "validation" — carved from training data — or "test").
        ``paths`` override the task's file roles; relative paths are under ``data_root``.
        ``stats`` (a dict) receives counts of what was read and dropped, and why."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        stats = {} if stats is None else stats
        files = {**self.paths, **(paths or {})}
        args = {**self.loader_args, **loader_args}
        resolved = _Paths(files, data_root)
        examples = LOADERS[self.loader](split, resolved, args, stats)
        stats["examples"] = len(examples)
        log.info("task %s split %s: %d examples (%s)", self.name, split, len(examples),
                 ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
        return examples

    # ---- rendering ---------------------------------------------------------------------------
    def prompt(self, example: Example) -> Prompt:
        return Prompt(self.template, example)

    def render(self, example: Example) -> tuple[str, str]:
        """(prompt, target) of one example: the same for SFT and evaluation."""
        return self.prompt(example).render(), self.target.format(**example)

    def context_cut(self, example: Example) -> bool:
        """Whether rendering shortens the example's truncatable field (``max_field_chars``)."""
        t = self.template
        return bool(t.truncate and t.max_field_chars is not None and len(str(example[t.truncate])) > t.max_field_chars)

    def encode(self, example: Example, tokenizer: TokenizerLike, max_len: int | None = None,
               add_eos: bool = True) -> Encoded:
        """Token ids and labels (``-100`` on the prompt) for SFT; the context is cut to fit ``max_len``."""
        return encode_example(self.prompt(example), self.target.format(**example), tokenizer, max_len, add_eos)

    def sft_examples(self, split: str, tokenizer: TokenizerLike, max_len: int | None = None,
                     paths: dict[str, Any] | None = None, data_root: str | Path | None = None,
                     stats: dict[str, Any] | None = None, **loader_args: Any) -> list[Encoded]:
        """Load ``split`` and encode it. Over-long examples (too long even with the context
        empty) are dropped and counted; examples whose context was cut are counted."""
        stats = {} if stats is None else stats
        out = []
        for ex in self.load(split, paths, data_root, stats, **loader_args):
            for unit in (factoid.expand_contexts(ex) if "contexts" in ex else [ex]):
                enc = self.encode(unit, tokenizer, max_len)
                count(stats, "context_truncated", int(enc.truncated_tokens > 0))
                count(stats, "not_prefix", int(not enc.prefix_ok))
                if enc.overlong:
                    count(stats, "overlong_dropped")
                    continue
                enc.meta["id"] = unit.get("id")
                out.append(enc)
        stats["encoded"] = len(out)
        return out


class _Paths:
    """A task's file roles, resolved on use (a role the split does not need may be absent)."""

    def __init__(self, files: dict[str, Any], root: str | Path | None):
        self.files, self.root = files, root

    def __getitem__(self, role: str) -> list[Path]:
        if role not in self.files or self.files[role] in (None, "", []):
            raise KeyError(f"this task needs paths.{role} (known roles: {sorted(self.files)})")
        return resolve_paths(self.files[role], self.root)

    def __contains__(self, role: str) -> bool:
        return self.files.get(role) not in (None, "", [])


# ---- loaders: (split, paths, args, stats) → examples -------------------------------------------
# the yes/no and factoid loaders live beside their readers (tasks/yesno.py, tasks/factoid.py)
Loader = Callable[[str, _Paths, dict[str, Any], dict[str, Any]], list[Example]]


def _load_clinical(split: str, paths: _Paths, args: dict[str, Any], stats: dict[str, Any]) -> list[Example]:
    return clinical.load_clinical(paths["notes"], split=split, stats=stats, **args)


def _load_clinical_mix(split: str, paths: _Paths, args: dict[str, Any], stats: dict[str, Any]) -> list[Example]:
    args = dict(args)
    tasks = {mode: get_task(name) for mode, name in (args.pop("tasks", None) or clinical.MIX_TASKS).items()}
    parts = {mode: (t.name, t.template, t.target) for mode, t in tasks.items()}
    return clinical.load_clinical_mix(paths["notes"], split=split, parts=parts, stats=stats, **args)


LOADERS: dict[str, Loader] = {
    "bioasq_yesno": yesno.task_bioasq_yesno,
    "pubmedqa": yesno.task_pubmedqa,
    "yesno_mix": yesno.task_yesno_mix,
    "bioasq_factoid": factoid.task_bioasq_factoid,
    "clinical": _load_clinical,
    "clinical_mix": _load_clinical_mix,
    "records": records.task_records,  # your own JSONL / CSV / Parquet / datasets files
}


def task_names() -> list[str]:
    return sorted(p.stem for p in DEFS_DIR.glob("*.yaml"))


def get_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (``task_names()``) or a task YAML file."""
    from biomamba.config import ConfigError, from_dict, read_yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = DEFS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise KeyError(f"unknown task {name_or_path!r}; built-in tasks: {', '.join(task_names())} "
                           f"(or pass a task YAML file)")
    try:
        return from_dict(Task, read_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"task {path}: {exc}") from None


def load_tasks(names: Sequence[str]) -> list[Task]:
    return [get_task(n) for n in names]
