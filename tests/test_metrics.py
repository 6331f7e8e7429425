"""Metrics equal their reference implementations on the same predictions."""

from __future__ import annotations

import math
import random

import pytest

from biomamba.eval.metrics import (NLLTotals, accuracy, bits_per_byte, classification_report, f1_per_class,
                                   factoid_metrics, flatten_synonyms, macro_f1, rouge_per_item, rouge_scores,
                                   wilson_interval)


def _random_predictions(seed: int, n: int = 200):
    rng = random.Random(seed)
    gold = [rng.choice(["yes", "yes", "no"]) for _ in range(n)]
    pred = [rng.choice(["yes", "no", None]) if rng.random() < 0.5 else g for g in gold]
    return gold, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_equals_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    gold, pred = _random_predictions(seed)
    sk_pred = ["<unparsed>" if p is None else p for p in pred]  # sklearn needs a label: a wrong one
    assert accuracy(gold, pred) == pytest.approx(accuracy_score(gold, sk_pred), abs=1e-12)
    sk_f1 = f1_score(gold, sk_pred, labels=["yes", "no"], average=None, zero_division=0)
    assert f1_per_class(gold, pred, ["yes", "no"]) == pytest.approx({"yes": sk_f1[0], "no": sk_f1[1]}, abs=1e-12)
    assert macro_f1(gold, pred, ["yes", "no"]) == pytest.approx(
        f1_score(gold, sk_pred, labels=["yes", "no"], average="macro", zero_division=0), abs=1e-12)
    report = classification_report(gold, pred)
    assert report["n"] == len(gold)  # unparseable answers stay in the denominator
    assert report["unparsed"] == sum(p is None for p in pred) > 0
    assert report["f1_yes"] == pytest.approx(sk_f1[0]) and report["f1_no"] == pytest.approx(sk_f1[1])
    assert sum(report["confusion"].values()) == len(gold)


def test_classification_degenerate_cases():
    # a class never predicted and never gold: F1 0 (sklearn zero_division=0), no crash
    report = classification_report(["yes", "yes"], ["yes", None])
    assert report["accuracy"] == 0.5 and report["f1_no"] == 0.0 and report["unparsed"] == 1
    assert math.isnan(classification_report([], [])["accuracy"])


@pytest.mark.parametrize("count,n", [(0, 10), (10, 10), (3, 7), (276, 445), (1, 1), (400, 409)])
def test_wilson_equals_statsmodels(count, n):
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(count, n, alpha=0.05, method="wilson")
    assert wilson_interval(count, n) == pytest.approx((lo, hi), abs=1e-12)
    report = classification_report(["yes"] * n, ["yes"] * count + ["no"] * (n - count))
    assert report["accuracy_ci95"] == pytest.approx([lo, hi], abs=1e-12)


def test_rouge_equals_rouge_score():
    from rouge_score import rouge_scorer

    refs = ["The patient was discharged home in stable condition.",
            "Metoprolol 25 mg twice daily was started for rate control.",
            "Follow up with cardiology in two weeks.",
            "No acute events overnight."]
    preds = ["Patient discharged home, condition stable.", "Started metoprolol for rate control.",
             "", "Acute events were noted overnight and the patients improved."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {k: sum(scorer.score(r, p)[k].fmeasure for r, p in zip(refs, preds)) / len(refs)
                for k in ("rouge1", "rouge2", "rougeL")}
    got = rouge_scores(refs, preds)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12)
    assert got["n"] == 4 and got["empty_predictions"] == 1  # the empty one is averaged in as 0
    # stemming is on: "improved"/"improve" match
    assert rouge_scores(["it improves"], ["it improved"])["rouge1"] == pytest.approx(1.0)
    # per item, the same numbers rouge-score gives each pair
    for item, r, p in zip(rouge_per_item(refs, preds), refs, preds):
        assert item == {k: scorer.score(r, p)[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}


def test_factoid_metrics_hand_worked():
    gold = [["BRCA1", "breast cancer 1"],  # q1: first candidate matches (case-insensitive)
            ["TP53"],                      # q2: third candidate matches
            ["insulin"],                   # q3: match only at rank 6: beyond 5, no credit
            ["EGFR"],                      # q4: no candidates at all
            ["Factor Xa", "Xa"]]           # q5: second candidate matches a synonym
    cands = [["brca1", "BRCA2"],
             ["MDM2", "p21", "tp53"],  # (candidates arrive stripped: BioASQ's rule keeps whitespace)
             ["a", "b", "c", "d", "e", "insulin"],
             [],
             ["thrombin", "xa"]]
    m = factoid_metrics(gold, cands)
    assert m["n"] == 5 and m["no_candidates"] == 1
    assert m["strict_accuracy"] == pytest.approx(1 / 5)
    assert m["lenient_accuracy"] == pytest.approx(3 / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 0 + 1 / 2) / 5)


def test_flatten_synonyms_all_golden_shapes():
    assert flatten_synonyms("yes") == ["yes"]
    assert flatten_synonyms(["a", "b"]) == ["a", "b"]
    assert flatten_synonyms([["Factor Xa"], ["Xa"]]) == ["Factor Xa", "Xa"]
    assert flatten_synonyms([["RANKL", "receptor activator"]]) == ["RANKL", "receptor activator"]


def test_nll_totals_token_weighted_and_nonfinite_counted():
    t = NLLTotals()
    t.add_losses([1.0, 2.0, float("nan")])  # batch 1: mean 1.5 over 2 finite tokens
    t.add_losses([3.0] * 6)                 # batch 2: mean 3.0 over 6 tokens
    t.add_sum(float("inf"), 4)              # a batch whose sum is not finite: excluded, counted
    assert t.tokens == 8 and t.nonfinite == 5
    assert t.mean_nll == pytest.approx((1 + 2 + 18) / 8)  # not (1.5 + 3) / 2
    assert t.perplexity == pytest.approx(math.exp(21 / 8))
    t.bytes = 100
    assert t.bits_per_byte == pytest.approx(21 / (math.log(2) * 100))
    assert bits_per_byte(math.log(2) * 8, 8) == pytest.approx(1.0)
    merged = NLLTotals().merge(t).merge(NLLTotals(nll=3.0, tokens=1, bytes=4))
    assert merged.tokens == 9 and merged.bytes == 104 and merged.nll == pytest.approx(24.0)
