"""Uncertainty and paired comparisons for evaluation results (issue 21): the numbers a reviewer
asks for beside every score. Each function is compared with a reference implementation on the
same data (``tests/test_eval_stats.py``): ``scipy.stats.bootstrap``, ``permutation_test``,
``ttest_rel`` and ``wilcoxon``, ``statsmodels`` ``mcnemar``, scikit-learn's F1.

Items are matched by id, never by position: every function takes ``{item_id: value}`` mappings
(:func:`by_id` builds one from aligned lists) and raises :class:`ItemMismatchError`, naming a few
ids, when arms cover different items. Items are put in sorted id order before resampling, so a
result depends on the data and the seed only, not on the order predictions were written.

Bootstrap (:func:`bootstrap_mean`, :func:`bootstrap_metric`, :func:`bootstrap_classification`,
:func:`bootstrap_rouge`). Resampling draws an ``(n_resamples, n)`` matrix of item indices from
``numpy.random.default_rng(seed)`` (the same draws ``scipy.stats.bootstrap`` makes with that
generator, so its intervals are reproduced exactly) and evaluates the statistic on every row.
Means (ROUGE, correctness) are computed row-wise in numpy; corpus-level metrics (accuracy, the
F1 of a class, macro-F1) are recomputed on each resampled item list by the functions of
:mod:`biomamba.eval.metrics` themselves: they are not means of per-item values.

* ``n_resamples`` defaults to 10,000 (:data:`N_RESAMPLES`): the Monte Carlo standard error of a
  2.5 % tail share is then sqrt(0.025 * 0.975 / 10^4) = 0.0016, small beside the sampling
  error being estimated, and the smallest bootstrap p-value is 2 / 10,001 = 0.0002.
* ``method="percentile"`` (default): the (1-CL)/2 and (1+CL)/2 quantiles (linear
  interpolation) of the bootstrap distribution. ``method="bca"``: bias-corrected and
  accelerated (Efron & Tibshirani 1993, 14.3; acceleration from the leave-one-item-out
  jackknife), as ``scipy.stats.bootstrap(method="BCa")``. Where BCa is undefined (the
  estimate lies outside the bootstrap distribution, fewer than two items) the percentile
  interval is given and ``note`` says so.

Paired comparisons (baseline vs candidate on the same items; every difference is candidate
minus baseline, so a positive difference favours the candidate):

* :func:`mcnemar` on per-item correctness. b = items only the baseline gets right, c = items
  only the candidate gets right. Exact by default, at every count: the two-sided binomial test
  of b against Binomial(b + c, 1/2), min(1, 2 P(X <= min(b, c))), is valid for any b + c and
  cheap to compute exactly, whereas the continuity-corrected chi-square
  ((|b - c| - 1)^2 / (b + c), 1 df; ``exact=False``) only approximates it, and a rule such as
  "exact when b + c < 25" would change the test with the data. The effect size is the
  difference in accuracy (c - b) / n with a paired bootstrap interval, and the discordant
  odds ratio c / b (> 1 favours the candidate; ``None`` when b = 0).
* :func:`paired_bootstrap` / :func:`paired_bootstrap_mean` / :func:`paired_bootstrap_classification`:
  both arms are resampled with the same item indices; the interval is that of the resampled
  differences, and the two-sided p-value is
  ``min(1, 2 * (1 + #{resampled differences on the far side of 0, 0 included}) / (B + 1))``
  with the far side the smaller of ``<= 0`` and ``>= 0`` -- the smallest 1 - CL at which
  the percentile interval would exclude 0, with the +1 correction so p is never 0.
* :func:`paired_permutation_test`: approximate randomization of per-item scores: under "no
  difference" the sign of each item's difference is exchangeable, so the mean difference is
  compared with its distribution over random sign flips (all 2^n flips when 2^n <=
  ``n_resamples``, an exact test). p-values as ``scipy.stats.permutation_test``.
* :func:`paired_ttest` and :func:`wilcoxon_signed_rank`: ``scipy.stats.ttest_rel`` and
  ``scipy.stats.wilcoxon`` on the id-matched per-item scores, as further references (these two
  need scipy; everything else needs numpy only).

Results are :class:`Estimate` and :class:`Comparison`; ``as_dict()`` gives plain JSON values
(non-finite floats become ``None``), ``str()`` gives ``0.812 [0.771, 0.850]`` and
``Δ +0.043 [+0.012, +0.075], p = 0.008 (McNemar exact, b=4, c=15)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Any, Protocol, TypeVar

import numpy as np

from biomamba.eval import metrics as _metrics

N_RESAMPLES = 10_000
CONFIDENCE_LEVEL = 0.95
METHODS = ("percentile", "bca")
# Index matrices are drawn in chunks of about this many elements (80 MB of int64) so a large
# test set does not need n_resamples x n at once; chunked draws equal one draw (tested).
_BATCH_ELEMENTS = 10_000_000
_EXAMPLES = 5  # ids named in a mismatch error
_NORMAL = NormalDist()

T = TypeVar("T")
V = TypeVar("V")


class ItemMismatchError(ValueError):
    """The arms (or gold and predictions) do not cover the same items."""


# ---- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A metric on one arm with its bootstrap interval."""

    metric: str
    value: float
    low: float
    high: float
    n: int  # items
    confidence_level: float
    method: str  # the interval actually given: "percentile" or "bca"
    n_resamples: int
    seed: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def format(self, digits: int = 3) -> str:
        return format_estimate(self, digits)

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline on the same items: ``difference`` = candidate - baseline."""

    metric: str
    test: str  # e.g. "McNemar exact", "paired bootstrap"
    baseline: float
    candidate: float
    difference: float
    low: float | None  # interval of the difference (None where the test gives none)
    high: float | None
    p_value: float  # two-sided
    n: int
    statistic: float | None = None  # the test's own statistic (McNemar, t, W, mean difference)
    confidence_level: float | None = None
    method: str | None = None  # how the interval was made: "percentile", "bca", "t"
    n_resamples: int | None = None
    seed: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def format(self, digits: int = 3) -> str:
        return format_comparison(self, digits)

    def __str__(self) -> str:
        return self.format()


def format_estimate(estimate: Estimate, digits: int = 3) -> str:
    """``0.812 [0.771, 0.850]``."""
    d = digits
    return f"{estimate.value:.{d}f} [{estimate.low:.{d}f}, {estimate.high:.{d}f}]"


def format_comparison(comparison: Comparison, digits: int = 3) -> str:
    """``Δ +0.043 [+0.012, +0.075], p = 0.008 (McNemar exact, b=4, c=15)``."""
    d = digits
    out = f"Δ {comparison.difference:+.{d}f}"
    if comparison.low is not None and comparison.high is not None:
        out += f" [{comparison.low:+.{d}f}, {comparison.high:+.{d}f}]"
    extra = "".join(f", {k}={comparison.details[k]}" for k in ("b", "c") if k in comparison.details)
    return f"{out}, p = {format_p(comparison.p_value)} ({comparison.test}{extra})"


def format_p(p: float) -> str:
    """Three decimals, or two significant digits below 0.001 (a bootstrap p can reach 2e-4)."""
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _plain(x: Any) -> Any:
    # results.json must hold plain JSON: numpy scalars become Python ones, NaN/inf become null
    # (json.dumps would otherwise write the non-standard NaN/Infinity), keys become strings.
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# ---- items matched by id ------------------------------------------------------------------
def by_id(ids: Sequence[Hashable], values: Sequence[V]) -> dict[Hashable, V]:
    """``{id: value}`` from aligned lists; refuses missing (``None``) and duplicate ids, which
    would otherwise silently drop items."""
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} ids for {len(values)} values")
    out: dict[Hashable, V] = {}
    duplicates = []
    for item_id, value in zip(ids, values):
        if item_id is None:
            raise ValueError("an item has no id (None): items are matched by id")
        if item_id in out:
            duplicates.append(item_id)
        out[item_id] = value
    if duplicates:
        raise ValueError(f"{len(duplicates)} duplicate item ids, e.g. {_examples(duplicates)}")
    return out


def _examples(ids: Any) -> str:
    return ", ".join(repr(i) for i in _sorted_ids(ids)[:_EXAMPLES])


def _sorted_ids(ids: Any) -> list:
    try:
        return sorted(ids)
    except TypeError:  # mixed id types: still one deterministic order
        return sorted(ids, key=lambda k: (type(k).__name__, repr(k)))


def _align(**arms: Mapping[Hashable, Any]) -> tuple[list, dict[str, list]]:
    """Sorted common ids and each arm's values in that order; the arms must cover the same ids."""
    names = list(arms)
    first = names[0]
    reference = set(arms[first])
    problems = []
    for name in names[1:]:
        other = set(arms[name])
        if other != reference:
            parts = []
            if reference - other:
                parts.append(f"{len(reference - other)} only in {first} ({_examples(reference - other)})")
            if other - reference:
                parts.append(f"{len(other - reference)} only in {name} ({_examples(other - reference)})")
            problems.append(f"{first} vs {name}: " + ", ".join(parts))
    if problems:
        raise ItemMismatchError("the arms must be scored on the same items; " + "; ".join(problems))
    if not reference:
        raise ValueError("no items")
    ids = _sorted_ids(reference)
    return ids, {name: [arms[name][i] for i in ids] for name in names}


