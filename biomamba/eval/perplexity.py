"""Perplexity and bits per byte of a model on raw text, with overlapping windows.

The model enters as one callable, ``nll_fn(windows) → per-token NLLs``: for each window of
token ids (a list, unpadded) the negative log-likelihood (nats) of tokens ``1 … n-1`` given
the ones before, i.e. ``n - 1`` values. Batching and padding are the callable's business
(``biomamba.eval.lm`` pads on the right and drops padded positions; padding is never scored).

A document longer than the window is scored HF-style with a sliding window: windows start
every ``stride`` tokens, each token is scored exactly once, by the first window that
contains it as a non-context token, so every token but those of the first window sees at
least ``window - stride`` tokens of context. With ``prefix_id`` (e.g. EOS), the document's
first token is scored too, conditioned on it; without, the first token is not scored.

Totals are token-weighted (Σ NLL / scored tokens), with UTF-8 bytes and whitespace words of
the text for bits per byte and word perplexity, which compare models with different
tokenizers fairly (lm-evaluation-harness's wikitext metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from biomamba.eval.metrics import NLLTotals

NLLFn = Callable[[Sequence[Sequence[int]]], Sequence[Sequence[float]]]


def window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_scored)`` per window over ``n_tokens`` ids: the window is
    ``ids[start:end]`` and it scores targets ``first_scored … end-1`` (positions whose NLL is
    taken). Targets 1 … n-1 are each scored exactly once."""
    if window < 2:
        raise ValueError(f"window must be ≥ 2 tokens, not {window}")
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be in [1, window - 1] = [1, {window - 1}], not {stride}")
    plan = []
    scored_until = 1  # next target to score
    start = 0
    while scored_until < n_tokens:
        end = min(start + window, n_tokens)
        plan.append((start, end, scored_until))
        scored_until = end
        start += stride
    return plan


def windowed_nll(ids: Sequence[int], nll_fn: NLLFn, window: int, stride: int | None = None,
                 batch_windows: int = 8) -> list[float]:
    """Per-token NLLs of ``ids[1:]`` (one per target, each scored once), windows of at most
    ``window`` tokens every ``stride`` (default: ``window // 2``)."""
    stride = stride if stride is not None else max(1, window // 2)
    plan = window_plan(len(ids), window, stride)
    out: list[float] = []
    for b in range(0, len(plan), batch_windows):
        chunk = plan[b:b + batch_windows]
        windows = [list(ids[s:e]) for s, e, _ in chunk]
        nlls = nll_fn(windows)
        for (s, e, first), win, nll in zip(chunk, windows, nlls):
            if len(nll) != len(win) - 1:
                raise ValueError(f"nll_fn returned {len(nll)} values for a window of {len(win)} tokens (want n-1)")
            out.extend(float(x) for x in list(nll)[first - s - 1:])  # target t is nll[t - s - 1]
    return out


def text_nll(texts: Iterable[str], tokenizer, nll_fn: NLLFn, window: int, stride: int | None = None,
             prefix_id: int | None = None, batch_windows: int = 8) -> NLLTotals:
    """Token-weighted NLL totals over documents (one text each, scored independently), with
    UTF-8 bytes and whitespace words of the scored text. ``prefix_id`` (EOS, for example) is
    prepended so that each document's first token is scored."""
    totals = NLLTotals()
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            totals.extra["empty_documents"] = totals.extra.get("empty_documents", 0) + 1
            continue
        if prefix_id is not None:
            ids = [prefix_id, *ids]
        totals.add_losses(windowed_nll(ids, nll_fn, window, stride, batch_windows))
        totals.bytes += len(text.encode("utf-8"))
        totals.words += len(text.split())
        totals.extra["documents"] = totals.extra.get("documents", 0) + 1
    if prefix_id is None:
        totals.extra["first_tokens_unscored"] = totals.extra.get("documents", 0)
    return totals


def shard_nll(model, data_dir: str | Path, split: str = "val", batch_size: int = 8,
              max_sequences: int | None = None) -> dict[str, NLLTotals]:
    """Token-weighted NLL per source over packed token shards (the tokenizer-controlled comparison).

    Targets follow the training objective: next tokens within a document (``seq_idx``), the
    last position of each row unscored. A row whose loss is not finite is excluded (its tokens
    counted as ``nonfinite``).
    """
    import torch

    from biomamba.data.shards import PackedDataset
    from biomamba.train.objective import CausalLMObjective
    from biomamba.train.trainer import collate_rows

    objective = CausalLMObjective()
    device = next(model.parameters()).device
    sources = PackedDataset(data_dir, split).sources
    out: dict[str, NLLTotals] = {}
    model.eval()
    for source in sources:
        ds = PackedDataset(data_dir, split, source=source)
        n = len(ds) if max_sequences is None else min(len(ds), max_sequences)
        totals = NLLTotals()
        for start in range(0, n, batch_size):
            batch = objective.prepare(collate_rows([ds[i] for i in range(start, min(n, start + batch_size))]))
            ids, seq_idx, targets = (batch[k].to(device) for k in ("input_ids", "seq_idx", "targets"))
            with torch.no_grad():
                hidden = model.hidden(ids, seq_idx=seq_idx)
                for row in range(ids.shape[0]):  # per row, so one bad row does not hide the others
                    loss_sum, count = model.kernels.linear_cross_entropy(hidden[row], model.lm_head.weight,
                                                                         targets[row])
                    totals.add_sum(loss_sum.item(), int(count.item()))  # a non-finite row is excluded, counted
        out[source] = totals
    return out
