"""lm-evaluation-harness's ``local-completions`` model against the server: it finds the
server's tokenizer endpoints, scores continuations with echo + logprobs, and generates."""

from __future__ import annotations

import pytest
import torch

from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_text
from biomamba.model import MambaLM, model_preset
from biomamba.serve import make_server
from helpers import randomize_weights

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def served(neox_tokenizer_path):
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=11).eval()
    tok = load_tokenizer(neox_tokenizer_path)
    server = make_server(model, tok, port=0, model_name="tiny").start()
    yield server, model, tok
    server.stop()


def harness_model(url: str, **kwargs):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return LocalCompletionsAPI(model="tiny", base_url=url + "/v1/completions", max_retries=1, **kwargs)


def instance(kind: str, args: tuple, idx: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_loglikelihood_equals_the_models_own_scores(served):
    server, model, tok = served
    lm = harness_model(server.url, batch_size=2)
    assert type(lm.tokenizer).__name__ == "RemoteTokenizer"  # found /tokenizer_info and /tokenize
    pairs = [("Question: is aspirin an NSAID?\nAnswer:", " yes"), ("Question: is aspirin an NSAID?\nAnswer:", " no"),
             ("The patient was given", " metformin twice daily")]
    got = lm.loglikelihood([instance("loglikelihood", p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    for (context, continuation), (score, is_greedy) in zip(pairs, got):
        ctx, whole = tok.encode(context), tok.encode(context + continuation)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole]))[0, :, :model.config.vocab_size].float(), -1)
        targets = range(len(ctx), len(whole))
        assert score == pytest.approx(sum(lp[t - 1, whole[t]].item() for t in targets), abs=1e-3)
        assert is_greedy == all(int(lp[t - 1].argmax()) == whole[t] for t in targets)


def test_generate_until_equals_local_greedy_generation(served):
    server, model, tok = served
    lm = harness_model(server.url, max_gen_toks=8)
    prompt = "Discharge diagnosis:"
    (out,) = lm.generate_until([instance("generate_until", (prompt, {"until": ["\n\n"], "max_gen_toks": 8}))],
                               disable_tqdm=True)
    expected = generate_text(model, tok, [prompt], SamplingConfig(max_new_tokens=8, stop=["\n\n"]))[0]
    assert out == expected
