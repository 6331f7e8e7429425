"""Perplexity over raw text: overlapping windows score each token once, padding is never
scored, and the result equals exp of a hand-computed mean cross-entropy with transformers."""

from __future__ import annotations

import math

import pytest
import torch

from biomamba.eval.lm import from_mamba, from_transformers
from biomamba.eval.perplexity import text_nll, window_plan, windowed_nll


def test_window_plan_by_hand():
    assert window_plan(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert window_plan(3, 8, 4) == [(0, 3, 1)]
    assert window_plan(1, 8, 4) == []  # a single token has nothing to predict
    with pytest.raises(ValueError):
        window_plan(10, 4, 4)  # stride = window would leave tokens without context


@pytest.mark.parametrize("n,window,stride", [(50, 8, 3), (33, 16, 15), (100, 10, 1), (7, 7, 6), (64, 16, 8)])
def test_every_token_scored_once_with_enough_context(n, window, stride):
    scored = []
    for start, end, first in window_plan(n, window, stride):
        assert end - start <= window and start < first <= end
        for t in range(first, end):
            scored.append(t)
            assert t - start >= min(t, window - stride)  # context of at least window - stride
    assert scored == list(range(1, n))


def fake_nll(windows):
    """NLL of target t in a window = 0.1 · token + 0.01 · (its position in the window)."""
    return [[0.1 * w[t] + 0.01 * t for t in range(1, len(w))] for w in windows]


def test_windowed_nll_hand_computed():
    ids = [5, 3, 8, 1, 9, 2]
    # windows (0,4) scores targets 1,2,3 at positions 1,2,3; (2,6) scores 4,5 at positions 2,3
    expected = [0.31, 0.82, 0.13, 0.92, 0.23]
    assert windowed_nll(ids, fake_nll, window=4, stride=2) == pytest.approx(expected)
    assert windowed_nll(ids, fake_nll, window=4, stride=2, batch_windows=1) == pytest.approx(expected)


class CharTokenizer:
    def encode(self, text):
        return [ord(c) % 50 for c in text]


def test_text_nll_token_weighted_bytes_words():
    docs = ["héllo wörld", "ab", ""]
    totals = text_nll(docs, CharTokenizer(), fake_nll, window=4, stride=2, prefix_id=0)
    per_doc = [windowed_nll([0, *CharTokenizer().encode(d)], fake_nll, 4, 2) for d in docs[:2]]
    nll = sum(sum(x) for x in per_doc)
    assert totals.tokens == len("héllo wörld") + 2  # every character scored, first ones too (prefix)
    assert totals.nll == pytest.approx(nll)
    assert totals.perplexity == pytest.approx(math.exp(nll / totals.tokens))  # not a mean of document means
    assert totals.bytes == len("héllo wörld".encode()) + 2 == 15 and totals.words == 3
    assert totals.bits_per_byte == pytest.approx(nll / (math.log(2) * 15))
    assert totals.extra["empty_documents"] == 1
    no_prefix = text_nll(docs[:1], CharTokenizer(), fake_nll, window=4, stride=2)
    assert no_prefix.tokens == len("héllo wörld") - 1 and no_prefix.extra["first_tokens_unscored"] == 1


def test_nonfinite_token_losses_excluded_and_counted():
    def nll(windows):
        return [[float("inf") if w[t] == 7 else 1.0 for t in range(1, len(w))] for w in windows]

    totals = text_nll(["\x07x\x07yz"], CharTokenizer(), nll, window=8, stride=4, prefix_id=0)
    assert totals.nonfinite == 2 and totals.tokens == 3 and totals.perplexity == pytest.approx(math.e)


@pytest.fixture(scope="module")
def tok(neox_tokenizer_path):
    from biomamba.data.tokenizer import load_tokenizer

    return load_tokenizer(neox_tokenizer_path)


@pytest.fixture(scope="module")
def wiki_text(shared_data):
    raw = (shared_data / "wikitext" / "wiki.test.raw").read_text(encoding="utf-8")
    return " ".join(raw.split()[:220])  # a few hundred tokens of real text


@pytest.fixture(scope="module")
def neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=2048)
    return GPTNeoXForCausalLM(cfg).eval()


