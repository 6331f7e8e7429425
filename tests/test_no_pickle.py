"""No file we read runs code: training checkpoints are safetensors + JSON (any world size),
``pytorch_model.bin`` is parsed, never unpickled, and malicious pickles planted anywhere in a
run directory are refused or ignored without ever running. Also: exported EMA weights are the
EMA's, not the raw weights."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from biomamba.train.state_files import StateFileError, load_state_into, save_state
from biomamba.utils.torch_zip import UnsafeFileError, read_torch_state_dict
from test_train_support import demo_data, make_trainer, recipe


class _Plant:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"x": _Plant(marker)}))


def _plant_torch_file(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone.embedding.weight": torch.zeros(2, 2), "evil": _Plant(marker)}, path)


# ---- the state files ----------------------------------------------------------------------
def _nested() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(5, 3, generator=g), "bf": torch.randn(4, generator=g).to(torch.bfloat16),
                  "empty": torch.zeros(0, 3)},
        "optim": {"state": {"w": {"step": torch.tensor(7.0), "exp_avg": torch.randn(5, 3, generator=g)}},
                  "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "eps": float("inf"), "nan": float("nan"),
                                    "fused": None, "amsgrad": False, "params": ["w"], 3: "int key"}]},
        "ema": {"w": torch.randint(0, 9, (5, 3), generator=g), "flag": torch.tensor([True, False])},
    }


def _zeros_like_tree(obj):
    if isinstance(obj, torch.Tensor):
        return torch.zeros_like(obj)
    if isinstance(obj, dict):
        return {k: _zeros_like_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_zeros_like_tree(v) for v in obj)
    return obj


def _assert_same(a, b, where="root"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def test_state_files_round_trip(tmp_path):
    state = _nested()
    save_state(state, tmp_path, rank=0)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    target = _zeros_like_tree(state)
    loaded = load_state_into(target, tmp_path)
    _assert_same(loaded, state)
    assert loaded["model"]["w"] is target["model"]["w"]  # filled in place, as DCP did
    assert isinstance(loaded["optim"]["param_groups"][0]["betas"], tuple)


def test_state_files_name_what_does_not_match(tmp_path):
    save_state(_nested(), tmp_path, rank=0)
    target = _zeros_like_tree(_nested())
    target["model"]["extra"] = torch.zeros(2)
    with pytest.raises(StateFileError, match="lacks 1 tensors, e.g. model/extra"):
        load_state_into(target, tmp_path)
    target = _zeros_like_tree(_nested())
    target["model"]["w"] = torch.zeros(6, 3)
    with pytest.raises(StateFileError, match=r"model/w is stored as float32 \[5, 3\], this run has float32 \[6, 3\]"):
        load_state_into(target, tmp_path)


def test_state_files_join_shards_and_check_coverage(tmp_path):
    """Two ranks' row shards (as FSDP2 writes them) fill one full tensor; a lost shard is named."""
    full = torch.arange(28, dtype=torch.float32).reshape(7, 4)
    tree = {"model": {"w": full}}
    save_state(tree, tmp_path, rank=0)  # tree.json + rank 0's file (the whole tensor) ...
    for rank, (lo, hi) in enumerate([(0, 4), (4, 7)]):  # ... replaced by two row shards
        save_file({"model/w": full[lo:hi].contiguous()}, str(tmp_path / f"model-rank{rank:05d}.safetensors"),
                  metadata={"biomamba.offsets": json.dumps({"model/w": [lo, 0]})})
    target = {"model": {"w": torch.zeros(7, 4)}}
    load_state_into(target, tmp_path)
    assert torch.equal(target["model"]["w"], full)
    (tmp_path / "model-rank00001.safetensors").unlink()
    with pytest.raises(StateFileError, match="cover 16 of this rank's 28 elements"):
        load_state_into({"model": {"w": torch.zeros(7, 4)}}, tmp_path)


# ---- pytorch_model.bin without unpickling --------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_zip_reads_what_torch_load_reads(tmp_path, protocol):
    sd = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).state_dict()
    sd["tied"] = sd["0.weight"]
    sd["strided"] = torch.randn(5, 3).to(torch.bfloat16)[:, 1]
    sd["ints"], sd["flags"], sd["scalar"] = torch.arange(7), torch.tensor([True, False]), torch.tensor(2.5)
    torch.save(sd, tmp_path / "w.bin", pickle_protocol=protocol)
    ours = read_torch_state_dict(tmp_path / "w.bin")
    ref = torch.load(tmp_path / "w.bin", weights_only=False)  # our own file: the trusted reference
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].stride() == ref[k].stride() and torch.equal(ours[k], ref[k])
    assert ours["tied"].data_ptr() == ours["0.weight"].data_ptr()