def correctness(gold: Mapping[Hashable, Any], pred: Mapping[Hashable, Any]) -> dict[Hashable, bool]:
    """Per-item correctness as :func:`biomamba.eval.metrics.accuracy` counts it (an unparseable
    ``None`` prediction is wrong)."""
    ids, cols = _align(gold=gold, pred=pred)
    return {i: g == p for i, g, p in zip(ids, cols["gold"], cols["pred"])}


def rouge_item_scores(references: Mapping[Hashable, str],
                      predictions: Mapping[Hashable, str]) -> dict[Hashable, dict[str, float]]:
    """Per-item ROUGE-1/2/L F-measures by id (:func:`biomamba.eval.metrics.rouge_per_item`, the
    scorer the papers use), so their mean is ``rouge_scores``' result (tested)."""
    ids, cols = _align(references=references, predictions=predictions)
    return dict(zip(ids, _metrics.rouge_per_item(cols["references"], cols["predictions"])))


# ---- statistics evaluated on resampled items ---------------------------------------------
class _Statistic(Protocol):
    def point(self) -> float: ...  # on all items

    def on_indices(self, idx: np.ndarray) -> np.ndarray: ...  # one value per row of item indices

    def jackknife(self) -> np.ndarray: ...  # leaving out item i, for i in 0..n-1 (BCa)


