"""Other causal LMs (the papers' Tables 3 and 7 compare against them) load through
``model.external.load_causal_lm`` from safetensors or from a ``pytorch_model.bin`` that is
parsed, never unpickled: tiny random GPT-2, GPT-NeoX, Llama and BioGPT configs give the same
logits as the model that wrote them, and a planted pickle is refused without running."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from biomamba.model.checkpoint import CheckpointError  # noqa: E402
from biomamba.model.external import load_causal_lm  # noqa: E402

WORDS = "the a patient was given aspirin for chest pain and fever <unk> <pad> <eos>".split()


def _tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                         eos_token="<eos>").save_pretrained(directory)


def _configs() -> dict[str, object]:
    small = dict(vocab_size=len(WORDS))
    return {
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **small),
        "gpt_neox": transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, max_position_embeddings=64, **small),
        "llama": transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                          **small),
        "biogpt": transformers.BioGptConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=64, **small),
    }


@pytest.mark.parametrize("family", sorted(_configs()))
@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_loads_like_the_model_that_wrote_it(tmp_path, family, layout):
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(_configs()[family]).eval()
    directory = tmp_path / family
    if layout == "safetensors":
        ref.save_pretrained(directory)
    else:  # the older layout many public checkpoints still have: config.json + pytorch_model.bin
        ref.config.save_pretrained(directory)
        torch.save(ref.state_dict(), directory / "pytorch_model.bin")
    _tokenizer(directory)
    model, tok, _ = load_causal_lm(str(directory), "cpu", torch.float32)
    ids = torch.tensor([tok("the patient was given aspirin for fever")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    bf16, _, _ = load_causal_lm(str(directory), "cpu", torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


class _Plant:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_bin_is_refused(tmp_path):
    directory = tmp_path / "evil"
    _configs()["gpt2"].save_pretrained(directory)
    _tokenizer(directory)
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": _Plant(marker)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: names io.open"):
        load_causal_lm(str(directory))
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Plant(marker)))  # a bare pickle, not a zip
    with pytest.raises(CheckpointError, match="not a zip-format torch file"):
        load_causal_lm(str(directory))
    assert not marker.exists()


def test_gpt2_runs_in_eval_ppl_and_generates_within_its_positions(tmp_path, capsys):
    """A GPT-2-style config (no hidden_size) goes to the transformers loader instead of failing
    in our config reader; perplexity windows and generation prompts stay within its 64 positions
    (a longer input would index past its position table)."""
    import json

    from biomamba.cli import main as cli
    from biomamba.eval.lm import from_transformers

    torch.manual_seed(0)
    directory = tmp_path / "gpt2"
    transformers.AutoModelForCausalLM.from_config(_configs()["gpt2"]).save_pretrained(directory)
    _tokenizer(directory)
    text = " ".join(["the patient was given aspirin for chest pain and fever"] * 40)  # 400 words > 64
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": text}) + "\n")
    out = tmp_path / "ppl"
    code = cli(["eval", "ppl", "--model", str(directory), "--out", str(out), "--device=cpu", "--dtype=float32",
                f"--sources=[{{name: notes, paths: [{tmp_path / 'docs.jsonl'}], format: jsonl}}]"])
    assert code == 0, capsys.readouterr().err
    per = json.loads((out / "results.json").read_text())["per_source"]["notes"]
    assert per["tokens"] == 400 and per["perplexity"] > 1.0  # every token scored once, window cut to 64
    model, tok, _ = load_causal_lm(str(directory))
    lm = from_transformers(model, tok)
    assert lm.max_length == 64
    generated = lm.generate([text], 8, [])
    assert isinstance(generated[0], str)
