"""Prompt templates with named fields, and the one function that turns (prompt, response)
into token ids plus a loss mask.

A template names its fields (``"Context: {context}\\nQuestion: {question}\\nAnswer:"``) and
designates one of them as truncatable. When a rendered example is too long, only that field
is shortened: never the question, never the answer cue that ends the prompt, never the
response. The same template renders a task for SFT and for evaluation.

The loss mask is decided where the text is rendered (nanochat's ``render_conversation``):
the prompt and prompt + response are tokenised separately and the prompt's tokens must be a
prefix of the second (TRL's completion-only rule); the labels are ``-100`` on that prefix.
Nothing searches for template strings.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TokenizerLike(Protocol):
    """What rendering needs from a tokenizer (``biomamba.data.tokenizer.Tokenizer`` has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Template:
    """``text`` with ``{field}`` placeholders; ``truncate`` names the one field that may be
    shortened (``truncate_side`` "right" keeps its beginning, "left" its end);
    ``max_field_chars`` caps that field at render time (e.g. 4,000 characters of clinical
    context at evaluation)."""

    text: str
    truncate: str | None = None
    truncate_side: str = "right"
    max_field_chars: int | None = None

    def __post_init__(self) -> None:
        names = self.fields
        if self.truncate is not None and self.truncate not in names:
            raise ValueError(f"template: truncate field {self.truncate!r} is not one of its fields {names}")
        if self.truncate_side not in ("left", "right"):
            raise ValueError(f"template: truncate_side must be 'left' or 'right', not {self.truncate_side!r}")

    @property
    def fields(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.text) if name]

    def render(self, values: Mapping[str, Any]) -> str:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise KeyError(f"template needs fields {missing} (example has {sorted(values)})")
        values = dict(values)
        if self.truncate and self.max_field_chars is not None:
            values[self.truncate] = cut_text(str(values[self.truncate]), self.max_field_chars, self.truncate_side)
        return self.text.format(**values)


