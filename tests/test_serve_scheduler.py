"""The continuous-batching scheduler driven step by step (no HTTP, no thread): rows that join a
running batch, leave it, or are cancelled decode exactly what ``generate_text`` decodes alone,
with the packed states (CPU) and with the fixed slots of a step runner (what CUDA uses, here
without graphs)."""

from __future__ import annotations

import pytest
import torch

from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_text
from biomamba.model import MambaLM, model_preset
from biomamba.serve.scheduler import Finished, Row, Scheduler, TextDelta, _Slots
from helpers import randomize_weights


@pytest.fixture(scope="module")
def model_and_tok(neox_tokenizer_path):
    return randomize_weights(MambaLM(model_preset("tiny")), seed=3).eval(), load_tokenizer(neox_tokenizer_path)


def make_row(tok, prompt: str, n: int, events: dict, **kw) -> Row:
    events[prompt] = []
    cfg = SamplingConfig(max_new_tokens=n, temperature=kw.pop("temperature", 0.0), seed=kw.pop("seed", 0),
                         stop=kw.pop("stop", []))
    return Row(tok.encode(prompt), cfg, on_event=events[prompt].append, **kw)


def steps(scheduler: Scheduler, n: int) -> None:
    """Up to ``n`` iterations; stops when idle (an idle iteration waits on the queue)."""
    with torch.no_grad():
        for _ in range(n):
            if not scheduler.rows and not scheduler.waiting:
                break
            scheduler._iteration()
            scheduler._flush()


@pytest.mark.parametrize("fixed_slots", [False, True])
def test_rows_joining_and_leaving_decode_as_if_alone(model_and_tok, fixed_slots):
    model, tok = model_and_tok
    scheduler = Scheduler(model, tok, max_batch=8, fixed_slots=fixed_slots)
    assert isinstance(scheduler.states, _Slots) == fixed_slots
    events: dict[str, list] = {}
    plan = {"Hypertension": 30, "Chest pain radiating to the left arm": 12, "Fever": 5}
    scheduler.submit([make_row(tok, p, n, events) for p, n in plan.items()])
    steps(scheduler, 3)
    assert len(scheduler.rows) == 3
    late = {"Sepsis with": 9, "A": 14, "The biopsy": 7, "Dyspnea": 3, "Renal": 6}
    scheduler.submit([make_row(tok, p, n, events, stream=True) for p, n in late.items()])
    sampled = make_row(tok, "Warfarin", 10, events, temperature=0.9, seed=11)
    scheduler.submit([sampled])
    steps(scheduler, 4)
    assert scheduler.counters["rows_joined_running_batch"] == 6  # they joined, not waited
    gone = make_row(tok, "Cancelled soon", 40, events)
    scheduler.submit([gone])
    steps(scheduler, 2)
    gone.cancel()
    steps(scheduler, 60)
    assert scheduler.rows == [] and scheduler.counters["rows_cancelled"] == 1
    if fixed_slots:  # grew to 16 slots for 9 rows, shrank as they left
        assert scheduler.states.capacity < 16
    assert events["Cancelled soon"] == []  # nothing is sent to a client that left
    for prompt, n in {**plan, **late}.items():
        (final,) = [e for e in events[prompt] if isinstance(e, Finished)]
        assert final.text == generate_text(model, tok, [prompt], SamplingConfig(max_new_tokens=n))[0], prompt
        if prompt in late:  # streamed pieces add up to the text
            assert "".join(e.text for e in events[prompt] if isinstance(e, TextDelta)) == final.text
    (final,) = [e for e in events["Warfarin"] if isinstance(e, Finished)]
    assert final.text == generate_text(model, tok, ["Warfarin"],
                                       SamplingConfig(max_new_tokens=10, temperature=0.9, seed=11))[0]


def test_max_batch_bounds_the_running_rows_and_the_rest_wait(model_and_tok):
    model, tok = model_and_tok
    scheduler = Scheduler(model, tok, max_batch=2)
    events: dict[str, list] = {}
    scheduler.submit([make_row(tok, f"Case {i}", 4, events) for i in range(5)])
    steps(scheduler, 1)
    assert len(scheduler.rows) == 2 and scheduler.metrics()["waiting"] == 3
    steps(scheduler, 20)
    assert scheduler.counters["max_running"] == 2 and scheduler.counters["rows_finished"] == 5


def test_echo_scores_and_zero_new_tokens_finish_at_admission(model_and_tok):
    model, tok = model_and_tok
    scheduler = Scheduler(model, tok)
    events: dict[str, list] = {}
    scheduler.submit([make_row(tok, "Anticoagulation therapy", 0, events, logprobs=2, echo=True)])
    steps(scheduler, 1)
    (final,) = events["Anticoagulation therapy"]
    ids = tok.encode("Anticoagulation therapy")
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0, :, :model.config.vocab_size], -1)
    assert final.completion_ids == [] and final.prompt_logprobs[0] is None
    assert final.prompt_logprobs[1:] == pytest.approx([lp[i - 1, ids[i]].item() for i in range(1, len(ids))],
                                                      abs=1e-5)
    assert all(len(top) == 2 for top in final.prompt_top[1:]) and scheduler.counters["steps"] == 0
