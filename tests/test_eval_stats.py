"""biomamba.eval.stats equals its references on the same data: scipy.stats (bootstrap,
permutation_test, ttest_rel, wilcoxon), statsmodels' mcnemar, scikit-learn's F1.

Bootstrap comparisons are exact, not Monte Carlo: ``scipy.stats.bootstrap`` draws its resamples
as ``rng.integers(0, n, (n_resamples, n))``, which is what ours draws from
``numpy.random.default_rng(seed)``; given a generator with the same seed, scipy resamples the
very same items, so the intervals must agree to rounding (1e-12 for percentile intervals, whose
endpoints interpolate the same two numbers; 1e-9 for BCa, whose quantile levels come through
statistics.NormalDist instead of scipy's ndtri/ndtr and whose jackknife means are summed in
another order). Data are in sorted-id order for scipy; ours receive dicts in shuffled order.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from biomamba.eval import stats as S
from biomamba.eval.metrics import accuracy, macro_f1, rouge_scores

B = 2000  # resamples per test: agreement with scipy is exact at any count, and 2,000 keeps it fast
LABELS = ("yes", "no")


def _ids(n: int) -> list[str]:
    return [f"q{i:04d}" for i in range(n)]  # zero-padded: sorted id order = list order


def _shuffled(ids, values, seed=99) -> dict:
    # insertion order scrambled: results must not depend on it
    pairs = list(zip(ids, values))
    random.Random(seed).shuffle(pairs)
    return dict(pairs)


def _yesno(seed: int, n: int = 100):
    rng = random.Random(seed)
    gold = [rng.choice(["yes", "yes", "no"]) for _ in range(n)]

    def predict(p_right):
        return [g if rng.random() < p_right else rng.choice(["yes", "no", None]) for g in gold]

    return gold, predict(0.7), predict(0.8)


def _codes(gold, pred):
    code = {"yes": 0, "no": 1, None: 2}  # None: unparseable, a wrong prediction of neither class
    return np.array([code[g] for g in gold]), np.array([code[p] for p in pred])


def _np_f1(g, p, label, axis=-1):
    # vectorised reference for scipy's statistic (checked against scikit-learn below)
    tp = np.sum((g == label) & (p == label), axis=axis)
    denom = np.sum(p == label, axis=axis) + np.sum(g == label, axis=axis)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


NP_METRICS = {
    "accuracy": lambda g, p, axis=-1: np.mean(g == p, axis=axis),
    "f1_yes": lambda g, p, axis=-1: _np_f1(g, p, 0, axis),
    "f1_no": lambda g, p, axis=-1: _np_f1(g, p, 1, axis),
    "macro_f1": lambda g, p, axis=-1: (_np_f1(g, p, 0, axis) + _np_f1(g, p, 1, axis)) / 2,
}


def _sklearn(metric, gold, pred):
    from sklearn.metrics import accuracy_score, f1_score

    pred = ["<unparsed>" if p is None else p for p in pred]  # sklearn needs a label: a wrong one
    if metric == "accuracy":
        return accuracy_score(gold, pred)
    if metric == "macro_f1":
        return f1_score(gold, pred, labels=list(LABELS), average="macro", zero_division=0)
    return f1_score(gold, pred, labels=[metric[3:]], average=None, zero_division=0)[0]


def _scipy_bootstrap(data, statistic, seed, method, confidence_level=0.95, paired=True):
    from scipy.stats import bootstrap

    return bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=B,
                     confidence_level=confidence_level, method=method, rng=np.random.default_rng(seed))


def _bootstrap_p(distribution):
    # the documented definition, applied to scipy's distribution of the same resamples
    below, above = np.sum(distribution <= 0), np.sum(distribution >= 0)
    return min(1.0, 2 * (min(below, above) + 1) / (len(distribution) + 1))


def _tol(method):
    return 1e-12 if method == "percentile" else 1e-9


# ---- one arm --------------------------------------------------------------------------------
@pytest.mark.parametrize("method,level", [("percentile", 0.95), ("BCa", 0.95), ("percentile", 0.9), ("BCa", 0.8)])
def test_bootstrap_mean_equals_scipy(method, level):
    rng = np.random.default_rng(5)
    x = rng.beta(2, 5, size=150)  # ROUGE-like per-item scores
    ids = _ids(len(x))
    est = S.bootstrap_mean(_shuffled(ids, x), metric="rougeL", n_resamples=B, confidence_level=level,
                           method=method, seed=11)
    ref = _scipy_bootstrap((x,), np.mean, 11, method, level, paired=False)
    assert est.value == pytest.approx(x.mean(), abs=1e-15)
    assert (est.low, est.high) == pytest.approx(ref.confidence_interval, abs=_tol(method))
    assert est.method == method.lower() and est.n == 150 and est.n_resamples == B and est.note is None


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_metric_recomputes_statistic_like_scipy(method):
    # a statistic that is no mean (the median), through the generic recompute-per-resample path
    x = np.random.default_rng(6).gamma(2.0, size=61)
    est = S.bootstrap_metric(_shuffled(_ids(61), x.tolist()), lambda items: float(np.median(items)),
                             metric="median", n_resamples=B, method=method, seed=3)
    ref = _scipy_bootstrap((x,), np.median, 3, method, paired=False)
    assert est.value == np.median(x)
    assert (est.low, est.high) == pytest.approx(ref.confidence_interval, abs=_tol(method))


@pytest.mark.parametrize("method", ["percentile", "BCa"])
@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "f1_yes", "f1_no"])
def test_bootstrap_classification_equals_scipy_and_sklearn(metric, method):
    gold, pred, _ = _yesno(seed=1)
    ids = _ids(len(gold))
    est = S.bootstrap_classification(_shuffled(ids, gold), _shuffled(ids, pred, seed=7), metric,
                                     n_resamples=B, method=method, seed=4)
    assert est.value == pytest.approx(_sklearn(metric, gold, pred), abs=1e-12)  # point estimate
    g, p = _codes(gold, pred)
    # the scipy statistic is itself checked against scikit-learn
    assert NP_METRICS[metric](g, p) == pytest.approx(_sklearn(metric, gold, pred), abs=1e-12)
    ref = _scipy_bootstrap((g, p), NP_METRICS[metric], 4, method)
    assert (est.low, est.high) == pytest.approx(ref.confidence_interval, abs=_tol(method))
    assert est.low < est.value < est.high and est.method == method.lower()


# ---- paired bootstrap -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_paired_bootstrap_classification_equals_scipy(method):
    gold, base, cand = _yesno(seed=2, n=120)
    ids = _ids(len(gold))
    res = S.paired_bootstrap_classification(_shuffled(ids, gold), _shuffled(ids, base, 1), _shuffled(ids, cand, 2),
                                            "macro_f1", n_resamples=B, method=method, seed=8)
    assert res.baseline == pytest.approx(_sklearn("macro_f1", gold, base), abs=1e-12)
    assert res.candidate == pytest.approx(_sklearn("macro_f1", gold, cand), abs=1e-12)
    assert res.difference == pytest.approx(res.candidate - res.baseline, abs=1e-15)
    g, pa = _codes(gold, base)
    _, pb = _codes(gold, cand)
    f = NP_METRICS["macro_f1"]
    ref = _scipy_bootstrap((g, pa, pb), lambda g, pa, pb, axis=-1: f(g, pb, axis) - f(g, pa, axis), 8, method)
    assert (res.low, res.high) == pytest.approx(ref.confidence_interval, abs=_tol(method))
    assert res.p_value == _bootstrap_p(ref.bootstrap_distribution)
    assert res.test == "paired bootstrap" and res.method == method.lower()


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_paired_bootstrap_mean_equals_scipy(method):
    rng = np.random.default_rng(3)
    x = rng.beta(2, 5, size=200)
    y = np.clip(x + rng.normal(0.02, 0.08, size=200), 0, 1)
    y[:40] = x[:40]  # identical outputs: zero differences, as ROUGE often has
    ids = _ids(200)
    res = S.paired_bootstrap_mean(_shuffled(ids, x), _shuffled(ids, y, 5), metric="rougeL",
                                  n_resamples=B, confidence_level=0.9, method=method, seed=21)
    ref = _scipy_bootstrap((x, y), lambda x, y, axis=-1: np.mean(y - x, axis=axis), 21, method, 0.9)
    assert res.difference == pytest.approx(y.mean() - x.mean(), abs=1e-15)
    assert (res.low, res.high) == pytest.approx(ref.confidence_interval, abs=_tol(method))
    assert res.p_value == _bootstrap_p(ref.bootstrap_distribution) and 0 < res.p_value < 1


def test_paired_bootstrap_of_any_statistic_equals_scipy():
    # the generic path: a corpus statistic recomputed per resample for both arms on the same items
    rng = np.random.default_rng(8)
    x = rng.gamma(2.0, size=70)
    y = x * rng.uniform(0.8, 1.4, size=70)
    ids = _ids(70)
    res = S.paired_bootstrap(_shuffled(ids, x.tolist()), _shuffled(ids, y.tolist(), 2),
                             lambda items: float(np.median(items)), metric="median", n_resamples=B, seed=13)
    ref = _scipy_bootstrap((x, y), lambda x, y, axis=-1: np.median(y, axis=axis) - np.median(x, axis=axis),
                           13, "percentile")
    assert res.difference == np.median(y) - np.median(x)
    assert (res.low, res.high) == pytest.approx(ref.confidence_interval, abs=1e-12)
    assert res.p_value == _bootstrap_p(ref.bootstrap_distribution)


# ---- McNemar ---------------------------------------------------------------------------------
def _correctness_pair(b, c, both_right, both_wrong):
    base = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    cand = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    ids = _ids(len(base))
    return _shuffled(ids, base), _shuffled(ids, cand, 3), np.array(base, float), np.array(cand, float)


@pytest.mark.parametrize("b,c,both_right,both_wrong", [
    (4, 15, 150, 31), (0, 5, 20, 3), (1, 0, 0, 0), (10, 10, 50, 5), (30, 45, 300, 25), (120, 160, 900, 80)])
@pytest.mark.parametrize("exact", [True, False])
def test_mcnemar_equals_statsmodels(b, c, both_right, both_wrong, exact):
    from statsmodels.stats.contingency_tables import mcnemar

    base, cand, x, y = _correctness_pair(b, c, both_right, both_wrong)
    res = S.mcnemar(base, cand, exact=exact, n_resamples=B, seed=2)
    ref = mcnemar(np.array([[both_right, b], [c, both_wrong]]), exact=exact, correction=True)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-300)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.test == ("McNemar exact" if exact else "McNemar chi-square")
    n = b + c + both_right + both_wrong
    assert res.details == {"b": b, "c": c, "both_correct": both_right, "both_wrong": both_wrong,
                           "odds_ratio": c / b if b else None}
    assert res.difference == pytest.approx((c - b) / n, abs=1e-15)
    assert res.baseline == (b + both_right) / n and res.candidate == (c + both_right) / n
    if n > 1:  # the effect's interval: scipy's paired bootstrap of the same correctness
        ref_ci = _scipy_bootstrap((x, y), lambda x, y, axis=-1: np.mean(y - x, axis=axis), 2, "percentile")
        assert (res.low, res.high) == pytest.approx(ref_ci.confidence_interval, abs=1e-12)


def test_mcnemar_from_predictions():
    gold, base, cand = _yesno(seed=4, n=150)
    ids = _ids(150)
    gold_d, base_d, cand_d = _shuffled(ids, gold), _shuffled(ids, base, 1), _shuffled(ids, cand, 2)
    res = S.mcnemar(S.correctness(gold_d, base_d), S.correctness(gold_d, cand_d), n_resamples=B)
    assert res.baseline == accuracy(gold, base) and res.candidate == accuracy(gold, cand)  # None counted wrong
    assert res.details["b"] == sum(g == p and g != q for g, p, q in zip(gold, base, cand))
    assert str(res).startswith(f"Δ {res.difference:+.3f} [") and str(res).endswith(
        f"(McNemar exact, b={res.details['b']}, c={res.details['c']})")
    with pytest.raises(ValueError, match="True/False"):
        S.mcnemar({"a": 0.5}, {"a": 1.0})  # scores are not correctness


# ---- permutation, t-test, Wilcoxon -----------------------------------------------------------
def _rouge_like(seed, n, shift=0.03):
    rng = np.random.default_rng(seed)
    x = np.round(rng.beta(2, 5, size=n), 1)  # coarse values: many tied and zero differences
    y = np.clip(np.round(x + rng.normal(shift, 0.1, size=n), 1), 0, 1)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_exact_equals_scipy(seed):
    from scipy.stats import permutation_test

    x, y = _rouge_like(seed, 12)  # 2^12 = 4,096 <= 10,000: both enumerate every sign pattern
    ids = _ids(12)
    res = S.paired_permutation_test(_shuffled(ids, x), _shuffled(ids, y, 4))
    ref = permutation_test((y, x), lambda a, b, axis=-1: np.mean(a - b, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=10_000, alternative="two-sided")
    assert res.details == {"exact": True, "sign_patterns": 4096}
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-15)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)  # exact on both sides: the same number


def test_permutation_sampled_within_monte_carlo_error_of_exact():
    from scipy.stats import permutation_test

    x, y = _rouge_like(7, 16, shift=0.04)
    ids = _ids(16)
    res = S.paired_permutation_test(_shuffled(ids, x), _shuffled(ids, y, 4), n_resamples=10_000, seed=5)
    exact = permutation_test((y, x), lambda a, b, axis=-1: np.mean(a - b, axis=axis), permutation_type="samples",
                             vectorized=True, n_resamples=2 ** 16).pvalue  # all 65,536 patterns
    assert res.details == {"exact": False, "sign_patterns": 10_000}
    # Ours samples 10,000 patterns: its p is 2 x a one-sided share with standard error
    # sqrt(q(1-q)/10,000), q = p/2; allow 4 standard errors plus the +1 correction's 2/10,001.
    q = exact / 2
    assert 0.01 < exact < 0.5  # a p-value where Monte Carlo error matters
    assert abs(res.p_value - exact) <= 4 * 2 * math.sqrt(q * (1 - q) / 10_000) + 2 / 10_001


def test_ttest_and_wilcoxon_equal_scipy():
    from scipy.stats import ttest_rel, wilcoxon

    x, y = _rouge_like(3, 80)
    ids = _ids(80)
    base, cand = _shuffled(ids, x), _shuffled(ids, y, 6)
    t = S.paired_ttest(base, cand, confidence_level=0.9)
    ref = ttest_rel(y, x)
    assert (t.statistic, t.p_value) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert (t.low, t.high) == pytest.approx(tuple(ref.confidence_interval(0.9)), rel=1e-12)
    assert t.details == {"df": 79} and t.difference == pytest.approx(np.mean(y - x))
    for zero_method in ("wilcox", "pratt", "zsplit"):
        w = S.wilcoxon_signed_rank(base, cand, zero_method=zero_method)
        ref = wilcoxon(y, x, zero_method=zero_method)
        assert (w.statistic, w.p_value) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert w.details["nonzero_differences"] == np.count_nonzero(y - x) < 80  # ties and zeros present


# ---- determinism, ids, degenerate cases, results.json ----------------------------------------
def test_seeded_and_order_independent(monkeypatch):
    gold, base, cand = _yesno(seed=5, n=80)
    ids = _ids(80)

    def run(seed, order_seed=1):
        return S.paired_bootstrap_classification(_shuffled(ids, gold, order_seed),
                                                 _shuffled(ids, base, order_seed + 1),
                                                 _shuffled(ids, cand, order_seed + 2), n_resamples=500, seed=seed)

    first = run(0)
    assert run(0).as_dict() == first.as_dict()  # same seed: the same result
    assert run(0, order_seed=30).as_dict() == first.as_dict()  # insertion order does not matter
    assert (run(1).low, run(1).high) != (first.low, first.high)  # another seed: other resamples
    x = dict(zip(ids, np.linspace(0, 1, 80) ** 2))
    one = S.bootstrap_mean(x, n_resamples=3000, seed=9)
    sampled = S.paired_permutation_test(x, {k: v ** 0.9 for k, v in x.items()}, n_resamples=3000, seed=9)
    monkeypatch.setattr(S, "_BATCH_ELEMENTS", 7 * 80 + 3)  # draw in chunks of 7 rows: same stream
    assert S.bootstrap_mean(x, n_resamples=3000, seed=9) == one
    assert S.paired_permutation_test(x, {k: v ** 0.9 for k, v in x.items()}, n_resamples=3000, seed=9) == sampled


def test_id_mismatch_raises():
    ids = _ids(10)
    base = dict(zip(ids, range(10)))
    cand = dict(zip(ids[1:] + ["extra"], range(10)))
    with pytest.raises(S.ItemMismatchError, match=r"1 only in baseline \('q0000'\).*1 only in candidate \('extra'\)"):
        S.paired_bootstrap_mean(base, cand)
    for fn in (S.paired_permutation_test, S.paired_ttest, S.wilcoxon_signed_rank):
        with pytest.raises(ValueError, match="same items"):
            fn(base, cand)
    gold = dict(zip(ids, ["yes"] * 10))
    with pytest.raises(S.ItemMismatchError, match="only in gold"):
        S.paired_bootstrap_classification(gold, gold, {k: v for k, v in gold.items() if k != "q0003"})
    with pytest.raises(S.ItemMismatchError, match="q0005"):
        S.mcnemar({k: True for k in ids}, {k: True for k in ids if k != "q0005"})
    many = dict(zip(_ids(100), [True] * 100))
    five = r"90 only in baseline \('q0010', 'q0011', 'q0012', 'q0013', 'q0014'\)"
    with pytest.raises(S.ItemMismatchError, match=five):
        S.mcnemar(many, {k: True for k in ids})  # five ids named, not ninety
    with pytest.raises(ValueError, match="duplicate"):
        S.by_id(["a", "b", "a"], [1, 2, 3])
    with pytest.raises(ValueError, match="no id"):
        S.by_id(["a", None], [1, 2])
    assert S.by_id(["b", "a"], [1, 2]) == {"b": 1, "a": 2}


def _no_nan(result):
    json.dumps(result.as_dict(), allow_nan=False)  # plain JSON, as results.json needs
    for name in ("value", "low", "high", "p_value", "difference"):
        value = getattr(result, name, 0.0)
        assert value is None or math.isfinite(value), (name, value)


def test_all_correct_in_both_arms():
    ids = _ids(30)
    right = dict.fromkeys(ids, True)
    for exact in (True, False):
        res = S.mcnemar(right, right, exact=exact, n_resamples=B)
        assert (res.p_value, res.statistic, res.difference, res.low, res.high) == (1.0, 0.0, 0.0, 0.0, 0.0)
        assert res.details["odds_ratio"] is None and "no discordant pairs" in res.note
        _no_nan(res)
    assert str(S.mcnemar(right, right)) == "Δ +0.000 [+0.000, +0.000], p = 1.000 (McNemar exact, b=0, c=0)"
    gold = dict.fromkeys(ids, "yes")
    est = S.bootstrap_classification(gold, gold, "macro_f1", n_resamples=B, method="BCa")
    assert (est.value, est.low, est.high) == (0.5, 0.5, 0.5)  # F1(no) = 0: never gold, never predicted
    scores = {k: 0.25 for k in ids}
    for fn in (S.paired_bootstrap_mean, S.paired_permutation_test, S.paired_ttest, S.wilcoxon_signed_rank):
        res = fn(scores, scores)
        assert res.p_value == 1.0 and res.difference == 0.0
        _no_nan(res)
    shifted = S.paired_ttest(scores, {k: 0.5 for k in ids})  # same non-zero difference everywhere
    assert shifted.p_value == 0.0 and shifted.statistic == math.inf and shifted.as_dict()["statistic"] is None


def test_single_item():
    for method in ("percentile", "bca"):
        est = S.bootstrap_mean({"only": 0.4}, method=method, n_resamples=B)
        assert (est.value, est.low, est.high) == (0.4, 0.4, 0.4) and "single item" in est.note
        _no_nan(est)
    base, cand = {"only": 0.2}, {"only": 0.6}
    for fn in (S.paired_bootstrap_mean, S.paired_permutation_test, S.paired_ttest, S.wilcoxon_signed_rank):
        res = fn(base, cand)
        assert res.p_value == 1.0 and res.difference == pytest.approx(0.4)
        _no_nan(res)
    res = S.mcnemar({"only": False}, {"only": True}, n_resamples=B)
    assert (res.p_value, res.difference, res.low, res.high) == (1.0, 1.0, 1.0, 1.0)
    assert (res.details["b"], res.details["c"]) == (0, 1)
    _no_nan(res)


def test_results_serialise_and_format():
    est = S.Estimate("accuracy", np.float64(0.8123), np.float64(0.7712), 0.85, np.int64(445), 0.95, "percentile",
                     10_000, 0)
    assert str(est) == "0.812 [0.771, 0.850]"
    cmp = S.Comparison(metric="accuracy", test="McNemar exact", baseline=0.8, candidate=0.843, difference=0.0431,
                       low=0.0123, high=0.0749, p_value=0.00812, n=445, statistic=np.float64(4.0),
                       details={"b": np.int64(4), "c": 15, "odds_ratio": 3.75, "bad": float("nan")})
    assert cmp.format() == "Δ +0.043 [+0.012, +0.075], p = 0.008 (McNemar exact, b=4, c=15)"
    assert S.format_p(0.00021) == "2.1e-04" and S.format_p(1.0) == "1.000"
    for result in (est, cmp):
        plain = json.loads(json.dumps(result.as_dict(), allow_nan=False))
        assert plain == result.as_dict()

        def walk(v):
            assert type(v) in (dict, list, str, int, float, bool, type(None)), type(v)
            for child in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else []):
                walk(child)

        walk(result.as_dict())
    assert cmp.as_dict()["details"] == {"b": 4, "c": 15, "odds_ratio": 3.75, "bad": None}
    with pytest.raises(ValueError, match="method"):
        S.bootstrap_mean({"a": 1.0, "b": 0.0}, method="basic")
    with pytest.raises(ValueError, match="confidence_level"):
        S.bootstrap_mean({"a": 1.0, "b": 0.0}, confidence_level=95)


def test_rouge_per_item_scores_average_to_rouge_scores():
    refs = ["The patient was discharged home in stable condition.",
            "Metoprolol 25 mg twice daily was started for rate control.",
            "No acute distress; lungs clear bilaterally.",
            "Follow up with cardiology in two weeks."]
    preds = ["Patient discharged home, stable.", "Started metoprolol for rate control.", "",
             "Follow-up with cardiology in 2 weeks."]
    ids = ["d3", "d1", "d4", "d2"]
    items = S.rouge_item_scores(dict(zip(ids, refs)), dict(zip(ids, preds)))
    expected = rouge_scores(refs, preds)
    estimates = S.bootstrap_rouge(items, n_resamples=B)
    assert list(estimates) == ["rouge1", "rouge2", "rougeL"]
    for key, est in estimates.items():
        assert est.value == pytest.approx(expected[key], abs=1e-12) and est.metric == key
        assert est.low <= est.value <= est.high
    assert items["d4"] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}  # the empty prediction scores 0


def test_classification_metric_is_metrics_py():
    gold, pred, _ = _yesno(seed=9, n=50)
    assert S.classification_metric("macro_f1")(gold, pred) == macro_f1(gold, pred, LABELS)
    with pytest.raises(ValueError, match="unknown classification metric"):
        S.classification_metric("f1_maybe")
