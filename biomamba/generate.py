"""Batched decoding with the recurrent state: memory per sequence is constant in its length.

Prompts of different lengths are prefilled by length (a state-space model has no attention
mask, so padding would leak into the state), or, with CUDA graphs, together, each left-padded
with a separate document that the state does not cross; the batch then advances one token per
step. Greedy by default; temperature, top-k and
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


def stack_caches(caches: list[InferenceCache]) -> InferenceCache:
    """One cache holding the rows of several (prefill results joined into a batch; the server's rows)."""
    layers = []
    for per_layer in zip(*(c.layers for c in caches)):
        first = per_layer[0]
        layers.append(type(first)(conv=torch.cat([s.conv for s in per_layer]), ssm=torch.cat([s.ssm for s in per_layer])))
    return InferenceCache(layers, seqlen_offset=max(c.seqlen_offset for c in caches))


class StepRunner:
    """``model.step`` over one fixed batch and its own cache, greedy choice included when ``greedy``;
    ``prefill`` fills that cache from prompts.

    On CUDA (``cuda_graph``) the step is captured once as a CUDA graph and replayed per token:
    a decode step is four small kernels a layer, and launching them one by one from Python costs
    far more than running them (18.5 against 0.74 ms a token at 130M, bench/RESULTS.md). The
    first call runs eagerly on a side stream (it compiles the kernels and sizes the workspaces),
    the second captures; the cache's tensors are updated in place by every replay, so they are
    never replaced while the runner lives (``load`` and ``prefill`` write into them).

    The prefill is captured too, per prompt length bucket (a power of two ≥ 16): a short
    prompt's forward is host-bound as well (24 layers of ~20 launches at 130M). Each prompt is
    left-padded to the bucket with a separate document before it (``seq_idx`` 0 for the pad,
    1 for the prompt): neither the conv window nor the SSM state crosses a document boundary,
    so the states after the prompt are those of the prompt alone.
    """

    def __init__(self, model: MambaLM, batch: int, greedy: bool, cuda_graph: bool):
        self.model, self.batch, self.greedy = model, batch, greedy
        self.vocab = model.config.vocab_size
        self.cuda_graph = cuda_graph
        # a graph reads fixed tensors, so a graphed runner owns its states; an eager one adopts the
        # cache it is given (at 1.3B and batch 64 a cache is ~6.4 GB: never allocate one to discard)
        self.cache = model.allocate_cache(batch) if cuda_graph else None
        device = model.backbone.embedding.weight.device
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = False
        self.prefills: dict[int, _PrefillGraph] = {}  # bucket length → its captured forward

    def load(self, cache: InferenceCache) -> None:
        """Take over ``cache``'s states: copied into this runner's own, which its graphs read, or,
        without graphs, ``cache`` itself."""
        if not self.cuda_graph:
            self.cache = cache
            return
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.conv.copy_(theirs.conv)
            mine.ssm.copy_(theirs.ssm)
        self.cache.seqlen_offset = cache.seqlen_offset

    def prefill(self, prompts: list[list[int]]) -> Tensor:
        """Run the prompts (one a row, none empty) into this runner's cache; the last position's
        logits (b, padded_vocab)."""
        longest = max(len(p) for p in prompts)
        bucket = max(PREFILL_MIN, 1 << (longest - 1).bit_length())
        if not self.cuda_graph or self.batch * bucket > PREFILL_GRAPH_TOKENS:
            cache, logits = prefill(self.model, prompts)
            self.load(cache)
            return logits
        graph = self.prefills.pop(bucket, None) or _PrefillGraph(self, bucket)
        self.prefills[bucket] = graph  # most recently used last
        while len(self.prefills) > MAX_PREFILL_GRAPHS:
            self.prefills.pop(next(iter(self.prefills)))
        logits = graph(prompts)
        self.cache.seqlen_offset = longest
        return logits

    def _eager(self, tokens: Tensor) -> Tensor:
        logits = self.model.step(tokens, self.cache)
        logits[:, self.vocab:] = float("-inf")  # ids ≥ vocab are padding rows: never emitted
        return logits.argmax(dim=-1) if self.greedy else logits

    def __call__(self, tokens: Tensor) -> Tensor:
        """Next tokens (greedy) or masked logits (b, padded_vocab), from the previous tokens (b,).
        With a graph the result is a static buffer, overwritten by the next call."""
        if not self.cuda_graph:
            return self._eager(tokens)
        self.tokens.copy_(tokens)
        if not self.warmed:
            self.warmed = True
            return _on_side_stream(lambda: self._eager(self.tokens))
        if self.graph is None:
            offset = self.cache.seqlen_offset
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records only: nothing runs until replay
                self.out = self._eager(self.tokens)
            self.cache.seqlen_offset = offset
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.out


PREFILL_MIN = 16  # the shortest prefill bucket
# batch × bucket above which the prefill runs eagerly: it is then GPU-bound, and a captured forward
# keeps its activation memory for as long as the graph lives (up to 16,384 tokens: batch 64 × 256)
PREFILL_GRAPH_TOKENS = 1 << 14
MAX_PREFILL_GRAPHS = 2  # buckets a runner keeps captured


def _on_side_stream(fn: Callable[[], Tensor]) -> Tensor:
    """``fn()`` on a side stream, as CUDA-graph capture wants its warm-up run."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def left_padded(prompts: list[list[int]], length: int) -> tuple[Tensor, Tensor]:
    """(ids, seq_idx), both (b, length) on the CPU: each prompt at the end of its row, the pad
    before it (id 0) a document of its own (seq_idx 0; the prompt's is 1)."""
    ids = torch.zeros((len(prompts), length), dtype=torch.long)
    seq = torch.ones((len(prompts), length), dtype=torch.int32)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = torch.tensor(p)
        seq[row, :length - len(p)] = 0
    return ids, seq


class _PrefillGraph:
    """One bucket's prefill forward, writing the runner's cache: eager on the first call, captured
    on the second, replayed from then on."""

    def __init__(self, runner: StepRunner, length: int):
        self.runner, self.length = runner, length
        device = runner.tokens.device
        self.ids = torch.zeros((runner.batch, length), dtype=torch.long, device=device)
        self.seq_idx = torch.ones((runner.batch, length), dtype=torch.int32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = False

    def _forward(self) -> Tensor:
        model, cache = self.runner.model, self.runner.cache
        cache.seqlen_offset = 0
        return model.lm_head(model.hidden(self.ids, seq_idx=self.seq_idx, cache=cache)[:, -1])

    def __call__(self, prompts: list[list[int]]) -> Tensor:
        ids, seq = left_padded(prompts, self.length)
        self.ids.copy_(ids, non_blocking=True)
        self.seq_idx.copy_(seq, non_blocking=True)
        if not self.warmed:
            self.warmed = True
            return _on_side_stream(self._forward)
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._forward()
        self.graph.replay()
        return self.out


# captured decode steps kept per model: each holds a batch's states (1.3B at batch 64: ~6.4 GB of
# SSM state), so few; ``model.step_runners.clear()`` frees them
MAX_STEP_RUNNERS = 2


def step_runner(model: MambaLM, batch: int, greedy: bool, cuda_graph: bool) -> StepRunner:
    """A ``StepRunner`` for ``batch`` rows; fill its cache (``prefill`` or ``load``), then step it,
    and read ``runner.cache`` from then on.

    With CUDA graphs the runner (its captured graphs and its static states) is kept on the model
    and reused by later calls of the same batch size, as long as no parameter was replaced or
    changed in place (training in between), nor the backend or the SSM state dtype: a capture
    costs an eager step plus a captured one, which at 130M is many decode steps' worth."""
    if not cuda_graph:
        return StepRunner(model, batch, greedy=greedy, cuda_graph=False)
    key = (batch, greedy, model.backend_name, model.ssm_state_dtype,
           tuple((p.data_ptr(), p._version) for p in model.parameters()))
    runner = model.step_runners.get(key)
    if runner is None:
        if len(model.step_runners) >= MAX_STEP_RUNNERS:
            model.step_runners.pop(next(iter(model.step_runners)))
        runner = StepRunner(model, batch, greedy=greedy, cuda_graph=True)
        model.step_runners[key] = runner
    return runner


def prefill(model: MambaLM, prompts: list[list[int]]) -> tuple[InferenceCache, Tensor]:
    """Run the prompts into one batch cache; (cache, last-position logits (b, V)), rows in order.
    Prompts of equal length share one forward pass; others are never padded (padding would
    enter the recurrent state)."""
    device = model.backbone.embedding.weight.device
    by_length: dict[int, list[int]] = {}
    for row, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(row)
    caches, logits, order = [], [], []
    for rows in by_length.values():
        cache = model.allocate_cache(len(rows))
        hidden = model.hidden(torch.tensor([prompts[r] for r in rows], device=device), cache=cache)
        logits.append(model.lm_head(hidden[:, -1]))  # the head on the last position only
        caches.append(cache)
        order += rows
    cache, out = (caches[0], logits[0]) if len(caches) == 1 else (stack_caches(caches), torch.cat(logits))
    if order != sorted(order):  # back to the callers' row order
        inverse = torch.argsort(torch.tensor(order, device=device))
        for state in cache.layers:
            state.conv, state.ssm = state.conv[inverse], state.ssm[inverse]
        out = out[inverse]
    return cache, out


@torch.no_grad()
def generate_ids(model: MambaLM, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int | None,
                 should_stop: Callable[[int, list[int]], bool] | None = None,
                 on_token: Callable[[int, int], None] | None = None,
                 cuda_graph: bool | None = None, sync_every: int = 16) -> list[list[int]]:
    """New token ids for each prompt (EOS excluded). ``should_stop(row, ids)`` ends a row early
    (stop strings); ``on_token(row, id)`` streams.

    ``cuda_graph`` (default: on when the model is on CUDA) replays each step from a CUDA graph
    (``StepRunner``). Greedy decoding without callbacks keeps the tokens on the device and looks
    at them every ``sync_every`` steps (to stop once every row has hit EOS), so the host never
    waits on the GPU per token; the result is the same as looking every step.
    """
    device = model.backbone.embedding.weight.device
    vocab = model.config.vocab_size
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    if cfg.max_new_tokens == 0 or not prompts:
        return [[] for _ in prompts]
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph decoding needs the model on a CUDA device")
    greedy = cfg.temperature == 0
    step = step_runner(model, len(prompts), greedy=greedy, cuda_graph=cuda_graph)
    logits = step.prefill([p if p else [eos_id if eos_id is not None else 0] for p in prompts])
    logits[:, vocab:] = float("-inf")
    tokens = next_tokens(logits, cfg, generator)
    per_token = should_stop is not None or on_token is not None
    if greedy and not per_token:
        return _greedy_on_device(step, tokens, cfg.max_new_tokens, eos_id, max(1, sync_every))
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for i in range(cfg.max_new_tokens):
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
        if all(done) or i == cfg.max_new_tokens - 1:
            break
        out = step(tokens)
        tokens = out.clone() if greedy else next_tokens(out, cfg, generator)
    return outputs


def _greedy_on_device(step: StepRunner, tokens: Tensor, max_new: int, eos_id: int | None,
                      sync_every: int) -> list[list[int]]:
    """Greedy steps with the chosen tokens kept on the device; EOS checked every few steps."""
    history = torch.empty((tokens.shape[0], max_new), dtype=torch.long, device=tokens.device)
    history[:, 0] = tokens
    for i in range(1, max_new):
        if eos_id is not None and i % sync_every == 0 and bool((history[:, :i] == eos_id).any(1).all()):
            break
        history[:, i] = step(history[:, i - 1])
    else:
        i = max_new
    outputs = []
    for row in history[:, :i].tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        outputs.append(row)
    return outputs


def generate_text(model: MambaLM, tokenizer, prompts: list[str], cfg: SamplingConfig,
                  on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Decode completions for text prompts; stop strings are cut from the result."""
    encoded = [tokenizer.encode(p) for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    printed = [""] * len(prompts)

    def should_stop(row: int, ids: list[int]) -> bool:
        return any(s in tokenizer.decode(ids) for s in cfg.stop)

    def stream(row: int, token: int) -> None:
        generated[row].append(token)
        text = tokenizer.decode(generated[row])
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            on_text(row, text[len(printed[row]):])
            printed[row] = text

    out_ids = generate_ids(model, encoded, cfg, tokenizer.eos_id, should_stop=should_stop if cfg.stop else None,
                           on_token=stream if on_text is not None else None)
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
    prefilled once; the recurrent states are copied per beam and reordered in place at every
    step, so memory stays constant in the length, as in greedy decoding, and on CUDA each step
    is a CUDA-graph replay (``StepRunner``).
    """
    if num_beams < 1:
        raise ValueError("num_beams must be ≥ 1")
    device = model.backbone.embedding.weight.device
    vocab = model.config.vocab_size
    cache = model.allocate_cache(1)
    logits = model(torch.tensor([prompt or [eos_id if eos_id is not None else 0]], device=device), cache=cache)[:, -1]
    cache = stack_caches([cache] * num_beams)
    logits = logits.expand(num_beams, -1)
    step = step_runner(model, num_beams, greedy=False, cuda_graph=device.type == "cuda")
    step.load(cache)
    cache = step.cache  # the states the steps update (the runner's own)
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
        logits = step(torch.tensor(keep_tok, device=device))
    finished += [(ids, normalised(ids, s)) for ids, s in zip(beams, sums.tolist()) if s != float("-inf")]
    unique: dict[tuple[int, ...], float] = {}
    for ids, score in finished:
        unique[tuple(ids)] = max(score, unique.get(tuple(ids), float("-inf")))
    ranked = sorted(unique.items(), key=lambda kv: kv[1], reverse=True)[:num_beams]
    return [(list(ids), score) for ids, score in ranked]
