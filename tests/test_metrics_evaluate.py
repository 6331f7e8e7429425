"""evaluate_task: the scoring logic of each task kind, with fake models (the point is the
scoring, not the model: the real one plugs in through biomamba.eval.lm)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from biomamba.eval.evaluate import Generator, Scorer, clean_factoid_answer, evaluate_task, format_table
from biomamba.eval.metrics import classification_report, factoid_metrics, rouge_scores
from biomamba.tasks import get_task

NOTES = Path(__file__).resolve().parent / "fixtures" / "mimic" / "discharge.csv"


class FakeScorer:
    """log p(continuation | context) from a table keyed by (question in the prompt, continuation)."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def loglikelihood(self, requests):
        self.calls.append(list(requests))
        return [self.table(ctx, cont) for ctx, cont in requests]


class FakeGenerator:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def generate(self, prompts, max_new_tokens, stop=()):
        self.calls.append((list(prompts), max_new_tokens, list(stop)))
        return [self.fn(p) for p in prompts]


def _yesno_examples():
    rows = [("q1", "yes", "bioasq"), ("q2", "no", "bioasq"), ("q3", "yes", "bioasq"), ("q4", "no", "pubmedqa"),
            ("q5", "yes", "pubmedqa"), ("q6", "no", "pubmedqa")]
    return [{"id": i, "question": f"Is {i} true?", "context": f"Context of {i}.", "answer": a, "source": s}
            for i, a, s in rows]


def test_yesno_both_ways_with_failures_counted():
    task = get_task("yesno_mix")
    examples = _yesno_examples()
    ll_pred = {"q1": "yes", "q2": "yes", "q3": "yes", "q4": "no", "q5": "no", "q6": "no"}
    scorer = FakeScorer(lambda ctx, cont: 0.0 if cont.strip() == ll_pred[ctx.split("Is ")[1].split(" ")[0]] else -2.0)
    gen_text = {"q1": " Yes.", "q2": " no", "q3": " I cannot tell", "q4": "", "q5": " yes", "q6": " No, it is not."}
    generator = FakeGenerator(lambda p: gen_text[p.split("Is ")[1].split(" ")[0]])
    assert isinstance(scorer, Scorer) and isinstance(generator, Generator)
    res = evaluate_task(task, examples, scorer=scorer, generator=generator)
    gold = [ex["answer"] for ex in examples]
    ll = res["metrics"]["loglikelihood"]
    assert {k: v for k, v in ll.items() if k != "by_source"} == classification_report(
        gold, [ll_pred[ex["id"]] for ex in examples])
    assert ll["accuracy"] == pytest.approx(4 / 6)
    assert ll["by_source"]["bioasq"]["accuracy"] == pytest.approx(2 / 3)
    assert ll["by_source"]["pubmedqa"]["n"] == 3
    gen = res["metrics"]["generate"]
    assert gen["n"] == 6 and gen["unparsed"] == 2 and res["counts"]["unparsed"] == 2  # q3 and the empty q4
    assert gen["accuracy"] == pytest.approx(4 / 6)  # unparseable = wrong, kept in the denominator
    assert res["counts"]["empty_generations"] == 1
    # the same prompt for both ways, each choice scored as its continuation
    prompts, max_new, stop = generator.calls[0]
    assert [c[0] for c in scorer.calls[0][::2]] == prompts and {c[1] for c in scorer.calls[0]} == {" yes", " no"}
    assert prompts[0] == "Context: Context of q1.\nQuestion: Is q1 true?\nAnswer:"
    assert (max_new, stop) == (4, ["\n"])
    assert res["predictions"][0]["generate"] == {"pred": "yes", "text": " Yes."}
    json.dumps(res)  # results.json-ready
    table = format_table(res)
    assert "loglikelihood" in table and "pubmedqa" in table and "0.6667" in table


def test_yesno_non_finite_scores_are_failures():
    task = get_task("pubmedqa")
    examples = _yesno_examples()[:2]
    res = evaluate_task(task, examples, scorer=FakeScorer(lambda c, k: float("nan")))
    assert res["metrics"]["loglikelihood"]["unparsed"] == 2 and res["metrics"]["loglikelihood"]["n"] == 2


def _factoid_examples():
    return [{"id": "a" * 24, "question": "Which gene?", "source": "4b-1", "answers": ["BRCA1", "breast cancer 1"],
             "contexts": [{"id": "a" * 24 + "_000", "text": "ctx-a0"}, {"id": "a" * 24 + "_001", "text": "ctx-a1"},
                          {"id": "a" * 24 + "_002", "text": "ctx-a2"}]},
            {"id": "b" * 24, "question": "Which protein?", "source": "5b-1", "answers": ["p53"],
             "contexts": [{"id": "b" * 24 + "_000", "text": "ctx-b0"}, {"id": "b" * 24 + "_001", "text": "ctx-b1"}]}]


