"""Training objectives: which tokens are predicted, and the loss over them.

The trainer loop knows nothing about labels. An objective turns a collated batch into model
inputs plus per-position ``targets`` (already shifted; ``-100`` = not scored), and computes
``(Σ loss, number of scored tokens)`` for a micro-batch. The trainer divides by the token
count of the whole optimizer step (all micro-batches, all ranks), so the loss is
token-weighted over the global batch, never a mean of means.

* :class:`CausalLMObjective` (continued pretraining): every next token inside a document.
* :class:`MaskedLabelObjective` (SFT): next tokens where ``batch["labels"]`` is not
  ``-100`` (instruction tokens and padding masked out where the batch is rendered).

Targets at document boundaries: position ``t`` predicts token ``t+1`` only when both are in
the same document (same ``seq_idx``). The model's state is reset where a document starts,
so predicting a document's first token from the previous document's end would train on
noise; those positions (the EOS of each packed document but the last in a row) are masked,
as is the last position of each row, whose next token is in the next row. The cost is one
unscored token per packed document.

Padded rows (data built with ``packing: false``, one document per row) carry ``length``, the
row's real tokens: a position whose next token is at or after it (padding) is not scored, so
a padded row's loss is the loss of its document alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100


def next_token_targets(labels: Tensor, seq_idx: Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                       length: Tensor | None = None) -> Tensor:
    """``targets[:, t] = labels[:, t + 1]``; ``ignore_index`` at the last position, wherever
    position ``t + 1`` starts a different document than ``t`` (``seq_idx`` changes), and, given
    ``length`` (per row, its real tokens), wherever ``t + 1`` is padding (``t + 1 >= length``)."""
    targets = torch.full_like(labels, ignore_index)
    nxt = labels[:, 1:]
    if seq_idx is not None:
        nxt = nxt.masked_fill(seq_idx[:, 1:] != seq_idx[:, :-1], ignore_index)
    if length is not None:
        nxt_pos = torch.arange(1, labels.shape[1], device=labels.device)
        nxt = nxt.masked_fill(nxt_pos[None, :] >= length.to(labels.device).reshape(-1, 1), ignore_index)
    targets[:, :-1] = nxt
    return targets


class CausalLMObjective:
    """Next-token prediction within documents (continued pretraining)."""

    name = "causal_lm"
    ignore_index = IGNORE_INDEX

    def labels(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["input_ids"]

    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """Collated batch → ``{"input_ids", "seq_idx", "targets"}`` (the model's inputs and what it must predict).

        A batch of padded rows carries ``length`` (per row): padding is then never a target."""
        seq_idx = batch.get("seq_idx")
        targets = next_token_targets(self.labels(batch), seq_idx, self.ignore_index, batch.get("length"))
        return {"input_ids": batch["input_ids"], "seq_idx": seq_idx, "targets": targets}

    def loss(self, model: nn.Module, input_ids: Tensor, seq_idx: Tensor | None, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ cross-entropy over scored positions, their count). The final hidden states go through
        the kernel seam's chunked linear + cross-entropy, so full fp32 logits never exist."""
        from biomamba.kernels import get_kernels

        hidden = model.hidden(input_ids, seq_idx=seq_idx)
        ce = get_kernels(model.backend_name).linear_cross_entropy
        return ce(hidden, model.lm_head.weight, targets, ignore_index=self.ignore_index)


class MaskedLabelObjective(CausalLMObjective):
    """Next-token prediction where ``batch["labels"]`` (aligned with ``input_ids``, not shifted)
    is not ``-100``: SFT masks instruction tokens and padding this way."""

    name = "masked_labels"

    def labels(self, batch: dict[str, Tensor]) -> Tensor:
        if "labels" not in batch:
            raise KeyError("MaskedLabelObjective needs batch['labels'] (input_ids with -100 where not scored)")
        return batch["labels"]


class LossModule(nn.Module):
    """The module the trainer wraps (DDP / FSDP2 root): ``forward`` = the objective's loss.

    Wrappers hook ``forward``; routing the loss through this module (not ``model.hidden``
    directly) keeps their gradient sync and parameter gathering in the path."""

    def __init__(self, model: nn.Module, objective: Any):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, input_ids: Tensor, seq_idx: Tensor | None, targets: Tensor) -> tuple[Tensor, Tensor]:
        return self.objective.loss(self.model, input_ids, seq_idx, targets)
