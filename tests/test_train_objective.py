"""Objectives: which positions are scored, and a token-weighted loss through the kernel seam."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biomamba.train.objective import CausalLMObjective, LossModule, MaskedLabelObjective, next_token_targets


def _tiny_model(seed: int = 0):
    from biomamba.model import MambaLM, model_preset

    torch.manual_seed(seed)
    return MambaLM(model_preset("tiny", vocab_size=50, d_model=16, n_layer=2, d_state=4, headdim=4, chunk_size=8))


def test_next_token_targets_mask_document_boundaries_and_last_position():
    ids = torch.tensor([[5, 6, 0, 7, 8, 0, 9]])
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 2]])  # EOS (0) ends a document; the next starts after it
    t = next_token_targets(ids, seq_idx)
    # 5→6, 6→EOS scored; EOS→7 crosses into document 1: masked; …; last position: masked
    assert t.tolist() == [[6, 0, -100, 8, 0, -100, -100]]
    assert next_token_targets(ids).tolist() == [[6, 0, 7, 8, 0, 9, -100]]


def test_masked_label_objective_scores_only_labelled_tokens():
    ids = torch.tensor([[11, 12, 13, 14, 15, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, 14, 15, -100, -100]])  # prompt and padding masked
    prep = MaskedLabelObjective().prepare({"input_ids": ids, "labels": labels})
    assert prep["targets"].tolist() == [[-100, -100, 14, 15, -100, -100, -100]]
    assert prep["seq_idx"] is None


def test_loss_equals_cross_entropy_of_logits():
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (3, 20), generator=g)
    seq_idx = torch.zeros(3, 20, dtype=torch.int32)
    seq_idx[1, 9:] = 1
    prep = CausalLMObjective().prepare({"input_ids": ids, "seq_idx": seq_idx})
    loss_sum, count = LossModule(model, CausalLMObjective())(**prep)
    logits = model(ids, seq_idx=seq_idx).float()
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), prep["targets"].reshape(-1), ignore_index=-100,
                          reduction="sum")
    assert int(count) == 3 * 19 - 1
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-5)


def test_token_weighted_gradient_over_micro_batches():
    """Σ over micro-batches of (loss_sum / N_step) gives the gradient of the mean over all scored
    tokens of the step, whatever each micro-batch's own count (not a mean of means)."""
    ids = torch.randint(1, 50, (4, 16), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :12] = -100  # micro-batch 1 scores far fewer tokens than micro-batch 2
    obj = MaskedLabelObjective()
    full = _tiny_model()
    prep = obj.prepare({"input_ids": ids, "labels": labels})
    s, n = LossModule(full, obj)(**prep)
    (s / n).backward()
    split = _tiny_model()
    n_step = int((prep["targets"] != -100).sum())
    for rows in (slice(0, 2), slice(2, 4)):
        p = obj.prepare({"input_ids": ids[rows], "labels": labels[rows]})
        s_k, _ = LossModule(split, obj)(**p)
        (s_k / n_step).backward()
    for (name, a), (_, b) in zip(full.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_next_token_targets_never_score_padding():
    ids = torch.tensor([[5, 6, 7, 0, 1, 1, 1],    # a document of 4 (EOS included), then padding
                        [5, 6, 7, 8, 9, 4, 3]])   # a full row (a document cut to the row)
    seq_idx = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0] * 7])
    t = next_token_targets(ids, seq_idx, length=torch.tensor([4, 7]))
    assert t.tolist() == [[6, 7, 0, -100, -100, -100, -100], [6, 7, 8, 9, 4, 3, -100]]
    # seq_idx alone masks only the step into the padding; pad → pad would still be scored
    assert next_token_targets(ids, seq_idx)[0].tolist() == [6, 7, 0, -100, 1, 1, -100]


def test_loss_of_a_padded_row_equals_the_document_alone():
    model = _tiny_model()
    doc = torch.randint(2, 50, (1, 11), generator=torch.Generator().manual_seed(3))
    doc[0, -1] = 0  # EOS
    row = torch.cat([doc, torch.ones(1, 9, dtype=torch.long)], dim=1)  # padded with id 1 to 20
    seq_idx = (torch.arange(20) >= 11).to(torch.int32)[None]
    obj = CausalLMObjective()
    with torch.no_grad():
        padded_sum, padded_n = LossModule(model, obj)(**obj.prepare({"input_ids": row, "seq_idx": seq_idx,
                                                                      "length": torch.tensor([11])}))
        alone_sum, alone_n = LossModule(model, obj)(**obj.prepare({"input_ids": doc,
                                                                    "seq_idx": torch.zeros_like(doc, dtype=torch.int32)}))
    assert int(padded_n) == int(alone_n) == 10
    torch.testing.assert_close(padded_sum, alone_sum, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the same row without its length scores the padding: a different loss
        unmasked_sum, unmasked_n = LossModule(model, obj)(**obj.prepare({"input_ids": row, "seq_idx": seq_idx}))
    assert int(unmasked_n) == 10 + 8 and not torch.allclose(unmasked_sum, alone_sum)  # pad → pad at 11..18
