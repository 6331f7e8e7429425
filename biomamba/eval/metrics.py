"""Metrics, each equal to a reference implementation (tested): scikit-learn (accuracy, F1),
statsmodels (Wilson interval), ``rouge-score`` (ROUGE), the BioASQ evaluator's conventions
(factoid strict/lenient accuracy and MRR).

Failures are never dropped from a denominator: an unparseable yes/no answer (``None``) counts
as a wrong prediction of neither class, an empty generation is scored by ROUGE (as 0), a
question without candidates scores 0 on every factoid metric; each kind is also counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

Z_95 = 1.959963984540054  # norm.ppf(0.975), as statsmodels uses for alpha = 0.05


# ---- classification ----------------------------------------------------------------------
def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    """Share of exact matches; ``None`` (unparseable) predictions count as wrong."""
    _check_lengths(gold, pred)
    if not gold:
        return float("nan")
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def precision_recall_f1(gold: Sequence[Any], pred: Sequence[Any], label: Any) -> dict[str, float]:
    """One class's precision, recall and F1 (0 where undefined, as scikit-learn's ``zero_division=0``)."""
    _check_lengths(gold, pred)
    tp = sum(g == label and p == label for g, p in zip(gold, pred))
    n_pred = sum(p == label for p in pred)
    n_gold = sum(g == label for g in gold)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": n_gold}


def f1_per_class(gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Any]) -> dict[Any, float]:
    return {label: precision_recall_f1(gold, pred, label)["f1"] for label in labels}


def macro_f1(gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Any]) -> float:
    """Unweighted mean of the per-class F1 over ``labels`` (predictions outside them are wrong)."""
    scores = f1_per_class(gold, pred, labels)
    return sum(scores.values()) / len(scores)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``statsmodels`` ``method="wilson"``);
    ``(nan, nan)`` when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def classification_report(gold: Sequence[str], pred: Sequence[str | None],
                          labels: Sequence[str] = ("yes", "no")) -> dict[str, Any]:
    """Accuracy with its 95 % Wilson interval, macro-F1 and per-class F1 (``f1_yes``, ``f1_no``),
    precision/recall/support per class, confusion counts, and how many predictions were
    unparseable (``None``: counted as wrong, kept in every denominator)."""
    _check_lengths(gold, pred)
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, pred))
    lo, hi = wilson_interval(correct, n)
    per_class = {label: precision_recall_f1(gold, pred, label) for label in labels}
    report: dict[str, Any] = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci95": [lo, hi],
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels),
    }
    for label in labels:
        report[f"f1_{label}"] = per_class[label]["f1"]
    report["per_class"] = per_class
    report["unparsed"] = sum(p is None for p in pred)
    report["other_predictions"] = sum(p is not None and p not in labels for p in pred)
    confusion = {f"{g}->{p}": 0 for g in labels for p in [*labels, "unparsed"]}  # gold->predicted
    for g, p in zip(gold, pred):
        key = f"{g}->{'unparsed' if p is None else p}"
        confusion[key] = confusion.get(key, 0) + 1
    report["confusion"] = confusion
    return report


# ---- ROUGE --------------------------------------------------------------------------------
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_per_item(references: Sequence[str], predictions: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each (reference, prediction), exactly as the papers compute it:
    ``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(reference, prediction)``
    (per item, for paired tests between two models on the same items)."""
    from rouge_score import rouge_scorer

    _check_lengths(references, predictions)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for ref, pred in zip(references, predictions):
        scores = scorer.score(ref, pred)
        out.append({key: scores[key].fmeasure for key in ROUGE_TYPES})
    return out


def rouge_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """``rouge_per_item`` averaged over examples. Empty predictions stay in the average (they
    score 0) and are counted."""
    items = rouge_per_item(references, predictions)
    n = len(items)
    out: dict[str, Any] = {key: (sum(i[key] for i in items) / n if n else float("nan")) for key in ROUGE_TYPES}
    out["n"] = n
    out["empty_predictions"] = sum(not p.strip() for p in predictions)
    return out


# ---- factoid QA (BioASQ) ------------------------------------------------------------------
MAX_FACTOID_CANDIDATES = 5


