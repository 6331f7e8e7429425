"""Decoding: `biomamba generate` against transformers' greedy generate; sampling; stop strings."""

from __future__ import annotations

import json

import pytest
import torch

from biomamba.cli import main as cli
from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_ids, generate_text
from biomamba.model import MambaLM, export_hf, model_preset
from helpers import randomize_weights

PROMPT = "BRCA1 mutations increase the risk of"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, neox_tokenizer_path):
    tmp = tmp_path_factory.mktemp("gen")
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=3).eval()
    export_hf(model, tmp / "hf", tokenizer=load_tokenizer(neox_tokenizer_path))
    return model, tmp / "hf"


def test_cli_greedy_equals_transformers_generate(exported, capsys):
    transformers = pytest.importorskip("transformers")
    _, path = exported
    assert cli(["generate", "--model", str(path), "--prompt", PROMPT, "--max-new-tokens", "20"]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    tok = load_tokenizer(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(PROMPT)])
    out = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    theirs = PROMPT + tok.decode(out[0, ids.shape[1]:].tolist())
    assert ours == theirs
    assert len(tok.encode(ours)) > len(tok.encode(PROMPT))


def test_batched_generation_equals_one_by_one(exported, neox_tokenizer_path):
    model, _ = exported
    tok = load_tokenizer(neox_tokenizer_path)
    prompts = [tok.encode(p) for p in ["Aspirin", "The patient was admitted with chest pain and", ""]]
    cfg = SamplingConfig(max_new_tokens=12)
    batched = generate_ids(model, prompts, cfg, eos_id=None)
    alone = [generate_ids(model, [p], cfg, eos_id=None)[0] for p in prompts]
    assert batched == alone and all(len(b) == 12 for b in batched)


def test_prefill_groups_equal_lengths_and_keeps_row_order(exported):
    """Equal-length prompts share one forward pass; rows come back in the caller's order with
    the same states and logits as prefilling each prompt alone."""
    from biomamba.generate import prefill

    model, _ = exported
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    lengths = [5, 3, 5, 7, 3, 5]
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    with torch.no_grad():
        cache, logits = prefill(model, prompts)
        _assert_each_row_as_if_alone(model, prompts, cache, logits, 1e-5)


