"""LoRA (biomamba.train.lora): the adapted model starts as the base model, only the adapters
train, merging gives the same function, decoding refuses unmerged adapters, the trainer's
exports are merged plain checkpoints plus peft-layout adapters that peft itself loads onto the
Hugging Face export with the same logits, and a LoRA run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from biomamba.model import MambaLM, model_preset
from biomamba.train.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRALinear, apply_lora, load_adapter, merge_lora,
                                 merged_state)
from test_train_support import demo_data, make_trainer, recipe


def _model(seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=2, d_state=8, headdim=8)).eval()


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(seed))


def _randomise_adapters(model) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


def test_starts_as_the_base_model_and_trains_only_the_adapters():
    model, ids = _model(), _ids()
    before = model(ids).detach().clone()
    wrapped = apply_lora(model, ["in_proj", "out_proj"], rank=4, alpha=8)
    assert sorted(wrapped) == [f"backbone.layers.{i}.mixer.{p}" for i in range(2) for p in ("in_proj", "out_proj")]
    assert torch.equal(model(ids), before)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{x}" for m in wrapped for x in "AB"}
    model(ids).float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    with pytest.raises(ValueError, match="match no Linear"):
        apply_lora(_model(), ["q_proj"], rank=4, alpha=8)


def test_merge_gives_the_same_function_and_decoding_needs_it():
    from biomamba.generate import SamplingConfig, generate_ids

    model, ids = _model(), _ids()
    apply_lora(model, ["in_proj", "out_proj"], rank=4, alpha=8)
    _randomise_adapters(model)
    adapted = model(ids).detach()
    assert not torch.allclose(adapted, _model()(ids))  # the adapters change the function
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="merged LoRA adapters"):
        generate_ids(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=2), eos_id=None)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(ids), adapted, rtol=1e-5, atol=1e-5)
    # the state-dict route (what exports use) merges to the same weights
    plain = merged_state(state, scaling=8 / 4)
    assert set(plain) == set(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(plain[k], v, rtol=1e-6, atol=1e-6)
    generate_ids(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=2), eos_id=None)


def _losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_trainer_with_lora_exports_merged_weights_and_peft_adapters(tmp_path_factory, tmp_path):
    from biomamba.model.checkpoint import load_model

    data = demo_data(tmp_path_factory)
    lora = {"enabled": True, "rank": 4, "alpha": 8.0}
    cfg = recipe(data, train={"max_steps": 4}, optim={"lr": 1e-2, "llrd": 1.0}, lora=lora,
                 eval={"every": 0, "at_start": False}, checkpoint={"every": 2, "keep_last": 5, "export": ["final"]})
    out = tmp_path / "run"
    trainer = make_trainer(cfg, out)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    summary = trainer.fit()
    for n, p in trainer.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # the base weights never move
    assert summary["lora"]["rank"] == 4
    exported = load_file(str(out / "final" / "model.safetensors"))
    assert not any("lora" in k for k in exported)
    ids = _ids()
    with torch.no_grad():
        trained = trainer.model.eval()(ids)
        from_export = load_model(out / "final", backend="torch").eval()(ids)
    torch.testing.assert_close(from_export[..., :trained.shape[-1]], trained, rtol=1e-5, atol=1e-5)

    adapter = out / "final_adapter"
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    # our loader: base + adapter = the export
    plain_cfg = {**cfg, "lora": {"enabled": False}}
    base = make_trainer(plain_cfg, tmp_path / "base-again").model  # the same seed: the same base weights
    load_adapter(base, adapter)
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(ids), trained, rtol=1e-5, atol=1e-5)

    assert set(load_file(str(adapter / ADAPTER_WEIGHTS))) == {
        f"base_model.model.backbone.layers.{i}.mixer.{p}.lora_{x}.weight"
        for i in range(2) for p in ("in_proj", "out_proj") for x in "AB"}


def test_peft_loads_our_adapter_onto_the_hugging_face_export(tmp_path_factory, tmp_path):
    """peft itself, on transformers' Mamba2: our in_proj adapter gives our logits. (peft refuses
    out_proj on Mamba models, whose fused kernels read that weight directly; ours trains it.)"""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from biomamba.model.checkpoint import export_hf

    data = demo_data(tmp_path_factory)
    cfg = recipe(data, train={"max_steps": 3}, optim={"lr": 1e-2, "llrd": 1.0},
                 lora={"enabled": True, "rank": 4, "alpha": 8.0, "targets": ["in_proj"]},
                 eval={"every": 0, "at_start": False}, checkpoint={"every": 0, "export": ["final"]})
    trainer = make_trainer(cfg, tmp_path / "run")
    trainer.fit()
    ids = _ids()
    with torch.no_grad():
        ours = trainer.model.eval()(ids)
    plain_base = make_trainer({**cfg, "lora": {"enabled": False}}, tmp_path / "base").model
    export_hf(plain_base, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(hf, str(tmp_path / "run" / "final_adapter")).eval()
    with torch.no_grad():
        theirs = adapted(input_ids=ids).logits
    torch.testing.assert_close(theirs[..., :ours.shape[-1]], ours, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        before = plain_base.eval()(ids)
    assert not torch.allclose(ours, before, atol=1e-4)  # the adapter changed the function (peft wraps hf in place)


def test_lora_run_resumes_exactly(tmp_path_factory, tmp_path):
    """A LoRA run stopped after step 2 (its checkpoint holds the adapters, their optimizer state
    and the frozen weights) continues with the uninterrupted run's losses."""
    from biomamba.train.checkpoint import seed_everything

    data = demo_data(tmp_path_factory)
    cfg = recipe(data, train={"max_steps": 4}, optim={"lr": 1e-2}, lora={"enabled": True, "rank": 4},
                 eval={"every": 0, "at_start": False}, checkpoint={"every": 2, "keep_last": 5, "export": []})
    whole = tmp_path / "whole"
    make_trainer(cfg, whole).fit()
    half = tmp_path / "half"
    first = make_trainer(cfg, half)
    first.ckpt.clear_temporaries()
    seed_everything(42)
    for _ in range(2):
        first.train_step()
    first.save()
    make_trainer({**cfg, "resume": "auto"}, half).fit()
    a, b = _losses(whole), _losses(half)
    assert sorted(b) == [3, 4] and all(a[s] == b[s] for s in b), (a, b)