class _Mean:
    """Mean of per-item values, computed row-wise on an index matrix."""

    def __init__(self, values: Sequence[float]):
        self.values = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(self.values)):
            raise ValueError("per-item values must be finite numbers")

    def point(self) -> float:
        return float(self.values.mean())

    def on_indices(self, idx: np.ndarray) -> np.ndarray:
        return self.values[idx].mean(axis=1)

    def jackknife(self) -> np.ndarray:
        n = len(self.values)
        return (self.values.sum() - self.values) / (n - 1)


class _Recomputed:
    """A corpus-level metric recomputed on each resampled item list: ``fn(*columns)`` with each
    column a plain list (the metrics functions take sequences; numpy arrays would break their
    ``if not gold`` checks)."""

    def __init__(self, fn: Callable[..., float], columns: Sequence[Sequence[Any]]):
        self.fn = fn
        self.columns = [_object_array(c) for c in columns]

    def _at(self, rows: np.ndarray) -> float:
        return float(self.fn(*[c[rows].tolist() for c in self.columns]))

    def point(self) -> float:
        return float(self.fn(*[c.tolist() for c in self.columns]))

    def on_indices(self, idx: np.ndarray) -> np.ndarray:
        return np.array([self._at(row) for row in idx], dtype=float)

    def jackknife(self) -> np.ndarray:
        n = len(self.columns[0])
        keep = np.ones(n, dtype=bool)
        out = np.empty(n)
        for i in range(n):
            keep[i] = False
            out[i] = self._at(keep)
            keep[i] = True
        return out