def test_perplexity_equals_transformers_mean_cross_entropy(neox, tok, wiki_text):
    lm = from_transformers(neox, tok)
    ids = tok.encode(wiki_text)
    assert len(ids) > 200
    with torch.no_grad():
        hf_loss = neox(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # mean CE, shifted inside
    totals = text_nll([wiki_text], tok, lm.nll_windows, window=len(ids), stride=1)
    assert totals.tokens == len(ids) - 1
    assert totals.perplexity == pytest.approx(math.exp(hf_loss), rel=1e-5)
    assert totals.bits_per_byte == pytest.approx(hf_loss * (len(ids) - 1) / (math.log(2) * len(wiki_text.encode())),
                                                 rel=1e-5)
    # overlapping windows: each target scored once, by hand with transformers
    window, stride = 64, 32
    by_hand = []
    with torch.no_grad():
        for start, end, first in window_plan(len(ids), window, stride):
            logits = neox(torch.tensor([ids[start:end]])).logits[0].double()
            ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[start + 1:end]), reduction="none")
            by_hand.extend(ce[first - start - 1:].tolist())
    strided = text_nll([wiki_text], tok, lm.nll_windows, window=window, stride=stride)
    assert len(by_hand) == strided.tokens == len(ids) - 1
    assert strided.perplexity == pytest.approx(math.exp(sum(by_hand) / len(by_hand)), rel=1e-5)


def test_padding_never_scored(neox, tok, wiki_text):
    lm = from_transformers(neox, tok, batch_size=4)
    ids = tok.encode(wiki_text)
    windows = [ids[:50], ids[10:17], ids[:3], ids[5:40]]
    batched = lm.nll_windows(windows)  # right-padded together
    alone = [lm.nll_windows([w])[0] for w in windows]
    assert [len(b) for b in batched] == [len(w) - 1 for w in windows]
    for b, a in zip(batched, alone):
        assert b == pytest.approx(a, abs=1e-5)


def test_loglikelihood_adapter_equals_direct_sum(neox, tok):
    lm = from_transformers(neox, tok)
    ctx, cont = "Context: aspirin lowers fever.\nQuestion: Does aspirin lower fever?\nAnswer:", " yes"
    got = lm.loglikelihood([(ctx, cont), (ctx, " no"), ("", "yes")])
    ids = tok.encode(ctx + cont)
    n = len(tok.encode(ctx))
    with torch.no_grad():
        logp = torch.log_softmax(neox(torch.tensor([ids])).logits[0].double(), -1)
    direct = sum(logp[t - 1, ids[t]].item() for t in range(n, len(ids)))
    assert got[0] == pytest.approx(direct, abs=1e-4) and got[1] != got[0]
    assert math.isfinite(got[2])  # an empty context is conditioned on EOS


def test_mamba_adapter(tok):
    from biomamba.generate import SamplingConfig, generate_text
    from biomamba.model import MambaLM
    from biomamba.model.config import model_preset

    torch.manual_seed(0)
    model = MambaLM(model_preset("tiny")).eval()
    lm = from_mamba(model, tok, batch_size=2)
    ids = tok.encode("Aspirin reduces fever in adults and children with viral infections.")
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :, :model.config.vocab_size].double()
    ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    batched = lm.nll_windows([ids, ids[:5]])  # padded on the right with the shorter one
    assert batched[0] == pytest.approx(ce.tolist(), abs=1e-4) and batched[1] == pytest.approx(ce[:4].tolist(), abs=1e-4)
    prompts = ["Question: Does aspirin work?\nAnswer:", "Hello"]
    assert lm.generate(prompts, 5, ["\n"]) == generate_text(model, tok, prompts,
                                                            SamplingConfig(max_new_tokens=5, stop=["\n"]))
