"""Rendering with the loss mask: tokenise prompt and prompt + response, mask the prefix, cut only
the context when too long; the masked loss equals cross-entropy over the response tokens."""

from __future__ import annotations

import logging

import pytest
import torch

from biomamba.tasks import Prompt, Template, collate, encode_example, get_task
from biomamba.tasks.prompts import IGNORE_INDEX

QA = Template("Context: {context}\nQuestion: {question}\nAnswer:", truncate="context")


@pytest.fixture(scope="module")
def tok(neox_tokenizer_path):
    from biomamba.data.tokenizer import load_tokenizer

    return load_tokenizer(neox_tokenizer_path)


def _prompt(context: str, template: Template = QA) -> Prompt:
    return Prompt(template, {"context": context, "question": "Does aspirin reduce fever?"})


def test_labels_mask_the_prompt_exactly(tok):
    prompt = _prompt("Aspirin is an antipyretic drug.")
    enc = encode_example(prompt, " yes", tok)
    full = tok.encode(prompt.render() + " yes") + [tok.eos_id]
    n_prompt = len(tok.encode(prompt.render()))
    assert enc.input_ids == full and enc.prefix_ok and not enc.overlong
    assert enc.labels == [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    assert enc.prompt_tokens == n_prompt and enc.response_tokens == 2  # " yes" + EOS
    assert tok.decode(enc.input_ids[n_prompt:]) == " yes"
    no_eos = encode_example(prompt, " yes", tok, add_eos=False)
    assert no_eos.input_ids == full[:-1]


def test_not_a_prefix_warns_and_scores_the_boundary(tok, caplog):
    # a prompt ending in a space: " yes" is one token, so the prompt's "Answer: " is not a prefix
    caplog.set_level(logging.WARNING)
    enc = encode_example("Answer: ", "yes", tok)
    assert not enc.prefix_ok
    assert "not a prefix" in caplog.text
    n_common = len(tok.encode("Answer:"))
    assert enc.labels[:n_common] == [IGNORE_INDEX] * n_common
    assert enc.labels[n_common] == enc.input_ids[n_common]  # the merged token is scored


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_cuts_only_the_context(tok, side):
    template = Template(QA.text, truncate="context", truncate_side=side)
    context = " ".join(f"sentence{i} about fever and aspirin." for i in range(200))
    prompt = _prompt(context, template)
    enc = encode_example(prompt, " yes", tok, max_len=64)
    assert len(enc) <= 64 and not enc.overlong and enc.truncated_tokens > 0
    text = tok.decode(enc.input_ids)
    assert text.endswith("\nQuestion: Does aspirin reduce fever?\nAnswer: yes")  # question, cue, answer whole
    kept = text[len("Context: "):text.index("\nQuestion:")]
    assert (context.startswith(kept.strip()) if side == "right" else context.endswith(kept.strip()))
    assert enc.labels[-2:] == enc.input_ids[-2:] and enc.response_tokens == 2


def test_overlong_without_a_context_to_cut(tok):
    long_q = Prompt(QA, {"context": "short", "question": "why " * 100})
    enc = encode_example(long_q, " yes", tok, max_len=32)
    assert enc.overlong and tok.decode(enc.input_ids).endswith("Answer: yes")  # never cut the answer
    plain = encode_example("word " * 100, " yes", tok, max_len=32)
    assert plain.overlong and plain.truncated_tokens == 0


def test_sft_examples_count_overlong_and_truncated(tok, shared_data):
    task = get_task("pubmedqa")
    stats: dict[str, int] = {}
    encoded = task.sft_examples("validation", tok, max_len=256, data_root=shared_data, stats=stats)
    assert stats["encoded"] == len(encoded) == stats["examples"] - stats.get("overlong_dropped", 0)
    assert stats["context_truncated"] > 0 and all(len(e) <= 256 for e in encoded)
    assert all(tok.decode(e.input_ids).rstrip().endswith(("Answer: yes", "Answer: no")) for e in encoded)


def _tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=2048)
    return GPTNeoXForCausalLM(cfg).eval()


def test_masked_loss_equals_response_cross_entropy(tok):
    """HF's convention (labels aligned with input_ids, shifted inside the model) on our labels
    gives exactly the cross-entropy over the response tokens; a padded batch gives the
    token-weighted loss of its rows (padding never scored)."""
    model = _tiny_neox()
    examples = [encode_example(_prompt(c), r, tok) for c, r in
                [("Fever is common.", " yes"), ("A much longer context about aspirin, fever and pain.", " no"),
                 ("Short.", " it depends on the dose")]]
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.input_ids])
            logits = model(ids).logits[0].double()
            n = e.prompt_tokens
            # direct: the tokens after the prompt, each predicted from everything before it
            direct = torch.nn.functional.cross_entropy(logits[n - 1:-1], ids[0, n:], reduction="sum")
            hf = model(ids, labels=torch.tensor([e.labels])).loss.double() * e.response_tokens
            assert hf.item() == pytest.approx(direct.item(), rel=1e-5)
            total += direct.item()
            count += e.response_tokens
        batch = collate(examples, pad_id=tok.pad_id)
        assert (batch["labels"] == IGNORE_INDEX).sum() > sum(e.prompt_tokens for e in examples)  # pads masked
        logits = model(batch["input_ids"]).logits.double()
        targets = batch["labels"][:, 1:]
        batch_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                                       reduction="sum")
    assert batch_loss.item() == pytest.approx(total, rel=1e-5)
    assert int((targets != IGNORE_INDEX).sum()) == count


def test_packed_rows_score_like_separate_examples(tok):
    """Packing SFT examples with seq_idx: the trainer's next-token targets (no target crosses an
    example boundary) over a packed row give the same loss as each example alone."""
    from biomamba.model import MambaLM
    from biomamba.model.config import model_preset
    from biomamba.tasks import pack
    from biomamba.train.objective import next_token_targets

    torch.manual_seed(0)
    model = MambaLM(model_preset("tiny")).eval()
    examples = [encode_example(_prompt(c), r, tok) for c, r in
                [("Fever is common.", " yes"), ("Aspirin, fever and pain.", " no"), ("Short.", " it depends")]]
    seq_len = len(examples[0]) + len(examples[1]) + 3  # two fit in a row, the third starts the next
    rows = pack(examples, seq_len, pad_id=tok.pad_id)
    assert len(rows) == 2 and all(len(r["input_ids"]) == seq_len for r in rows)
    assert rows[0]["seq_idx"].tolist() == [0] * len(examples[0]) + [1] * len(examples[1]) + [2] * 3

    def loss(ids, labels, seq_idx=None):
        targets = next_token_targets(labels, seq_idx)
        with torch.no_grad():
            logits = model(ids, seq_idx=seq_idx)[..., :model.config.vocab_size].double()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                                 reduction="sum").item(), int((targets != IGNORE_INDEX).sum())

    packed = [loss(torch.from_numpy(r["input_ids"])[None], torch.from_numpy(r["labels"])[None],
                   torch.from_numpy(r["seq_idx"])[None]) for r in rows]
    alone = [loss(torch.tensor([e.input_ids]), torch.tensor([e.labels])) for e in examples]
    assert sum(c for _, c in packed) == sum(c for _, c in alone) == sum(e.response_tokens for e in examples)
    assert sum(s for s, _ in packed) == pytest.approx(sum(s for s, _ in alone), rel=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        pack(examples, 4, pad_id=tok.pad_id)
    assert collate(rows, pad_id=tok.pad_id)["labels"].shape == (2, seq_len)  # rows collate too