class _Difference:
    """candidate - baseline, both evaluated on the same resampled items."""

    def __init__(self, candidate: _Statistic, baseline: _Statistic):
        self.candidate, self.baseline = candidate, baseline

    def point(self) -> float:
        return self.candidate.point() - self.baseline.point()

    def on_indices(self, idx: np.ndarray) -> np.ndarray:
        return self.candidate.on_indices(idx) - self.baseline.on_indices(idx)

    def jackknife(self) -> np.ndarray:
        return self.candidate.jackknife() - self.baseline.jackknife()


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: a slice assignment would unpack tuple items
        out[i] = value
    return out


def _check(n_resamples: int, confidence_level: float, method: str = "percentile") -> str:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    method = method.lower()  # "BCa" as scipy spells it
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _index_batches(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    # rng.integers(0, n, (B, n)) is exactly scipy.stats.bootstrap's draw with this generator;
    # drawing it in row chunks continues the same stream, so chunking changes nothing.
    rng = np.random.default_rng(seed)
    rows = max(1, _BATCH_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _bootstrap(stat: _Statistic, n: int, n_resamples: int, seed: int, confidence_level: float,
               method: str) -> tuple[float, np.ndarray, float, float, str, str | None]:
    theta_hat = stat.point()
    theta_b = np.concatenate([stat.on_indices(idx) for idx in _index_batches(n, n_resamples, seed)])
    low, high, used, note = _interval(stat, n, theta_hat, theta_b, confidence_level, method)
    return theta_hat, theta_b, low, high, used, note


def _interval(stat: _Statistic, n: int, theta_hat: float, theta_b: np.ndarray, confidence_level: float,
              method: str) -> tuple[float, float, str, str | None]:
    alpha = (1 - confidence_level) / 2
    probs = [alpha, 1 - alpha]
    note = None
    if n < 2:
        note = "a single item: every resample is that item, so the interval has no width"
        method = "percentile"
    elif np.all(theta_b == theta_b[0]):
        note = "every resample gives the same value"
        method = "percentile"  # BCa's acceleration is 0/0 here; the percentile answer is exact
    if method == "bca":
        # Efron & Tibshirani (14.3, 15.36), as scipy: z0 from the share of resamples below the
        # estimate (ties count half), acceleration from the leave-one-item-out jackknife.
        below = np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)
        share = below / (2 * len(theta_b))
        if share <= 0 or share >= 1:
            note = "BCa undefined (the estimate lies outside the bootstrap distribution): percentile interval"
            method = "percentile"
        else:
            z0 = _NORMAL.inv_cdf(share)
            jack = stat.jackknife()
            u = (n - 1) * (jack.mean() - jack)
            den = float(np.sum(u ** 2))
            a = float(np.sum(u ** 3)) / (6 * den ** 1.5) if den > 0 else 0.0  # no jackknife spread: no skew
            probs = []
            for z in (_NORMAL.inv_cdf(alpha), -_NORMAL.inv_cdf(alpha)):
                num = z0 + z
                probs.append(_NORMAL.cdf(z0 + num / (1 - a * num)))
    low, high = np.quantile(theta_b, probs)  # linear interpolation, as scipy.stats.quantile
    return float(low), float(high), method, note


def _bootstrap_p(theta_b: np.ndarray) -> float:
    # Resampled differences that are theoretically 0 can be off by rounding; count them as 0.
    tol = 1e-12 * max(1.0, float(np.max(np.abs(theta_b))))
    below = np.count_nonzero(theta_b <= tol)
    above = np.count_nonzero(theta_b >= -tol)
    return min(1.0, 2 * (min(below, above) + 1) / (len(theta_b) + 1))


# ---- one arm ------------------------------------------------------------------------------
def _estimate(stat: _Statistic, n: int, metric: str, n_resamples: int, confidence_level: float,
              method: str, seed: int) -> Estimate:
    method = _check(n_resamples, confidence_level, method)
    value, _, low, high, used, note = _bootstrap(stat, n, n_resamples, seed, confidence_level, method)
    return Estimate(metric, value, low, high, n, confidence_level, used, int(n_resamples), seed, note)


def bootstrap_mean(values: Mapping[Hashable, float], *, metric: str = "mean",
                   n_resamples: int = N_RESAMPLES, confidence_level: float = CONFIDENCE_LEVEL,
                   method: str = "percentile", seed: int = 0) -> Estimate:
    """Mean of per-item values (a ROUGE F-measure, correctness) with its bootstrap interval."""
    ids, cols = _align(values=values)
    return _estimate(_Mean(cols["values"]), len(ids), metric, n_resamples, confidence_level, method, seed)


def bootstrap_metric(items: Mapping[Hashable, T], statistic: Callable[[list[T]], float], *,
                     metric: str = "statistic", n_resamples: int = N_RESAMPLES,
                     confidence_level: float = CONFIDENCE_LEVEL, method: str = "percentile",
                     seed: int = 0) -> Estimate:
    """Any corpus-level metric: ``statistic(list of items)`` recomputed on every resample (e.g.
    items = factoid (gold, candidates) pairs and a statistic built on ``factoid_metrics``)."""
    ids, cols = _align(items=items)
    stat = _Recomputed(statistic, [cols["items"]])
    return _estimate(stat, len(ids), metric, n_resamples, confidence_level, method, seed)


def classification_metric(metric: str, labels: Sequence[Any] = ("yes", "no")) -> Callable[[list, list], float]:
    """``fn(gold, pred)`` for "accuracy", "macro_f1" or "f1_<label>", from
    :mod:`biomamba.eval.metrics` (no copies: the bootstrap reruns these very functions)."""
    if metric == "accuracy":
        return _metrics.accuracy
    if metric == "macro_f1":
        return lambda gold, pred: _metrics.macro_f1(gold, pred, labels)
    for label in labels:
        if metric == f"f1_{label}":
            return lambda gold, pred: _metrics.precision_recall_f1(gold, pred, label)["f1"]
    raise ValueError(f"unknown classification metric {metric!r}: accuracy, macro_f1 or "
                     + ", ".join(f"f1_{label}" for label in labels))


def bootstrap_classification(gold: Mapping[Hashable, Any], pred: Mapping[Hashable, Any],
                             metric: str = "macro_f1", *, labels: Sequence[Any] = ("yes", "no"),
                             n_resamples: int = N_RESAMPLES, confidence_level: float = CONFIDENCE_LEVEL,
                             method: str = "percentile", seed: int = 0) -> Estimate:
    """Accuracy, macro-F1 or one class's F1 with a bootstrap interval; each resample recomputes
    the metric from its items (unparseable ``None`` predictions stay in, as wrong)."""
    fn = classification_metric(metric, labels)
    ids, cols = _align(gold=gold, pred=pred)
    stat = _Recomputed(fn, [cols["gold"], cols["pred"]])
    return _estimate(stat, len(ids), metric, n_resamples, confidence_level, method, seed)


def bootstrap_rouge(item_scores: Mapping[Hashable, Mapping[str, float]], *,
                    n_resamples: int = N_RESAMPLES, confidence_level: float = CONFIDENCE_LEVEL,
                    method: str = "percentile", seed: int = 0) -> dict[str, Estimate]:
    """Mean ROUGE-1/2/L F-measures (per-item scores from :func:`rouge_item_scores`), each with
    its interval; one seed, so all three use the same resamples."""
    return {key: bootstrap_mean({i: s[key] for i, s in item_scores.items()}, metric=key,
                                n_resamples=n_resamples, confidence_level=confidence_level,
                                method=method, seed=seed)
            for key in _metrics.ROUGE_TYPES}


# ---- two arms on the same items -----------------------------------------------------------
def _paired(stat: _Statistic, n: int, baseline: float, candidate: float, metric: str, test: str,
            n_resamples: int, confidence_level: float, method: str, seed: int) -> Comparison:
    """``stat`` is the candidate - baseline difference, evaluated on shared resampled items."""
    method = _check(n_resamples, confidence_level, method)
    diff, theta_b, low, high, used, note = _bootstrap(stat, n, n_resamples, seed, confidence_level, method)
    if n < 2:  # one item: every resample repeats the observed difference, which tests nothing
        p = 1.0
        note = "a single item: no test is possible (p = 1)"
    else:
        p = _bootstrap_p(theta_b)
    return Comparison(metric=metric, test=test, baseline=baseline, candidate=candidate, difference=diff,
                      low=low, high=high,
                      p_value=p, n=n, statistic=diff, confidence_level=confidence_level,
                      method=used, n_resamples=int(n_resamples), seed=seed, note=note)


def paired_bootstrap(baseline: Mapping[Hashable, T], candidate: Mapping[Hashable, T],
                     statistic: Callable[[list[T]], float], *, metric: str = "statistic",
                     n_resamples: int = N_RESAMPLES, confidence_level: float = CONFIDENCE_LEVEL,
                     method: str = "percentile", seed: int = 0) -> Comparison:
    """Difference of any corpus-level metric, ``statistic(items)``, resampling items jointly."""
    ids, cols = _align(baseline=baseline, candidate=candidate)
    base, cand = _Recomputed(statistic, [cols["baseline"]]), _Recomputed(statistic, [cols["candidate"]])
    return _paired(_Difference(cand, base), len(ids), base.point(), cand.point(), metric, "paired bootstrap",
                   n_resamples, confidence_level, method, seed)


def paired_bootstrap_mean(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], *,
                          metric: str = "mean", n_resamples: int = N_RESAMPLES,
                          confidence_level: float = CONFIDENCE_LEVEL, method: str = "percentile",
                          seed: int = 0) -> Comparison:
    """Difference of means of per-item scores (e.g. ROUGE-L), resampling items jointly."""
    ids, cols = _align(baseline=baseline, candidate=candidate)
    # The mean of per-item differences, not a difference of means: resamples of items that tie
    # are then exactly 0 and the p-value's count at 0 is not at the mercy of rounding.
    x, y = _Mean(cols["baseline"]), _Mean(cols["candidate"])
    return _paired(_Mean(y.values - x.values), len(ids), x.point(), y.point(), metric, "paired bootstrap",
                   n_resamples, confidence_level, method, seed)


