"""Adapters from a causal LM to the evaluation protocol: ``loglikelihood`` (Scorer),
``generate`` (Generator) and ``nll_windows`` (the perplexity callable).

``CausalLM(logits_fn, tokenizer)`` works for any model given as ``logits_fn(ids, mask) → logits``
(b, l, V); :func:`from_mamba` and :func:`from_transformers` build one for our ``MambaLM`` and for
a ``transformers`` ``AutoModelForCausalLM``. Batches are padded on the right: a causal
model's outputs before the padding never see it, and padded positions are never scored.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

LogitsFn = Callable[[Tensor, Tensor], Tensor]


class _HFTokenizer:
    """``transformers`` tokenizer → the encode/decode/eos_id interface of ours."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def as_tokenizer(tok):
    """Ours as is; a ``transformers`` tokenizer wrapped."""
    return tok if hasattr(tok, "eos_id") else _HFTokenizer(tok)


class CausalLM:
    def __init__(self, logits_fn: LogitsFn, tokenizer, device: torch.device | str = "cpu", batch_size: int = 8,
                 max_length: int | None = None,
                 generate_fn: Callable[[list[str], int, list[str]], list[str]] | None = None):
        self.logits_fn = logits_fn
        self.tokenizer = as_tokenizer(tokenizer)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.generate_fn = generate_fn
        self.pad_id = getattr(self.tokenizer, "pad_id", None) or 0

    # ---- the core: per-token log-probabilities of right-padded rows ---------------------------
    @torch.no_grad()
    def _score_rows(self, rows: Sequence[Sequence[int]]) -> list[tuple[Tensor, Tensor]]:
        """For each row, log p(row[t] | row[:t]) for t = 1 … len-1 (float64 on CPU), and whether
        row[t] is the argmax there (for "is greedy" answers)."""
        out: list[tuple[Tensor, Tensor]] = []
        for b in range(0, len(rows), self.batch_size):
            chunk = rows[b:b + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
                mask[i, :len(r)] = 1
            logits = self.logits_fn(ids.to(self.device), mask.to(self.device))[:, :-1].float()
            target = ids[:, 1:].to(self.device).unsqueeze(-1)
            picked = logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # log-softmax at the target
            greedy = (logits.argmax(-1) == target.squeeze(-1)).cpu()
            for i, r in enumerate(chunk):
                n = len(r) - 1  # padded positions dropped
                out.append((picked[i, :n].double().cpu(), greedy[i, :n]))
        return out

    def _target_logprobs(self, rows: Sequence[Sequence[int]]) -> list[Tensor]:
        return [lp for lp, _ in self._score_rows(rows)]

    # ---- Scorer --------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Σ log p(continuation tokens | context). The continuation's tokens are those of
        ``context + continuation`` after the context's (its own encoding where the context's
        tokens are not a prefix); an empty context is conditioned on EOS."""
        return [ll for ll, _ in self.loglikelihood_greedy(requests)]

    def _request_tokens(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids): the continuation's tokens are those of ``context +
        continuation`` after the context's (its own encoding where the context's tokens are not
        a prefix); an empty context is EOS."""
        ctx = self.tokenizer.encode(context) if context else [self.tokenizer.eos_id]
        whole = self.tokenizer.encode(context + continuation) if context else ctx + self.tokenizer.encode(continuation)
        cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else self.tokenizer.encode(continuation)
        return ctx, cont

    def loglikelihood_greedy(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``loglikelihood`` and whether greedy decoding would produce the continuation."""
        rows, n_cont = [], []
        for context, continuation in requests:
            ctx, cont = self._request_tokens(context, continuation)
            row = ctx + cont
            if self.max_length is not None and len(row) > self.max_length:
                row = row[-self.max_length:]  # keep the continuation, drop the oldest context
            rows.append(row)
            n_cont.append(len(cont))
        return [(float(lp[-n:].sum()), bool(g[-n:].all())) if n else (0.0, True)
                for (lp, g), n in zip(self._score_rows(rows), n_cont)]

    # ---- perplexity callable ---------------------------------------------------------------------
    def nll_windows(self, windows: Sequence[Sequence[int]]) -> list[list[float]]:
        return [(-lp).tolist() for lp in self._target_logprobs(windows)]

    # ---- Generator -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        if self.generate_fn is None:
            raise NotImplementedError("this adapter was built without a generate function")
        return self.generate_fn(list(prompts), max_new_tokens, list(stop))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


class MambaCausalLM(CausalLM):
    """Our ``MambaLM``. Requests sharing a context are scored from one prefill of it: the
    recurrent state after the context is copied for each continuation (yes/no choices cost
    one forward pass, not one per choice). Beam search gives ranked candidates."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        from biomamba.generate import SamplingConfig, generate_text

        self.model = model
        vocab = model.config.vocab_size

        def logits_fn(ids: Tensor, mask: Tensor) -> Tensor:
            return model(ids)[..., :vocab]

        def generate_fn(prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
            cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
            out: list[str] = []
            for b in range(0, len(prompts), batch_size):
                out.extend(generate_text(model, tokenizer, prompts[b:b + batch_size], cfg))
            return out

        super().__init__(logits_fn, tokenizer, _device_of(model), batch_size, generate_fn=generate_fn)

    @torch.no_grad()
    def loglikelihood_greedy(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        from biomamba.generate import stack_caches

        model, vocab = self.model, self.model.config.vocab_size
        by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (context, continuation) in enumerate(requests):
            ctx, cont = self._request_tokens(context, continuation)
            by_context.setdefault(tuple(ctx), []).append((i, cont))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for ctx, items in by_context.items():
            cache = model.allocate_cache(1)
            first = model(torch.tensor([list(ctx)], device=self.device), cache=cache)[0, -1, :vocab].float()
            for i, cont in items:
                if not cont:
                    continue
                state = stack_caches([cache])  # a copy: each continuation starts from the context's state
                logits, total, greedy = first, 0.0, True
                for t, token in enumerate(cont):
                    if t:
                        logits = model.step(torch.tensor([cont[t - 1]], device=self.device), state)[0, :vocab].float()
                    total += float(torch.log_softmax(logits, -1)[token])
                    greedy = greedy and int(logits.argmax()) == token
                out[i] = (total, greedy)
        return out

    def generate_ranked(self, prompts: Sequence[str], num_candidates: int, max_new_tokens: int,
                        stop: Sequence[str] = ()) -> list[list[tuple[str, float]]]:
        """Beam search: up to ``num_candidates`` answers per prompt, best first, with their
        length-normalised log-probabilities (factoid QA ranks these)."""
        from biomamba.generate import beam_search

        tok = self.tokenizer

        def cut(text: str) -> str:
            cuts = [text.index(s) for s in stop if s in text]
            return text[:min(cuts)] if cuts else text

        def stopped(ids: list[int]) -> bool:
            return any(s in tok.decode(ids) for s in stop)

        out = []
        for prompt in prompts:
            beams = beam_search(self.model, tok.encode(prompt), num_candidates, max_new_tokens, tok.eos_id,
                                should_stop=stopped if stop else None)
            out.append([(cut(tok.decode(ids)), score) for ids, score in beams])
        return out


def from_mamba(model, tokenizer, batch_size: int = 8) -> CausalLM:
    """Our ``MambaLM``: logits over the padded vocabulary are cut to the tokenizer's; greedy
    generation through ``biomamba.generate`` (recurrent state, stop strings)."""
    return MambaCausalLM(model, tokenizer, batch_size)


def max_positions(model) -> int | None:
    """The longest input a transformers model's position embeddings take (GPT-2's n_positions,
    BioGPT's max_position_embeddings: 1,024), None when the config names none."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def from_transformers(model, tokenizer, batch_size: int = 8, max_length: int | None = None) -> CausalLM:
    """Any ``transformers`` causal LM with its own tokenizer (the contextual comparison). Inputs
    longer than the model's positions (``max_length``, default :func:`max_positions`) lose their
    oldest tokens: the start of the prompt, which is its context part in every task template,
    never the question, the answer cue or the scored continuation."""
    tok = as_tokenizer(tokenizer)
    limit = max_length if max_length is not None else max_positions(model)

    def logits_fn(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    @torch.no_grad()
    def generate_fn(prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        out = []
        for prompt in prompts:  # one at a time: no left-padding subtleties
            ids = tok.encode(prompt) or [tok.eos_id]
            if limit is not None:
                ids = ids[-max(1, limit - max_new_tokens):]  # room for the new tokens within the positions
            ids = torch.tensor([ids], device=_device_of(model))
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_id)
            text = tok.decode(gen[0, ids.shape[1]:].tolist())
            cuts = [text.index(s) for s in stop if s in text]
            out.append(text[:min(cuts)] if cuts else text)
        return out

    return CausalLM(logits_fn, tok, _device_of(model), batch_size, limit, generate_fn)
