"""Checkpoint layouts, bit-exact round trips, sharding, hub ids offline, `biomamba convert`."""

from __future__ import annotations

import json

import pytest
import torch

from biomamba.cli import main as cli
from biomamba.model import MambaLM, export_hf, export_state_spaces, load_model, model_preset, save_model
from biomamba.model.checkpoint import CheckpointError, read_checkpoint
from helpers import randomize_weights


def _assert_same_weights(a: MambaLM, b: MambaLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("preset", ["tiny", "tiny-mamba1"])
def test_round_trip_state_spaces_native_hf_native_is_bit_exact(tmp_path, preset):
    original = randomize_weights(MambaLM(model_preset(preset)))
    export_state_spaces(original, tmp_path / "ss")
    raw = json.loads((tmp_path / "ss" / "config.json").read_text())
    assert raw["ssm_cfg"].get("layer") == ("Mamba2" if preset == "tiny" else None)
    from_ss = load_model(tmp_path / "ss")
    save_model(from_ss, tmp_path / "native")
    export_hf(load_model(tmp_path / "native"), tmp_path / "hf")
    back = load_model(tmp_path / "hf")
    for model in (from_ss, back):
        _assert_same_weights(original, model)
        assert model.config == original.config
        assert model.lm_head.weight is model.backbone.embedding.weight  # tie survives
    assert read_checkpoint(tmp_path / "hf")[2] == "hf"


def test_native_layout_is_safetensors_not_pickle(tmp_path):
    save_model(MambaLM(model_preset("tiny")), tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["biomamba_config.json", "model.safetensors"]


def test_sharded_hf_checkpoint_loads(tmp_path):
    model = randomize_weights(MambaLM(model_preset("tiny")))
    export_hf(model, tmp_path / "hf", max_shard_bytes=2**20)
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    _assert_same_weights(model, load_model(tmp_path / "hf"))


def test_reads_a_transformers_written_mamba2_checkpoint(tmp_path):
    """A checkpoint saved by transformers itself (no biomamba key; untied head; its own config names)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mamba2Config(hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8,
                                    n_groups=2, vocab_size=512, chunk_size=16, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    assert ours.config.ngroups == 2 and not ours.config.tie_embeddings and ours.config.padded_vocab == 512
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-4)


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(CheckpointError, match=r"state-spaces/mamba2-130m.*pass its path"):
        load_model("state-spaces/mamba2-130m")


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8,
                                                      "num_hidden_layers": 1, "vocab_size": 8}))
    with pytest.raises(CheckpointError, match="not a Mamba model"):
        load_model(tmp_path)
    model = MambaLM(model_preset("tiny"))
    export_state_spaces(model, tmp_path / "ss")
    state = torch.load(tmp_path / "ss" / "pytorch_model.bin", weights_only=True)
    del state["backbone.norm_f.weight"]
    torch.save(state, tmp_path / "ss" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing.*norm_f"):
        load_model(tmp_path / "ss")


def test_convert_cli_all_formats(tmp_path, capsys):
    model = randomize_weights(MambaLM(model_preset("tiny")))
    export_state_spaces(model, tmp_path / "ss")
    assert cli(["convert", str(tmp_path / "ss"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert cli(["convert", str(tmp_path / "hf"), str(tmp_path / "native"), "--format", "native"]) == 0
    assert cli(["convert", str(tmp_path / "native"), str(tmp_path / "ss2"), "--format", "state-spaces"]) == 0
    assert "→" in capsys.readouterr().out
    _assert_same_weights(model, load_model(tmp_path / "ss2"))
    assert cli(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x"), "--format", "hf"]) == 1
    assert "not a checkpoint directory" in capsys.readouterr().err


# ---- the Hugging Face export's details ------------------------------------------------------
def _strict_json(path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{path.name} holds a bare {constant}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _wordlevel_tokenizer():
    """A tokenizer whose special tokens sit at other ids than GPT-NeoX's 0 / 0 / 1."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    from biomamba.data.tokenizer import Tokenizer

    vocab = {"a": 0, "bb": 1, "c": 2, "</s>": 3, "<pad>": 4, "<s>": 5, "<unk>": 6}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["</s>", "<pad>", "<s>", "<unk>"])
    return Tokenizer(backend, "wordlevel-test")


def test_hf_export_special_tokens_come_from_the_tokenizer_and_padding_works(tmp_path):
    transformers = pytest.importorskip("transformers")
    from biomamba.data.tokenizer import train_tokenizer

    model = MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=1))
    export_hf(model, tmp_path / "word", tokenizer=_wordlevel_tokenizer())
    config = _strict_json(tmp_path / "word" / "config.json")
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (5, 3, 4)
    tok_config = _strict_json(tmp_path / "word" / "tokenizer_config.json")
    assert tok_config["pad_token"] == "<pad>" and tok_config["eos_token"] == "</s>" and tok_config["bos_token"] == "<s>"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "word")
    assert (hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.bos_token_id) == (4, 3, 5)
    batch = hf_tok(["a", "a bb c"], padding=True)
    assert batch["input_ids"][0] == [0, 4, 4] and batch["attention_mask"][0] == [1, 0, 0]

    # a GPT-NeoX-style byte-level BPE: <|endoftext|> is BOS and EOS, <|padding|> pads
    bpe = train_tokenizer(["a bb c dd " * 20, "ee ff a"], vocab_size=300)
    export_hf(model, tmp_path / "bpe", tokenizer=bpe)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "bpe")
    batch = hf_tok(["a", "bb"], padding=True)
    assert hf_tok.pad_token == "<|padding|>" and len(set(map(len, batch["input_ids"]))) == 1
    assert hf_tok.pad_token_id == bpe.pad_id and hf_tok.eos_token_id == bpe.eos_id
    # no tokenizer: the ids of the GPT-NeoX tokenizer that such a checkpoint is loaded with
    export_hf(model, tmp_path / "bare")
    bare = _strict_json(tmp_path / "bare" / "config.json")
    assert (bare["bos_token_id"], bare["eos_token_id"], bare["pad_token_id"]) == (0, 0, 1)