def paired_bootstrap_classification(gold: Mapping[Hashable, Any], baseline_pred: Mapping[Hashable, Any],
                                    candidate_pred: Mapping[Hashable, Any], metric: str = "macro_f1", *,
                                    labels: Sequence[Any] = ("yes", "no"), n_resamples: int = N_RESAMPLES,
                                    confidence_level: float = CONFIDENCE_LEVEL, method: str = "percentile",
                                    seed: int = 0) -> Comparison:
    """Difference in accuracy, macro-F1 or a class's F1 between two arms' predictions for the
    same gold answers; each resample recomputes both arms' metric on the same items."""
    fn = classification_metric(metric, labels)
    ids, cols = _align(gold=gold, baseline=baseline_pred, candidate=candidate_pred)
    base = _Recomputed(fn, [cols["gold"], cols["baseline"]])
    cand = _Recomputed(fn, [cols["gold"], cols["candidate"]])
    return _paired(_Difference(cand, base), len(ids), base.point(), cand.point(), metric, "paired bootstrap",
                   n_resamples, confidence_level, method, seed)


def mcnemar(baseline_correct: Mapping[Hashable, bool], candidate_correct: Mapping[Hashable, bool], *,
            exact: bool = True, metric: str = "accuracy", n_resamples: int = N_RESAMPLES,
            confidence_level: float = CONFIDENCE_LEVEL, method: str = "percentile",
            seed: int = 0) -> Comparison:
    """McNemar's test on per-item correctness (:func:`correctness`), exact binomial by default
    (why: module docstring); ``exact=False``: chi-square with continuity correction, as
    ``statsmodels`` ``mcnemar(exact=False, correction=True)``. The difference in accuracy
    carries a paired bootstrap interval; ``details`` holds b, c, the concordant counts and the
    odds ratio c / b."""
    ids, cols = _align(baseline=baseline_correct, candidate=candidate_correct)
    x, y = _booleans(cols["baseline"], "baseline"), _booleans(cols["candidate"], "candidate")
    b = int(np.count_nonzero(x & ~y))  # only the baseline right
    c = int(np.count_nonzero(~x & y))  # only the candidate right
    if exact:
        test, statistic, p = "McNemar exact", float(min(b, c)), _binomial_two_sided(b, c)
    else:
        test = "McNemar chi-square"
        if b + c == 0:  # no discordant pair: nothing differs (statsmodels gives 0/0 = nan here)
            statistic, p = 0.0, 1.0
        else:
            statistic = (abs(b - c) - 1) ** 2 / (b + c)  # statsmodels' form (no clipping at b = c)
            p = math.erfc(math.sqrt(statistic / 2))  # chi-square survival function, 1 df
    effect = _paired(_Mean(y.astype(float) - x.astype(float)), len(ids), float(x.mean()), float(y.mean()),
                     metric, test, n_resamples, confidence_level, method, seed)
    details = {"b": b, "c": c, "both_correct": int(np.count_nonzero(x & y)),
               "both_wrong": int(np.count_nonzero(~x & ~y)), "odds_ratio": c / b if b else None}
    note = effect.note if len(ids) < 2 else None
    if b + c == 0:
        note = "no discordant pairs: the arms are right on the same items (difference 0, p = 1)"
    return replace(effect, p_value=p, statistic=statistic, details=details, note=note)