def _assert_each_row_as_if_alone(model, prompts, cache, logits, tol: float) -> None:
    """Row r of (cache, logits) holds what prefilling prompts[r] by itself gives."""
    from biomamba.generate import prefill

    for row, ids in enumerate(prompts):
        one, one_logits = prefill(model, [ids])
        torch.testing.assert_close(logits[row], one_logits[0], rtol=tol, atol=tol)
        for state, alone in zip(cache.layers, one.layers):
            torch.testing.assert_close(state.ssm[row], alone.ssm[0], rtol=tol, atol=tol)
            torch.testing.assert_close(state.conv[row], alone.conv[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_greedy_on_device_equals_per_token_loop(exported, sync_every):
    """Greedy decoding that looks at its tokens every few steps gives what the per-token loop
    (taken whenever a callback is passed) gives, EOS cuts included."""
    model, _ = exported
    prompts = [[510, 1234, 7], [42], [9, 9, 9]]
    cfg = SamplingConfig(max_new_tokens=11)
    per_token = generate_ids(model, prompts, cfg, eos_id=None, should_stop=lambda row, ids: False)
    assert generate_ids(model, prompts, cfg, eos_id=None, sync_every=sync_every) == per_token
    eos = per_token[1][4]  # a token row 1 emits: rows end at their first occurrence of it
    looked = generate_ids(model, prompts, cfg, eos_id=eos, should_stop=lambda row, ids: False)
    assert generate_ids(model, prompts, cfg, eos_id=eos, sync_every=sync_every) == looked
    assert looked[1] == per_token[1][:per_token[1].index(eos)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cuda_graph_decoding_equals_eager(temperature):
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).cuda().eval()
    prompts = [[510, 1234, 7], [42], [9, 9, 9]]
    cfg = SamplingConfig(max_new_tokens=24, temperature=temperature, top_k=20, seed=3)
    eager = generate_ids(model, prompts, cfg, eos_id=None, cuda_graph=False)
    assert generate_ids(model, prompts, cfg, eos_id=None, cuda_graph=True) == eager
    assert generate_ids(model, prompts, cfg, eos_id=None, cuda_graph=True,
                        should_stop=lambda row, ids: False) == eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_decode_graph_reused_then_recaptured_after_a_weight_change():
    """A second call of the same batch size replays the first call's graph with the new prompts'
    states; after an in-place weight change (as training does) the graph is captured again. A
    stale graph would keep the old A = −exp(A_log) (decoding caches it) and differ from eager."""
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).cuda().eval()
    cfg = SamplingConfig(max_new_tokens=16)
    for prompts in ([[510, 7], [42, 3, 8]], [[9, 9], [1, 2]]):
        assert generate_ids(model, prompts, cfg, None, cuda_graph=True) == \
            generate_ids(model, prompts, cfg, None, cuda_graph=False)
    assert len(model.step_runners) == 1
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(1.0)
    prompts = [[9, 9], [1, 2]]
    assert generate_ids(model, prompts, cfg, None, cuda_graph=True) == \
        generate_ids(model, prompts, cfg, None, cuda_graph=False)
    assert len(model.step_runners) == 2


def test_step_runner_kept_per_batch_size_and_weights():
    """The kept decode runners (their graphs only run on CUDA; the bookkeeping is checked here):
    reused for the same batch size, taking new states in place, not for another batch size, not
    after an in-place weight change, and at most MAX_STEP_RUNNERS of them."""
    from biomamba.generate import MAX_STEP_RUNNERS, prefill, step_runner

    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).eval()
    runner = step_runner(model, 2, greedy=True, cuda_graph=True)
    assert step_runner(model, 2, greedy=True, cuda_graph=True) is runner
    states = [s.ssm for s in runner.cache.layers]
    second, _ = prefill(model, [[7, 8], [9, 10]])
    runner.load(second)
    assert runner.cache.seqlen_offset == second.seqlen_offset == 2
    for mine, theirs, before in zip(runner.cache.layers, second.layers, states):
        assert mine.ssm is before  # in place: a captured graph reads these very tensors
        assert torch.equal(mine.ssm, theirs.ssm) and torch.equal(mine.conv, theirs.conv)
    assert step_runner(model, 1, greedy=True, cuda_graph=True) is not runner
    assert step_runner(model, 2, greedy=False, cuda_graph=True) is not runner
    with torch.no_grad():
        model.backbone.norm_f.weight.mul_(2.0)
    assert step_runner(model, 2, greedy=True, cuda_graph=True) is not runner
    for n in range(2, 2 + MAX_STEP_RUNNERS):
        step_runner(model, n, greedy=True, cuda_graph=True)
    assert len(model.step_runners) == MAX_STEP_RUNNERS
    assert step_runner(model, 2, greedy=True, cuda_graph=False) is not runner  # eager: never kept


def test_bf16_ssm_state_halves_the_cache_and_tracks_the_fp32_one():
    """``ssm_state_dtype = bf16``: each SSM state is stored in bf16 (half the bytes), the conv
    windows are untouched, and 32 steps' logits stay close to the fp32-state ones (the step
    computes in fp32; only the stored state is rounded, once a step)."""
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=7).eval()
    prompts = [[510, 1234, 7, 99], [42, 5, 6, 8]]
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.ssm_state_dtype = dtype
        cache = model.allocate_cache(2)
        assert all(s.ssm.dtype == dtype and s.conv.dtype == torch.float32 for s in cache.layers)
        with torch.no_grad():
            out = [model.lm_head(model.hidden(torch.tensor(prompts), cache=cache)[:, -1])]
            tokens = torch.tensor([3, 4])
            for i in range(32):
                out.append(model.step(tokens, cache))
                tokens = torch.tensor([(7 * i + 3) % 500, (11 * i + 4) % 500])  # the same inputs for both
        logits[dtype] = torch.stack(out)
    model.ssm_state_dtype = torch.float32
    fp32, bf16 = logits[torch.float32], logits[torch.bfloat16]
    assert torch.equal(fp32[0], bf16[0])  # the prefill's logits do not read the stored state
    err = ((bf16[1:] - fp32[1:]).norm(dim=-1) / fp32[1:].norm(dim=-1)).max().item()
    assert 0 < err < 2e-2, err


