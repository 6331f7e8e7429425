"""Score a task's examples through a tiny model protocol, so the scoring logic is independent
of the model (tests use fakes; ``biomamba.eval.lm`` adapts our Mamba LM and transformers models).

* ``Scorer.loglikelihood([(context, continuation), …]) → [log p(continuation | context), …]``
  (natural log, summed over the continuation's tokens).
* ``Generator.generate([prompt, …], max_new_tokens, stop) → [text, …]`` (greedy; stop strings
  cut). Optionally ``generate_ranked(prompts, num_candidates, max_new_tokens, stop) →
  [[(text, score), …], …]`` (beam search or scored sampling) for factoid candidates.

Yes/no (``kind: choice``) is predicted both ways when both are given: the choice with the
highest log-likelihood (never unparseable), and greedy generation parsed to yes/no
(unparseable answers counted as wrong and reported). Factoid: each context of a question is
answered; candidates of all contexts are merged (case-insensitive duplicates merged) into at
most 5 ranked answers. Without ``generate_ranked`` each context gives its greedy answer,
scored by the scorer's log-likelihood when there is one (else context order ranks them).
Generation tasks (clinical): greedy decoding, ROUGE-1/2/L; empty generations are counted and
scored 0. Results carry no example text unless ``keep_text`` (clinical text never by default).
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol, Sequence, runtime_checkable

from biomamba.eval.metrics import (MAX_FACTOID_CANDIDATES, classification_report, factoid_metrics,
                                   rouge_per_item, rouge_scores)
from biomamba.tasks.common import Example
from biomamba.tasks.factoid import expand_contexts, merge_candidates
from biomamba.tasks.registry import Task
from biomamba.tasks.yesno import parse_yesno


@runtime_checkable
class Scorer(Protocol):
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]: ...


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]: ...


def evaluate_task(task: Task, examples: Sequence[Example], scorer: Scorer | None = None,
                  generator: Generator | None = None, *, max_new_tokens: int | None = None,
                  keep_text: bool | None = None) -> dict[str, Any]:
    """Results of one task on ``examples`` (already loaded: ``task.load(split, …)``):
    ``{"task", "kind", "n", "counts", "metrics": {mode: report (+ "by_<group>")}, "predictions"}``.
    ``keep_text`` (default: on for QA, off for clinical generation) stores generated text."""
    if scorer is None and generator is None:
        raise ValueError("evaluate_task needs a scorer (log-likelihood) or a generator (or both)")
    max_new = max_new_tokens if max_new_tokens is not None else task.generation.max_new_tokens
    keep = keep_text if keep_text is not None else task.kind != "generation"
    results: dict[str, Any] = {"task": task.name, "kind": task.kind, "n": len(examples), "metrics": {},
                               "counts": {"context_cut": sum(task.context_cut(u) for ex in examples
                                                             for u in _units(ex))}}
    if task.kind == "choice":
        _evaluate_choice(task, examples, scorer, generator, max_new, keep, results)
    elif task.kind == "factoid":
        _evaluate_factoid(task, examples, scorer, generator, max_new, results)
    else:
        _evaluate_generation(task, examples, generator, max_new, keep, results)
    return results


def _units(example: Example) -> list[Example]:
    return expand_contexts(example) if "contexts" in example else [example]


def _grouped(task: Task, examples: Sequence[Example], metric, *columns: Sequence[Any]) -> dict[str, Any]:
    """The metric overall, plus per value of ``task.group_by`` when the examples have several."""
    report = metric(*columns)
    key = task.group_by
    values = sorted({ex.get(key) for ex in examples}, key=str) if key else []
    if len(values) > 1:
        report[f"by_{key}"] = {
            str(v): metric(*([col[i] for i, ex in enumerate(examples) if ex.get(key) == v] for col in columns))
            for v in values}
    return report


def _evaluate_choice(task: Task, examples, scorer, generator, max_new, keep, results) -> None:
    labels = list(task.choices)
    gold = [ex["answer"] for ex in examples]
    prompts = [task.prompt(ex).render() for ex in examples]
    rows: list[dict[str, Any]] = [{"id": ex.get("id"), "source": ex.get("source"), "gold": g}
                                  for ex, g in zip(examples, gold)]

    def report(g, p):
        return classification_report(g, p, labels)

    if scorer is not None:
        requests = [(p, task.choices[label]) for p in prompts for label in labels]
        scores = list(scorer.loglikelihood(requests))
        if len(scores) != len(requests):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(requests)} requests")
        pred = []
        for i, row in enumerate(rows):
            s = scores[i * len(labels):(i + 1) * len(labels)]
            finite = [x if math.isfinite(x) else -math.inf for x in s]
            best = max(range(len(labels)), key=lambda j: finite[j])  # ties → the first choice
            pred.append(labels[best] if math.isfinite(finite[best]) else None)
            row["loglikelihood"] = {"pred": pred[-1], "scores": dict(zip(labels, s))}
        results["metrics"]["loglikelihood"] = _grouped(task, examples, report, gold, pred)
    if generator is not None:
        texts = _generate(generator, prompts, max_new, task.generation.stop)
        pred = [_parse(task, t) for t in texts]
        for row, text, p in zip(rows, texts, pred):
            row["generate"] = {"pred": p, **({"text": text} if keep else {})}
        results["metrics"]["generate"] = _grouped(task, examples, report, gold, pred)
        results["counts"]["unparsed"] = sum(p is None for p in pred)
        results["counts"]["empty_generations"] = sum(not t.strip() for t in texts)
    results["predictions"] = rows


def _parse(task: Task, text: str) -> Any:
    if task.parse == "yesno":
        return parse_yesno(text)
    if task.parse == "factoid":
        return clean_factoid_answer(text)
    return text


_TRAILING = re.compile(r"[\s.;,]+$")


def clean_factoid_answer(text: str) -> str:
    """A generated factoid answer: its first line, without surrounding space or a final period."""
    return _TRAILING.sub("", text.strip().split("\n", 1)[0]).strip()


def _evaluate_factoid(task: Task, examples, scorer, generator, max_new, results) -> None:
    if generator is None:
        raise ValueError("factoid evaluation generates answers: pass a generator")
    units = [(qi, u) for qi, ex in enumerate(examples) for u in expand_contexts(ex)]
    prompts = [task.prompt(u).render() for _, u in units]
    per_context: list[list[tuple[str, float]]]
    ranked = getattr(generator, "generate_ranked", None)
    if callable(ranked):
        per_context = [[(_parse(task, t), float(s)) for t, s in cands]
                       for cands in ranked(prompts, MAX_FACTOID_CANDIDATES, max_new, task.generation.stop)]
        method = "generate_ranked"
    else:
        answers = [_parse(task, t) for t in _generate(generator, prompts, max_new, task.generation.stop)]
        scores = [0.0] * len(answers)
        method = "greedy"
        if scorer is not None:  # rank each context's answer by its log-likelihood there
            todo = [i for i, a in enumerate(answers) if a]
            for i, s in zip(todo, scorer.loglikelihood([(prompts[i], task.target.format(answer=answers[i]))
                                                        for i in todo])):
                scores[i] = s
            method = "greedy+loglikelihood"
        per_context = [[(a, float(s))] if a else [] for a, s in zip(answers, scores)]
    grouped: list[list[list[tuple[str, float]]]] = [[] for _ in examples]
    for (qi, _), cands in zip(units, per_context):
        grouped[qi].append(cands)
    candidates = [merge_candidates(g) for g in grouped]
    gold = [ex["answers"] for ex in examples]
    results["metrics"]["factoid"] = _grouped(task, examples, factoid_metrics, gold, candidates)
    results["metrics"]["factoid"]["candidates_from"] = method
    results["counts"]["contexts"] = len(units)
    results["counts"]["empty_answers"] = sum(not c for c in per_context)
    results["predictions"] = [{"id": ex["id"], "source": ex.get("source"), "candidates": c, "gold": g}
                              for ex, c, g in zip(examples, candidates, gold)]


def _evaluate_generation(task: Task, examples, generator, max_new, keep, results) -> None:
    if generator is None:
        raise ValueError(f"task {task.name} is scored on generated text: pass a generator")
    rendered = [task.render(ex) for ex in examples]
    texts = _generate(generator, [p for p, _ in rendered], max_new, task.generation.stop)
    refs = [t for _, t in rendered]
    results["metrics"]["rouge"] = _grouped(task, examples, rouge_scores, refs, texts)
    results["counts"]["empty_generations"] = sum(not t.strip() for t in texts)
    rows = []
    for ex, text, ref, item in zip(examples, texts, refs, rouge_per_item(refs, texts)):
        # per-item ROUGE: what a paired test between two models on the same items needs
        row: dict[str, Any] = {"id": ex.get("id"), "generated_chars": len(text), "rouge": item}
        if keep:
            row.update(text=text, reference=ref)
        rows.append(row)
    results["predictions"] = rows


def _generate(generator: Generator, prompts: list[str], max_new: int, stop: Sequence[str]) -> list[str]:
    texts = list(generator.generate(prompts, max_new, list(stop)))
    if len(texts) != len(prompts):
        raise ValueError(f"generator returned {len(texts)} texts for {len(prompts)} prompts")
    return ["" if t is None else t for t in texts]


# ---- a readable table ------------------------------------------------------------------------
_COLUMNS = {
    "classification": ("n", "accuracy", "accuracy_ci95", "macro_f1", "f1_yes", "f1_no", "unparsed"),
    "factoid": ("n", "strict_accuracy", "lenient_accuracy", "mrr", "no_candidates"),
    "rouge": ("n", "rouge1", "rouge2", "rougeL", "empty_predictions"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate_task`` results: one row per mode (and group)."""
    columns = _COLUMNS[{"choice": "classification", "factoid": "factoid", "generation": "rouge"}[results["kind"]]]
    head = ["task", "mode", "group", *columns]
    rows = []
    for mode, report in results["metrics"].items():
        rows.append([results["task"], mode, "all", *(_fmt(report.get(c, "")) for c in columns)])
        for key, groups in report.items():
            if key.startswith("by_"):
                for name, sub in groups.items():
                    rows.append([results["task"], mode, name, *(_fmt(sub.get(c, "")) for c in columns)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