def paired_permutation_test(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], *,
                            metric: str = "mean", n_resamples: int = N_RESAMPLES, seed: int = 0) -> Comparison:
    """Approximate randomization (sign-flip) test of the mean per-item difference; exact over
    all 2^n sign patterns when 2^n <= ``n_resamples``. p-values as
    ``scipy.stats.permutation_test(permutation_type="samples")``: two-sided = 2 x the smaller
    one-sided share, counting the observed value's ties (within 100 eps, relative), with +1 in
    numerator and denominator when sampled."""
    _check(n_resamples, CONFIDENCE_LEVEL)
    ids, cols = _align(baseline=baseline, candidate=candidate)
    d = np.subtract(cols["candidate"], cols["baseline"], dtype=float)
    n = len(d)
    observed = float(d.mean())
    exact = n < 63 and 2 ** n <= n_resamples
    total = 2 ** n if exact else int(n_resamples)
    rows = max(1, _BATCH_ELEMENTS // n)
    rng = np.random.default_rng(seed)
    gamma = abs(np.finfo(float).eps * 100 * observed)  # scipy's tie tolerance
    less = greater = 0
    for start in range(0, total, rows):
        count = min(rows, total - start)
        if exact:  # bit j of pattern k flips item j
            bits = (np.arange(start, start + count)[:, None] >> np.arange(n)) & 1
        else:
            bits = rng.integers(0, 2, size=(count, n))
        null = ((1 - 2 * bits) * d).mean(axis=1)
        less += int(np.count_nonzero(null <= observed + gamma))
        greater += int(np.count_nonzero(null >= observed - gamma))
    adjustment = 0 if exact else 1
    p = min(1.0, 2 * min(less + adjustment, greater + adjustment) / (total + adjustment))
    return Comparison(metric=metric, test="paired sign-flip permutation" + (" (exact)" if exact else ""),
                      baseline=float(np.mean(cols["baseline"])), candidate=float(np.mean(cols["candidate"])),
                      difference=observed, low=None, high=None, p_value=p, n=n, statistic=observed,
                      n_resamples=total, seed=None if exact else seed,
                      details={"exact": exact, "sign_patterns": total})


def paired_ttest(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], *,
                 metric: str = "mean", confidence_level: float = CONFIDENCE_LEVEL) -> Comparison:
    """``scipy.stats.ttest_rel(candidate, baseline)`` on id-matched per-item scores, with the
    t interval of the mean difference. Differences without spread are answered directly
    (scipy divides 0 by 0): all zero gives p = 1, all equal and non-zero gives p = 0."""
    _check(1, confidence_level)
    ids, x, y, d = _scores(baseline, candidate)
    base = dict(metric=metric, test="paired t-test", baseline=float(x.mean()), candidate=float(y.mean()),
                difference=float(d.mean()), n=len(ids), confidence_level=confidence_level, method="t")
    if len(ids) < 2:
        return Comparison(**base, low=None, high=None, p_value=1.0, note="a single item: no test is possible (p = 1)")
    if np.ptp(d) == 0:
        zero = d[0] == 0
        return Comparison(**base, low=float(d[0]), high=float(d[0]), p_value=1.0 if zero else 0.0,
                          statistic=0.0 if zero else math.copysign(math.inf, d[0]), details={"df": len(ids) - 1},
                          note="every item has the same difference: the t statistic is "
                               + ("0/0" if zero else "infinite"))
    res = _scipy_stats().ttest_rel(y, x)
    ci = res.confidence_interval(confidence_level)
    return Comparison(**base, low=float(ci.low), high=float(ci.high), p_value=float(res.pvalue),
                      statistic=float(res.statistic), details={"df": int(res.df)})


