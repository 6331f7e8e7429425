"""Batched decoding with the recurrent state: memory per sequence is constant in its length.

Prompts of different lengths are prefilled one by one (a state-space model has no attention
mask, so padding would leak into the state), their states are stacked into one batch cache,
and the batch then advances one token per step. Greedy by default; temperature, top-k and
top-p sampling with a seeded generator; EOS and stop strings end a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from biomamba.model import InferenceCache, MambaLM


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 → greedy
    top_k: int = 0  # 0 → no top-k filter
    top_p: float = 1.0  # 1 → no nucleus filter
    seed: int = 42
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be ≥ 0")
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be ≥ 0")


def next_tokens(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """Choose one token per row from logits (b, V)."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _stack_caches(caches: list[InferenceCache]) -> InferenceCache:
    layers = []
    for per_layer in zip(*(c.layers for c in caches)):
        first = per_layer[0]
        layers.append(type(first)(conv=torch.cat([s.conv for s in per_layer]), ssm=torch.cat([s.ssm for s in per_layer])))
    return InferenceCache(layers, seqlen_offset=max(c.seqlen_offset for c in caches))


@torch.no_grad()
def generate_ids(model: MambaLM, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int | None,
                 should_stop: Callable[[int, list[int]], bool] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """New token ids for each prompt (EOS excluded). ``should_stop(row, ids)`` ends a row early
    (stop strings); ``on_token(row, id)`` streams."""
    device = model.backbone.embedding.weight.device
    vocab = model.config.vocab_size  # ids ≥ vocab are padding rows of the embedding: never emitted
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    if cfg.max_new_tokens == 0 or not prompts:
        return [[] for _ in prompts]
    caches, last_logits = [], []
    for prompt in prompts:
        ids = prompt if prompt else [eos_id if eos_id is not None else 0]  # an empty prompt starts at EOS
        cache = model.allocate_cache(1)
        logits = model(torch.tensor([ids], device=device), cache=cache)[:, -1]
        caches.append(cache)
        last_logits.append(logits)
    cache = _stack_caches(caches)
    logits = torch.cat(last_logits)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(cfg.max_new_tokens):
        logits[:, vocab:] = float("-inf")
        tokens = next_tokens(logits, cfg, generator)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if eos_id is not None and token == eos_id:
                done[row] = True
                continue
            outputs[row].append(token)
            if on_token is not None:
                on_token(row, token)
            if should_stop is not None and should_stop(row, outputs[row]):
                done[row] = True
        if bool(done.all()):
            break
        logits = model.step(tokens, cache)
    return outputs


def generate_text(model: MambaLM, tokenizer, prompts: list[str], cfg: SamplingConfig,
                  on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Decode completions for text prompts; stop strings are cut from the result."""
    encoded = [tokenizer.encode(p) for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    printed = [""] * len(prompts)

    def should_stop(row: int, ids: list[int]) -> bool:
        return bool(cfg.stop) and any(s in tokenizer.decode(ids) for s in cfg.stop)

    def stream(row: int, token: int) -> None:
        if on_text is None:
            return
        generated[row].append(token)
        text = tokenizer.decode(generated[row])
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            on_text(row, text[len(printed[row]):])
            printed[row] = text

    out_ids = generate_ids(model, encoded, cfg, tokenizer.eos_id, should_stop=should_stop, on_token=stream)
    results = []
    for ids in out_ids:
        text = tokenizer.decode(ids)
        cuts = [text.index(s) for s in cfg.stop if s in text]
        results.append(text[:min(cuts)] if cuts else text)
    return results


@torch.no_grad()
def beam_search(model: MambaLM, prompt: list[int], num_beams: int, max_new_tokens: int, eos_id: int | None,
                length_penalty: float = 1.0,
                should_stop: Callable[[list[int]], bool] | None = None) -> list[tuple[list[int], float]]:
    """The ``num_beams`` best continuations of one prompt, best first, as (token ids, score).

    score = Σ log p(token) / len^length_penalty (the Hugging Face convention; 0 = plain sum).
    A beam ends at EOS (not included) or when ``should_stop(ids)`` says so. The prompt is
    prefilled once; the recurrent states are copied per beam and reordered at every step, so
    memory stays constant in the length, as in greedy decoding.
    """
    if num_beams < 1:
        raise ValueError("num_beams must be ≥ 1")
    device = model.backbone.embedding.weight.device
    vocab = model.config.vocab_size
    cache = model.allocate_cache(1)
    logits = model(torch.tensor([prompt or [eos_id if eos_id is not None else 0]], device=device), cache=cache)[:, -1]
    cache = _stack_caches([cache] * num_beams)
    logits = logits.expand(num_beams, -1)
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    sums = torch.full((num_beams,), float("-inf"), device=device)
    sums[0] = 0.0  # all beams start identical: keep one, or the top-k would be k copies of it
    finished: list[tuple[list[int], float]] = []

    def normalised(ids: list[int], total: float) -> float:
        return total / (max(len(ids), 1) ** length_penalty)

    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(logits[:, :vocab].float(), dim=-1)
        scores = (sums[:, None] + logprobs).flatten()
        top = torch.topk(scores, min(2 * num_beams, scores.numel()))
        keep_from, keep_tok, keep_sum = [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            if score == float("-inf"):
                break
            origin, token = divmod(flat, vocab)
            ids = beams[origin] + [token]
            if eos_id is not None and token == eos_id:
                finished.append((beams[origin], normalised(beams[origin], score)))
            elif should_stop is not None and should_stop(ids):
                finished.append((ids, normalised(ids, score)))
            else:
                keep_from.append(origin)
                keep_tok.append(token)
                keep_sum.append(score)
            if len(keep_from) == num_beams:
                break
        best_alive = max((normalised(beams[o] + [t], s) for o, t, s in zip(keep_from, keep_tok, keep_sum)),
                         default=float("-inf"))
        if not keep_from or (len(finished) >= num_beams and
                             sorted(f[1] for f in finished)[-num_beams] >= best_alive and length_penalty <= 0):
            break
        while len(keep_from) < num_beams:  # fewer live candidates than beams: pad with dead ones
            keep_from.append(keep_from[0])
            keep_tok.append(keep_tok[0])
            keep_sum.append(float("-inf"))
        index = torch.tensor(keep_from, device=device)
        for state in cache.layers:
            state.conv.copy_(state.conv.index_select(0, index))
            state.ssm.copy_(state.ssm.index_select(0, index))
        beams = [beams[o] + [t] for o, t in zip(keep_from, keep_tok)]
        sums = torch.tensor(keep_sum, device=device)
        logits = model.step(torch.tensor(keep_tok, device=device), cache)
    finished += [(ids, normalised(ids, s)) for ids, s in zip(beams, sums.tolist()) if s != float("-inf")]
    unique: dict[tuple[int, ...], float] = {}
    for ids, score in finished:
        unique[tuple(ids)] = max(score, unique.get(tuple(ids), float("-inf")))
    ranked = sorted(unique.items(), key=lambda kv: kv[1], reverse=True)[:num_beams]
    return [(list(ids), score) for ids, score in ranked]