def test_cli_state_dtype_flag(exported, capsys):
    _, path = exported
    args = ["generate", "--model", str(path), "--prompt", PROMPT, "--max-new-tokens", "8"]
    assert cli(args + ["--state_dtype=bfloat16"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)
    assert cli(args + ["--state_dtype=int8"]) != 0
    assert "state_dtype must be one of" in capsys.readouterr().err


def test_state_drift_bench_script(exported, capsys):
    """bench/state_drift.py on a checkpoint: both measures come out, over the prompts asked for."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "state_drift.py"
    spec = importlib.util.spec_from_file_location("state_drift", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", str(exported[1]), "--limit", "3", "--new", "6", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompts"] == 3 and row["new_tokens"] == 6 and 0 <= row["greedy_identical_rows"] <= 3
    drift = row["teacher_forced_logits_rel_diff"]
    assert 0 < drift["median"] <= drift["max"] < 0.1  # rounded, but close
    assert row["teacher_forced_argmax_differs"].endswith("of 15 steps")  # 3 rows × 5 fed tokens


def test_left_padded_prefill_equals_each_prompt_alone():
    """The CUDA-graph prefill's layout (each prompt left-padded to the bucket, the pad a document
    of its own): one forward gives each row the states and logits of its prompt alone."""
    from biomamba.generate import left_padded

    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).eval()
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    prompts = [torch.randint(1, model.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 16, 1, 9)]
    ids, seq = left_padded(prompts, 16)
    assert seq[2].tolist() == [0] * 15 + [1] and ids[2, -1] == prompts[2][0]
    with torch.no_grad():
        cache = model.allocate_cache(len(prompts))
        logits = model.lm_head(model.hidden(ids, seq_idx=seq, cache=cache)[:, -1])
        _assert_each_row_as_if_alone(model, prompts, cache, logits, 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_prefill_graph_replays_equal_the_eager_prefill():
    """The captured prefill (eager warm-up, capture, replays) writes the runner's cache with the
    states the eager prefill gives, for new prompts of other lengths in the same bucket."""
    from biomamba.generate import prefill, step_runner

    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).cuda().eval()
    runner = step_runner(model, 2, greedy=True, cuda_graph=True)
    with torch.no_grad():
        for prompts in ([[5, 6, 7], [8]], [[1] * 20, [2, 3]], [[4] * 17, [9] * 32], [[7, 7], [3] * 30]):
            logits = runner.prefill(prompts).clone()
            cache, ref = prefill(model, prompts)
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
            for mine, theirs in zip(runner.cache.layers, cache.layers):
                torch.testing.assert_close(mine.ssm, theirs.ssm, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(mine.conv, theirs.conv, rtol=1e-4, atol=1e-4)
    assert sorted(runner.prefills) == [16, 32] and runner.prefills[32].graph is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_beam_search_on_cuda_graphs_equals_cpu():
    from biomamba.generate import beam_search

    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).eval()
    on_cpu = beam_search(model, [510, 1234, 7], num_beams=4, max_new_tokens=10, eos_id=None)
    on_gpu = beam_search(model.cuda(), [510, 1234, 7], num_beams=4, max_new_tokens=10, eos_id=None)
    assert [ids for ids, _ in on_gpu] == [ids for ids, _ in on_cpu]
    assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(on_gpu, on_cpu))


def test_cuda_graph_refused_off_cuda(exported):
    model, _ = exported
    with pytest.raises(ValueError, match="CUDA"):
        generate_ids(model, [[1, 2]], SamplingConfig(max_new_tokens=2), eos_id=None, cuda_graph=True)


def test_sampling_is_seeded_and_filters_work(exported):
    model, _ = exported
    prompts = [[510, 1234], [42]]
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5, seed=7)
    first = generate_ids(model, prompts, cfg, eos_id=None)
    assert first == generate_ids(model, prompts, cfg, eos_id=None)
    assert first != generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5, seed=8),
                                 eos_id=None)
    # top_k=1 and a tiny top_p both reduce to greedy
    greedy = generate_ids(model, prompts, SamplingConfig(max_new_tokens=8), eos_id=None)
    assert generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=1), eos_id=None) == greedy
    assert generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=1e-6),
                        eos_id=None) == greedy


def test_eos_and_stop_strings_end_a_row(exported, neox_tokenizer_path):
    model, _ = exported
    tok = load_tokenizer(neox_tokenizer_path)
    greedy = generate_ids(model, [tok.encode(PROMPT)], SamplingConfig(max_new_tokens=10), eos_id=None)[0]
    # pretend the 4th greedy token is EOS: generation stops before it
    assert generate_ids(model, [tok.encode(PROMPT)], SamplingConfig(max_new_tokens=10), eos_id=greedy[3])[0] == greedy[:3]
    full = generate_text(model, tok, [PROMPT], SamplingConfig(max_new_tokens=10))[0]
    stop = tok.decode(greedy[4:6])
    assert stop and stop in full
    cut = generate_text(model, tok, [PROMPT], SamplingConfig(max_new_tokens=10, stop=[stop]))[0]
    assert cut == full[:full.index(stop)]


def test_cli_file_mode_and_bad_file(exported, tmp_path, capsys):
    _, path = exported
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Insulin"}) + "\n\n" + json.dumps({"prompt": "Heparin"}) + "\n")
    assert cli(["generate", "--model", str(path), "--file", str(prompts), "--max-new-tokens", "4",
                "--out", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Insulin", "Heparin"] and all(r["completion"] for r in rows)
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert cli(["generate", "--model", str(path), "--file", str(prompts)]) == 1
    assert "p.jsonl:2" in capsys.readouterr().err


def _sequence_logprob(model, prompt: list[int], ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids]))[0, :, :model.config.vocab_size].float()
    logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[len(prompt) - 1 + i, t] for i, t in enumerate(ids)))


def test_beam_search_scores_are_sequence_logprobs_and_one_beam_is_greedy(exported):
    from biomamba.generate import beam_search

    model, _ = exported
    prompt = [510, 1234, 77, 9]
    greedy = generate_ids(model, [prompt], SamplingConfig(max_new_tokens=6), eos_id=None)[0]
    assert beam_search(model, prompt, 1, 6, eos_id=None)[0][0] == greedy
    beams = beam_search(model, prompt, 4, 6, eos_id=None, length_penalty=0.0)
    assert len(beams) == 4 and len({tuple(ids) for ids, _ in beams}) == 4
    scores = [score for _, score in beams]
    assert scores == sorted(scores, reverse=True)
    for ids, score in beams:
        assert len(ids) == 6 and score == pytest.approx(_sequence_logprob(model, prompt, ids), abs=1e-4)
    assert scores[0] >= _sequence_logprob(model, prompt, greedy) - 1e-4  # here the best beam is at least greedy
    normalised = beam_search(model, prompt, 4, 6, eos_id=None)  # length_penalty 1: Σ log p / length
    assert normalised[0][1] == pytest.approx(_sequence_logprob(model, prompt, normalised[0][0]) / 6, abs=1e-4)


def test_ranked_candidates_for_factoid_qa(exported, neox_tokenizer_path):
    from biomamba.eval.lm import from_mamba

    model, _ = exported
    lm = from_mamba(model, load_tokenizer(neox_tokenizer_path))
    ranked = lm.generate_ranked(["Question: which gene?\nAnswer:"], 3, 5, stop=["\n"])[0]
    assert 1 <= len(ranked) <= 3 and all("\n" not in text for text, _ in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_shared_context_scoring_equals_the_padded_batch_path(exported, neox_tokenizer_path):
    from biomamba.eval.lm import CausalLM, from_mamba

    model, _ = exported
    tok = load_tokenizer(neox_tokenizer_path)
    requests = [("Context: aspirin lowers risk.\nAnswer:", " yes"), ("Context: aspirin lowers risk.\nAnswer:", " no"),
                ("Is warfarin an anticoagulant?", " yes, it is an anticoagulant"), ("", "Metformin"),
                ("Heparin", "")]
    shared = from_mamba(model, tok).loglikelihood_greedy(requests)
    plain = CausalLM.loglikelihood_greedy(from_mamba(model, tok), requests)  # the generic right-padded path
    for (a, ga), (b, gb) in zip(shared, plain):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert shared[-1] == (0.0, True)


def test_mamba1_greedy_equals_transformers_generate(tmp_path, neox_tokenizer_path):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(neox_tokenizer_path)
    model = randomize_weights(MambaLM(model_preset("tiny-mamba1")), seed=8).eval()
    export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = tok.encode(PROMPT)
    theirs = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)[0, len(ids):].tolist()
    ours = generate_ids(model, [ids], SamplingConfig(max_new_tokens=12), eos_id=tok.eos_id)[0]
    if tok.eos_id in theirs:  # transformers keeps the EOS (and pads after it); ours stops before it
        theirs = theirs[:theirs.index(tok.eos_id)]
    assert type(hf).__name__ == "MambaForCausalLM" and ours == theirs and ours
