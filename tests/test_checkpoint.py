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