def cut_text(text: str, max_chars: int, side: str = "right") -> str:
    """Keep at most ``max_chars`` characters: the beginning (side "right") or the end ("left")."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] if side == "right" else text[len(text) - max_chars:]


@dataclass(frozen=True)
class Prompt:
    """A template with the values of its fields: a prompt that knows which part may be cut."""

    template: Template
    values: Mapping[str, Any]

    def render(self) -> str:
        return self.template.render(self.values)

    def with_field(self, name: str, value: str) -> "Prompt":
        return Prompt(self.template, {**self.values, name: value})


@dataclass
class Encoded:
    """Token ids and labels aligned with them (not shifted; ``-100`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    response_tokens: int
    prefix_ok: bool = True  # the prompt's tokens were a prefix of prompt + response's
    truncated_tokens: int = 0  # tokens cut from the truncatable field
    overlong: bool = False  # still longer than max_len with that field empty: do not train on it
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def _mask(prompt_ids: list[int], full_ids: list[int]) -> tuple[list[int], bool]:
    """Labels for ``full_ids`` with the prompt masked. When the prompt's tokens are not a prefix
    of the full sequence (a merge across the boundary), the common prefix is masked: the
    boundary token, which belongs to both, is then scored."""
    n = len(prompt_ids)
    ok = full_ids[:n] == prompt_ids
    if not ok:
        n = 0
        while n < min(len(prompt_ids), len(full_ids)) and prompt_ids[n] == full_ids[n]:
            n += 1
    return [IGNORE_INDEX] * n + full_ids[n:], ok


def _encode_pair(prompt: str, response: str, tokenizer: TokenizerLike, eos_id: int | None) -> tuple[list[int], list[int], list[int], bool]:
    prompt_ids = tokenizer.encode(prompt)
    full_ids = tokenizer.encode(prompt + response)
    if eos_id is not None:
        full_ids = full_ids + [eos_id]
    labels, ok = _mask(prompt_ids, full_ids)
    return prompt_ids, full_ids, labels, ok


def encode_example(prompt: Prompt | str, response: str, tokenizer: TokenizerLike, max_len: int | None = None,
                   add_eos: bool = True) -> Encoded:
    """Token ids + labels for SFT: ``-100`` on the prompt's tokens, the response (and EOS when
    ``add_eos``, so the model learns to stop) scored.

    When ``max_len`` is exceeded and ``prompt`` is a :class:`Prompt` whose template names a
    truncatable field, tokens are cut from that field only (from its end, or its beginning
    with ``truncate_side="left"``), then the prompt is rendered and tokenised again. If the
    example still does not fit (the field is empty, or ``prompt`` is a plain string), the
    result is marked ``overlong`` and left whole: the caller counts it, never trains on a cut
    answer.
    """
    eos_id = getattr(tokenizer, "eos_id", None) if add_eos else None
    if add_eos and eos_id is None:
        raise ValueError("add_eos=True needs a tokenizer with eos_id")
    text = prompt.render() if isinstance(prompt, Prompt) else prompt
    prompt_ids, full_ids, labels, ok = _encode_pair(text, response, tokenizer, eos_id)
    truncated = 0
    if max_len is not None and len(full_ids) > max_len and isinstance(prompt, Prompt) and prompt.template.truncate:
        name = prompt.template.truncate
        side = prompt.template.truncate_side
        field_ids = tokenizer.encode(str(prompt.values[name]))
        excess = len(full_ids) - max_len
        while excess > 0 and field_ids:
            # cutting k field tokens shortens the whole by about k (merges at the edges can
            # shift it by a token or two), so cut, re-render, re-measure until it fits
            cut = min(len(field_ids), excess)
            field_ids = field_ids[:len(field_ids) - cut] if side == "right" else field_ids[cut:]
            truncated += cut
            value = tokenizer.decode(field_ids).strip("\ufffd")  # a split multi-byte char at the edge
            prompt = prompt.with_field(name, value)
            prompt_ids, full_ids, labels, ok = _encode_pair(prompt.render(), response, tokenizer, eos_id)
            excess = len(full_ids) - max_len
    if not ok:
        log.warning("prompt tokens are not a prefix of prompt+response tokens: the boundary token is scored "
                    "(end the prompt with its answer cue and start the response with a space or newline)")
    n_prompt = sum(1 for label in labels if label == IGNORE_INDEX)
    return Encoded(input_ids=full_ids, labels=labels, prompt_tokens=n_prompt,
                   response_tokens=len(full_ids) - n_prompt, prefix_ok=ok, truncated_tokens=truncated,
                   overlong=max_len is not None and len(full_ids) > max_len)


def _ids_labels(item: Encoded | Mapping[str, Any]) -> tuple[list[int], list[int]]:
    if isinstance(item, Encoded):
        return item.input_ids, item.labels
    return list(item["input_ids"]), list(item["labels"])


def collate(batch: Sequence[Encoded | Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch (of :class:`Encoded` or rows with ``input_ids`` and ``labels``):
    ``input_ids`` padded with ``pad_id``, ``labels`` with ``-100`` (padding is never scored; a
    causal model's outputs before the padding do not see it)."""
    import torch

    pairs = [_ids_labels(item) for item in batch]
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (i, lab) in enumerate(pairs):
        ids[row, :len(i)] = torch.tensor(i, dtype=torch.long)
        labels[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return {"input_ids": ids, "labels": labels}


def pack(encoded: Sequence[Encoded], seq_len: int, pad_id: int) -> list[dict[str, Any]]:
    """Pack examples in order into rows of exactly ``seq_len`` tokens (a new row when the next
    example does not fit), with ``seq_idx`` numbering the examples of a row so that the model's
    state and the next-token targets never cross from one example to the next. The tail is
    padding (its own ``seq_idx``, labels ``-100``). Rows are numpy arrays, ready for a
    collate that stacks them."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    ids: list[int] = []
    labels: list[int] = []
    seq: list[int] = []

    def flush() -> None:
        pad = seq_len - len(ids)
        last = (seq[-1] + 1) if seq else 0
        rows.append({"input_ids": np.array(ids + [pad_id] * pad, dtype=np.int64),
                     "labels": np.array(labels + [IGNORE_INDEX] * pad, dtype=np.int64),
                     "seq_idx": np.array(seq + [last] * pad, dtype=np.int32)})

    for e in encoded:
        if len(e) > seq_len:
            raise ValueError(f"an example of {len(e)} tokens does not fit rows of {seq_len}: encode with max_len")
        if len(ids) + len(e) > seq_len:
            flush()
            ids, labels, seq = [], [], []
        doc = (seq[-1] + 1) if seq else 0
        ids += e.input_ids
        labels += e.labels
        seq += [doc] * len(e)
    if ids:
        flush()
    return rows