def test_hf_config_is_strict_json_with_dtype_and_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    import math

    model = MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=1, dt_limit_min=0.001))
    export_hf(model, tmp_path / "fp32")
    config = _strict_json(tmp_path / "fp32" / "config.json")  # (0.001, inf): infinity spelled as transformers does
    assert config["torch_dtype"] == "float32" and config["time_step_limit"][1] == {"__float__": "Infinity"}
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "fp32")
    assert tuple(loaded.time_step_limit) == (0.001, math.inf)
    assert load_model(tmp_path / "fp32").config.dt_limit == (0.001, math.inf)
    export_hf(MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=1)).to(torch.bfloat16),
              tmp_path / "bf16")
    config = _strict_json(tmp_path / "bf16" / "config.json")  # the default limit: left to transformers' default
    assert config["torch_dtype"] == "bfloat16" and "time_step_limit" not in config
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16 and tuple(hf.config.time_step_limit) == (0.0, math.inf)


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                      (0o002, 0o775, 0o664)])
def test_exports_are_as_readable_as_the_umask_says(tmp_path, umask, dir_mode, file_mode):
    """mkdtemp / mkstemp create 0700 / 0600: the finished directory and files get the umask's modes."""
    import os
    import stat

    from biomamba.data.tokenizer import train_tokenizer
    from biomamba.utils.io import current_umask

    tok = train_tokenizer(["a bb c dd " * 20], vocab_size=280)
    model = MambaLM(model_preset("tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1))
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        export_hf(model, tmp_path / "hf", tokenizer=tok)
        save_model(model, tmp_path / "native", tokenizer=tok)
        export_hf(model, tmp_path / "hf", tokenizer=tok)  # replacing an existing export too
    finally:
        os.umask(old)
    for directory in (tmp_path / "hf", tmp_path / "native"):
        assert stat.S_IMODE(directory.stat().st_mode) == dir_mode, directory
        files = list(directory.iterdir())
        assert {"tokenizer.json"} <= {f.name for f in files}
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == file_mode, f