def wilcoxon_signed_rank(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], *,
                         metric: str = "mean", zero_method: str = "wilcox") -> Comparison:
    """``scipy.stats.wilcoxon(candidate, baseline, zero_method=...)`` on id-matched per-item
    scores (scipy's defaults: zero differences dropped, exact or normal approximation chosen by
    scipy). ``difference`` is the mean difference; the statistic is scipy's (min(W+, W-))."""
    ids, x, y, d = _scores(baseline, candidate)
    base = dict(metric=metric, test="Wilcoxon signed-rank", baseline=float(x.mean()), candidate=float(y.mean()),
                difference=float(d.mean()), low=None, high=None, n=len(ids))
    nonzero = int(np.count_nonzero(d))
    details = {"nonzero_differences": nonzero, "zero_method": zero_method}
    if nonzero == 0:  # scipy would divide 0 by 0: no item differs, nothing to test
        return Comparison(**base, p_value=1.0, statistic=0.0, details=details,
                          note="no item differs between the arms (p = 1)")
    res = _scipy_stats().wilcoxon(y, x, zero_method=zero_method)
    return Comparison(**base, p_value=float(res.pvalue), statistic=float(res.statistic), details=details)


# ---- helpers ------------------------------------------------------------------------------
def _binomial_two_sided(b: int, c: int) -> float:
    """min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2), in exact integer arithmetic (int /
    int division rounds correctly however large the terms)."""
    n, k = b + c, min(b, c)
    term = total = 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, 2 * total / 2 ** n)


def _booleans(values: Sequence[Any], name: str) -> np.ndarray:
    # Refuse scores (0.5, "yes") passed where correctness is meant: they would count silently.
    if not all(isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))
               for v in values):
        raise ValueError(f"{name} correctness must be True/False (or 1/0) per item")
    return np.asarray(values, dtype=bool)


def _scores(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float]
            ) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    ids, cols = _align(baseline=baseline, candidate=candidate)
    x = np.asarray(cols["baseline"], dtype=float)
    y = np.asarray(cols["candidate"], dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("per-item scores must be finite numbers")
    return ids, x, y, y - x


def _scipy_stats() -> Any:
    try:
        import scipy.stats
    except ImportError as exc:  # scipy is not a core dependency; only these two tests need it
        raise ImportError("paired_ttest and wilcoxon_signed_rank call scipy.stats (pip install scipy); "
                          "the bootstrap, McNemar and permutation functions need numpy only") from exc
    return scipy.stats
