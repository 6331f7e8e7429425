"""`biomamba eval ppl` over raw text: ours and a transformers model, each with its own tokenizer, one table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from biomamba.cli import main as cli
from biomamba.data.tokenizer import load_tokenizer
from biomamba.model import MambaLM, model_preset, save_model
from helpers import randomize_weights


def test_contextual_comparison_on_raw_text(tmp_path, neox_tokenizer_path, shared_data, capsys):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(neox_tokenizer_path)
    save_model(randomize_weights(MambaLM(model_preset("tiny")), seed=4), tmp_path / "ours", tokenizer=tok)
    # a tiny GPT-NeoX with the same tokenizer files, saved the transformers way (its own tokenizer)
    cfg = transformers.GPTNeoXConfig(vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(neox_tokenizer_path), eos_token="<|endoftext|>",
                                         pad_token="<|padding|>").save_pretrained(tmp_path / "neox")
    config = tmp_path / "ppl.yaml"
    config.write_text(json.dumps({
        "models": [str(tmp_path / "ours"), str(tmp_path / "neox")],
        "sources": [{"name": "c4", "paths": [str(shared_data / "c4" / "c4-en-sample-500.jsonl")], "format": "jsonl",
                     "max_documents": 3}],
        "window": 128, "stride": 64, "batch_size": 4}))
    assert cli(["eval", "ppl", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "ppl/token" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["mode"] == "raw_text" and len(results["per_model"]) == 2
    ours, theirs = (results["per_model"][str(tmp_path / m)]["c4"] for m in ("ours", "neox"))
    assert ours["bytes"] == theirs["bytes"] > 0  # the same text scored by both
    for r in (ours, theirs):
        assert r["tokens"] > 0 and r["perplexity"] == pytest.approx(math.exp(r["nll_sum"] / r["tokens"]))
        assert r["bits_per_byte"] == pytest.approx(r["nll_sum"] / math.log(2) / r["bytes"])


def test_eval_verbs_refuse_bad_requests(tmp_path, capsys):
    assert cli(["eval", "nonsense"]) == 1
    assert cli(["eval", "ppl", "--out", str(tmp_path / "x")]) == 1
    assert "needs --model" in capsys.readouterr().err
    assert cli(["eval", "yesno", "--task", "clinical_discharge", "--model", "m", "--out", str(tmp_path / "y")]) == 1
    assert "runs the tasks" in capsys.readouterr().err