def test_factoid_greedy_per_context_merged_and_ranked_by_loglikelihood():
    task = get_task("bioasq_factoid")
    answers = {"ctx-a0": " BRCA2.", "ctx-a1": " brca1\nmore text", "ctx-a2": " BRCA2",
               "ctx-b0": " MDM2", "ctx-b1": ""}
    scores = {"BRCA2": -3.0, "brca1": -1.0, "MDM2": -0.5}
    generator = FakeGenerator(lambda p: answers[p.split("Context: ")[1].split("\n")[0]])
    scorer = FakeScorer(lambda ctx, cont: scores[cont.strip()])
    res = evaluate_task(task, _factoid_examples(), scorer=scorer, generator=generator)
    preds = {p["id"][0]: p["candidates"] for p in res["predictions"]}
    assert preds == {"a": ["brca1", "BRCA2"], "b": ["MDM2"]}  # duplicates merged, ranked by score
    m = res["metrics"]["factoid"]
    expected = factoid_metrics([["BRCA1", "breast cancer 1"], ["p53"]], [["brca1", "BRCA2"], ["MDM2"]])
    assert {k: m[k] for k in expected} == expected and m["strict_accuracy"] == 0.5 and m["mrr"] == 0.5
    assert m["by_source"]["4b-1"]["strict_accuracy"] == 1.0 and m["candidates_from"] == "greedy+loglikelihood"
    assert res["counts"] == {"context_cut": 0, "contexts": 5, "empty_answers": 1}
    assert [c[1] for c in scorer.calls[0]] == [" BRCA2", " brca1", " BRCA2", " MDM2"]  # not the empty one


def test_factoid_generate_ranked_is_used_when_available():
    class Ranked(FakeGenerator):
        def generate_ranked(self, prompts, n, max_new_tokens, stop):
            assert n == 5
            return [[("x", -1.0), ("p53.", -0.2)] if "ctx-b0" in p else [("y", -2.0)] for p in prompts]

    res = evaluate_task(get_task("bioasq_factoid"), _factoid_examples(), generator=Ranked(lambda p: ""))
    assert res["predictions"][1]["candidates"] == ["p53", "x", "y"]
    assert res["metrics"]["factoid"]["mrr"] == pytest.approx(0.5) and res["metrics"]["factoid"]["lenient_accuracy"] == 0.5


def test_clean_factoid_answer():
    assert clean_factoid_answer(" Bazex syndrome.\nOther") == "Bazex syndrome"
    assert clean_factoid_answer("  ") == ""


def test_clinical_rouge_without_text_in_results():
    task = get_task("clinical_discharge")
    examples = task.load("train", paths={"notes": str(NOTES)})[:6]
    refs = [task.render(ex)[1] for ex in examples]
    outputs = {task.render(ex)[0]: (ref[: len(ref) // 3] if i % 3 else "") for i, (ex, ref) in enumerate(zip(examples, refs))}
    generator = FakeGenerator(lambda p: outputs[p])
    res = evaluate_task(task, examples, generator=generator)
    expected = rouge_scores(refs, [outputs[task.render(ex)[0]] for ex in examples])
    assert res["metrics"]["rouge"] == expected
    assert res["counts"]["empty_generations"] == 2 and res["metrics"]["rouge"]["empty_predictions"] == 2
    assert generator.calls[0][1:] == (128, [])
    dumped = json.dumps(res)
    assert not any(ex["context"][:30] in dumped or ex["response"][:30] in dumped for ex in examples)
    assert "rouge1" in format_table(res)
    # per-item ROUGE (for paired tests) averages to the reported mean
    items = [row["rouge"] for row in res["predictions"]]
    assert sum(i["rougeL"] for i in items) / len(items) == pytest.approx(expected["rougeL"], abs=1e-12)
    kept = evaluate_task(task, examples, generator=generator, keep_text=True)["predictions"]
    assert [row["reference"] for row in kept] == refs and kept[0]["text"] == outputs[task.render(examples[0])[0]]
    with pytest.raises(ValueError, match="generator"):
        evaluate_task(task, examples, scorer=FakeScorer(lambda c, k: 0.0))


def test_needs_a_model():
    with pytest.raises(ValueError):
        evaluate_task(get_task("pubmedqa"), _yesno_examples())
    assert math.isnan(evaluate_task(get_task("pubmedqa"), [], scorer=FakeScorer(None))
                      ["metrics"]["loglikelihood"]["accuracy"])