def test_torch_zip_refuses_code_and_legacy_files(tmp_path):
    marker = tmp_path / "ran"
    _plant_torch_file(tmp_path / "evil.bin", marker)
    with pytest.raises(UnsafeFileError, match=r"evil.bin: names io.open.*refusing"):
        read_torch_state_dict(tmp_path / "evil.bin")
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="not a zip-format torch file"):
        read_torch_state_dict(tmp_path / "old.bin")
    assert not marker.exists()


# ---- a whole run directory with pickles planted everywhere ---------------------------------
def test_planted_pickles_never_run(tmp_path_factory, tmp_path):
    from biomamba.model.checkpoint import CheckpointError as ModelCheckpointError
    from biomamba.model.checkpoint import load_model
    from biomamba.train.checkpoint import CheckpointError

    data = demo_data(tmp_path_factory)
    marker = tmp_path / "code-ran"
    cfg = recipe(data, train={"max_steps": 4}, eval={"every": 0, "at_start": False},
                 checkpoint={"every": 2, "keep_last": 5, "export": ["final"]})
    out = tmp_path / "run"
    first = make_trainer(cfg, out)
    first.fit()
    step = out / "checkpoints" / "step_00000004"
    assert (step / "state" / "tree.json").is_file() and not list(step.rglob("*.pt"))
    # everywhere a run directory can hold a pickle, one that would create the marker
    _plant_pickle(step / "dcp" / ".metadata", marker)
    _plant_pickle(step / "state" / ".metadata", marker)
    _plant_pickle(step / "rng" / "rank00000.pt", marker)
    _plant_torch_file(step / "state" / "model.pt", marker)
    _plant_pickle(out / "checkpoints" / "optimizer.pkl", marker)

    again = make_trainer({**cfg, "resume": "auto", "train": {**cfg["train"], "max_steps": 6}}, out)
    summary = again.fit()
    assert summary["steps"] == 6 and summary["steps_this_session"] == 2 and not marker.exists()
    _plant_torch_file(out / "final" / "pytorch_model.bin", marker)
    load_model(out / "final")  # model.safetensors is read; the planted .bin beside it is not
    assert not marker.exists()

    # weights that exist only as a planted pytorch_model.bin: refused, named, never run
    only_bin = tmp_path / "only-bin"
    only_bin.mkdir()
    shutil.copy(out / "final" / "biomamba_config.json", only_bin)
    shutil.copy(out / "final" / "pytorch_model.bin", only_bin)
    with pytest.raises(ModelCheckpointError, match="pytorch_model.bin: names io.open"):
        load_model(only_bin)

    # a checkpoint in the old torch.distributed.checkpoint layout: refused with the reason
    old = tmp_path / "old" / "checkpoints" / "step_00000002"
    old.mkdir(parents=True)
    shutil.copy(step / "trainer_state.json", old)
    _plant_pickle(old / "dcp" / ".metadata", marker)
    with pytest.raises(CheckpointError, match="metadata is a pickle, which can run code"):
        make_trainer({**cfg, "resume": str(old)}, tmp_path / "old-resumed").fit()
    assert not marker.exists()


def check_exported_ema_equals_ema(data: Path, out: Path, device: str) -> None:
    """``final_ema`` holds the EMA tensors, ``final`` the raw weights, and they differ."""
    overrides = {"model": {"overrides": {}}} if device == "cuda" else {}
    cfg = recipe(data, **overrides, train={"max_steps": 3, "cuda_graph": False}, ema={"decay": 0.5},
                 eval={"every": 0, "at_start": False}, checkpoint={"every": 0, "export": []})
    trainer = make_trainer(cfg, out, device)
    trainer.ckpt.clear_temporaries()
    for _ in range(3):
        trainer.train_step()
    trainer.export("final", "raw")
    trainer.export("final_ema", "ema")
    raw = load_file(str(out / "final" / "model.safetensors"))
    ema = load_file(str(out / "final_ema" / "model.safetensors"))
    shadow = dict(zip(trainer.ema.names, trainer.ema.shadow))
    params = dict(trainer.model.named_parameters())
    differ = 0
    for name, value in shadow.items():
        key = name.removeprefix("model.")
        assert torch.equal(ema[key], value.detach().cpu()), key
        assert torch.equal(raw[key], params[key].detach().cpu()), key
        differ += not torch.equal(ema[key], raw[key])
    assert differ > len(shadow) // 2, "the EMA should differ from the raw weights after 3 steps at decay 0.5"


def test_exported_ema_equals_ema(tmp_path_factory, tmp_path):
    check_exported_ema_equals_ema(demo_data(tmp_path_factory), tmp_path / "run", "cpu")