def normalize_answer(text: str) -> str:
    """The form in which a factoid answer is compared: lower-cased, nothing else changed, so two
    answers match when they are equal ignoring case. This is BioASQ's official rule, from its
    evaluator (github.com/BioASQ/Evaluation-Measures, flat/BioASQEvaluation/src):
    ``data/Task1bData.java`` ``readExactAnswerArray`` lower-cases every exact answer, gold and
    submitted alike, as it reads it, and ``data/ExactAnswer.java`` ``containsAnswerSynonym``
    compares them with ``String.equals``. Whitespace (surrounding or inner) and punctuation are
    kept: gold "human african  trypanosomiasis" (two spaces, 6b) is not matched by "human
    african trypanosomiasis". Generated answers are cleaned before scoring instead
    (``biomamba.eval.evaluate.clean_factoid_answer``, ``biomamba.tasks.factoid.merge_candidates``)."""
    return text.lower()


def flatten_synonyms(exact_answer: Any) -> list[str]:
    """Gold synonyms from a BioASQ ``exact_answer`` (a string, a list of synonyms, or a list of
    synonym lists, as the golden files mix them)."""
    if isinstance(exact_answer, str):
        return [exact_answer]
    out: list[str] = []
    for item in exact_answer or []:
        out.extend(flatten_synonyms(item))
    return out


def factoid_metrics(gold: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                    k: int = MAX_FACTOID_CANDIDATES) -> dict[str, Any]:
    """Strict accuracy (first candidate matches a gold synonym: equal under
    :func:`normalize_answer`), lenient accuracy (any of the first ``k`` does), MRR (1 / rank of
    the first match, 0 if none). Questions with no candidate stay in every denominator
    (``no_candidates`` counts them)."""
    _check_lengths(gold, candidates)
    strict = lenient = 0
    rr = 0.0
    for synonyms, cands in zip(gold, candidates):
        wanted = {normalize_answer(s) for s in synonyms}
        for rank, cand in enumerate(list(cands)[:k], start=1):
            if normalize_answer(cand) in wanted:
                strict += rank == 1
                lenient += 1
                rr += 1.0 / rank
                break
    n = len(gold)
    nan = float("nan")
    return {
        "n": n,
        "strict_accuracy": strict / n if n else nan,
        "lenient_accuracy": lenient / n if n else nan,
        "mrr": rr / n if n else nan,
        "no_candidates": sum(not list(c) for c in candidates),
    }


# ---- perplexity / bits per byte -----------------------------------------------------------
@dataclass
class NLLTotals:
    """Token-weighted negative log-likelihood: perplexity = exp(Σ NLL / scored tokens), never a
    mean of per-batch means. Non-finite losses are excluded from both sums and counted.
    ``bytes`` (UTF-8 bytes of the scored text) and ``words`` give bits per byte and word
    perplexity, which compare fairly across tokenizers."""

    nll: float = 0.0  # nats
    tokens: int = 0
    nonfinite: int = 0
    bytes: int = 0
    words: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add_losses(self, losses: Iterable[float]) -> "NLLTotals":
        for loss in losses:
            loss = float(loss)
            if math.isfinite(loss):
                self.nll += loss
                self.tokens += 1
            else:
                self.nonfinite += 1
        return self

    def add_sum(self, nll_sum: float, count: int) -> "NLLTotals":
        """A pre-summed batch (Σ loss over ``count`` scored tokens); a non-finite sum excludes the
        whole batch and counts its tokens as non-finite."""
        nll_sum = float(nll_sum)
        if math.isfinite(nll_sum):
            self.nll += nll_sum
            self.tokens += int(count)
        else:
            self.nonfinite += int(count)
        return self

    def merge(self, other: "NLLTotals") -> "NLLTotals":
        self.nll += other.nll
        self.tokens += other.tokens
        self.nonfinite += other.nonfinite
        self.bytes += other.bytes
        self.words += other.words
        for k, v in other.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        return self

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.bytes)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words) if self.words else float("nan")

    def as_dict(self) -> dict[str, Any]:
        out = {"tokens": self.tokens, "nll_sum": self.nll, "mean_nll": self.mean_nll,
               "perplexity": self.perplexity, "nonfinite": self.nonfinite}
        if self.bytes:
            out.update(bytes=self.bytes, bits_per_byte=self.bits_per_byte)
        if self.words:
            out.update(words=self.words, word_perplexity=self.word_perplexity)
        out.update(self.extra)
        return out


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(Σ NLL / scored tokens): token-weighted."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def bits_per_byte(nll_sum_nats: float, n_bytes: int) -> float:
    """Σ NLL (nats) / (ln 2 · UTF-8 bytes)."""
    return nll_sum_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


def _check_lengths(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} gold vs {len(b)} predictions")
