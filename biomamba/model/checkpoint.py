"""Checkpoints both ways: state-spaces ⇄ Hugging Face ⇄ native (safetensors + JSON, never pickle).

Layouts recognised by ``load_model``:
* native:       ``biomamba_config.json`` + ``model.safetensors``
* Hugging Face: ``config.json`` with ``model_type`` "mamba2" / "mamba" + ``model.safetensors``
                (or sharded with ``model.safetensors.index.json``, or ``pytorch_model.bin``)
* state-spaces: ``config.json`` with ``d_model``/``n_layer``/``ssm_cfg`` + ``pytorch_model.bin``
* a hub id such as ``state-spaces/mamba2-130m``: downloaded when online.

Parameter names are the state-spaces ones in every layout except Hugging Face, which
spells the embedding ``backbone.embeddings``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from biomamba.config import from_dict, to_dict
from biomamba.model.config import ModelConfig
from biomamba.model.lm import MambaLM
from biomamba.utils.io import atomic_dir
from biomamba.utils.torch_zip import UnsafeFileError, read_torch_state_dict

NATIVE_CONFIG = "biomamba_config.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


# ---- name mapping ---------------------------------------------------------------------------
def _hf_to_native(name: str) -> str:
    return name.replace("backbone.embeddings.", "backbone.embedding.", 1)


def _native_to_hf(name: str) -> str:
    return name.replace("backbone.embedding.", "backbone.embeddings.", 1)


# ---- config mapping -------------------------------------------------------------------------
def config_from_state_spaces(raw: dict[str, Any], source: str) -> ModelConfig:
    if not raw.get("rms_norm", True):
        raise CheckpointError(f"{source}: LayerNorm checkpoints (rms_norm: false) are not supported")
    if raw.get("d_intermediate", 0):
        raise CheckpointError(f"{source}: checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if raw.get("attn_layer_idx"):
        raise CheckpointError(f"{source}: hybrid checkpoints with attention layers are not supported")
    ssm = dict(raw.get("ssm_cfg") or {})
    arch = "mamba2" if ssm.pop("layer", "Mamba1") == "Mamba2" else "mamba1"
    fields: dict[str, Any] = {
        "arch": arch, "d_model": raw["d_model"], "n_layer": raw["n_layer"], "vocab_size": raw["vocab_size"],
        "pad_vocab_size_multiple": raw.get("pad_vocab_size_multiple", 8),
        "residual_in_fp32": raw.get("residual_in_fp32", True), "tie_embeddings": raw.get("tie_embeddings", True),
        "d_state": 128 if arch == "mamba2" else 16,
    }
    renames = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "headdim": "headdim",
               "ngroups": "ngroups", "chunk_size": "chunk_size", "dt_rank": "dt_rank", "conv_bias": "conv_bias",
               "bias": "proj_bias", "dt_min": "dt_min", "dt_max": "dt_max", "dt_init_floor": "dt_init_floor"}
    for key, value in ssm.items():
        if key == "dt_limit":
            fields["dt_limit_min"] = float(value[0])
            fields["dt_limit_max"] = None if math.isinf(value[1]) else float(value[1])
        elif key == "dt_rank" and value == "auto":
            continue
        elif key in renames:
            fields[renames[key]] = value
        elif key in ("norm_before_gate",) and value:
            raise CheckpointError(f"{source}: norm_before_gate=true is not supported")
        # other keys (d_ssm, rmsnorm, use_mem_eff_path, dt_scale, …) are runtime or init-only choices
    return ModelConfig(**fields)


def config_to_state_spaces(cfg: ModelConfig) -> dict[str, Any]:
    ssm: dict[str, Any] = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand}
    if cfg.arch == "mamba2":
        ssm = {"layer": "Mamba2", **ssm, "headdim": cfg.headdim, "ngroups": cfg.ngroups,
               "chunk_size": cfg.chunk_size}
    elif cfg.dt_rank is not None:  # upstream default "auto" = ceil(d_model / 16)
        ssm["dt_rank"] = cfg.dt_rank
    return {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
            "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
            "residual_in_fp32": cfg.residual_in_fp32, "fused_add_norm": True,
            "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple, "tie_embeddings": cfg.tie_embeddings}


def config_from_hf(raw: dict[str, Any], source: str) -> ModelConfig:
    if "biomamba" in raw:  # our own export: the exact config travels along
        return from_dict(ModelConfig, raw["biomamba"])
    model_type = raw.get("model_type")
    if model_type not in ("mamba", "mamba2"):  # GPT-2, Llama, ...: not ours (eval loads them via model.external)
        raise CheckpointError(f"{source}: model_type {model_type!r} is not a Mamba model")
    common = {"d_model": raw["hidden_size"], "n_layer": raw["num_hidden_layers"], "vocab_size": raw["vocab_size"],
              "pad_vocab_size_multiple": 1, "d_state": raw.get("state_size", 16), "d_conv": raw.get("conv_kernel", 4),
              "expand": raw.get("expand", 2), "norm_eps": raw.get("layer_norm_epsilon", 1e-5),
              "residual_in_fp32": raw.get("residual_in_fp32", True),
              "tie_embeddings": raw.get("tie_word_embeddings", model_type == "mamba"),
              "conv_bias": raw.get("use_conv_bias", True), "proj_bias": raw.get("use_bias", False)}
    if model_type == "mamba2":
        limit = raw.get("time_step_limit", [0.0, math.inf])
        if isinstance(limit[1], dict):  # transformers ≥ 5 writes {"__float__": "Infinity"}
            limit = [limit[0], float(limit[1]["__float__"])]
        cfg = ModelConfig(arch="mamba2", headdim=raw.get("head_dim", 64), ngroups=raw.get("n_groups", 8),
                          chunk_size=raw.get("chunk_size", 256), dt_limit_min=float(limit[0]),
                          dt_limit_max=None if math.isinf(float(limit[1])) else float(limit[1]), **common)
        if raw.get("num_heads") not in (None, cfg.nheads):
            raise CheckpointError(f"{source}: num_heads {raw['num_heads']} ≠ d_inner / head_dim = {cfg.nheads}")
        return cfg
    if model_type == "mamba":
        rank = raw.get("time_step_rank", "auto")
        return ModelConfig(arch="mamba1", dt_rank=None if rank == "auto" else int(rank), **common)
    raise CheckpointError(f"{source}: model_type {model_type!r} is not a Mamba model (expected mamba2 or mamba)")


# the GPT-NeoX tokenizer's ids (<|endoftext|> = 0 as BOS and EOS, <|padding|> = 1): what a
# checkpoint without a tokenizer.json is loaded with (load_model_and_tokenizer's default)
DEFAULT_SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}


def _json_float(value: float) -> float | dict[str, str]:
    """A float as strict JSON: infinities in transformers' own spelling (≥ 5), not a bare ``Infinity``."""
    if math.isinf(value):
        return {"__float__": "Infinity" if value > 0 else "-Infinity"}
    return value


def config_to_hf(cfg: ModelConfig, tokenizer: Any = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """transformers' ``config.json`` for ``cfg``; the special token ids are ``tokenizer``'s (the
    GPT-NeoX ones without it), ``torch_dtype`` the dtype the weights are saved in."""
    special = (DEFAULT_SPECIAL_IDS if tokenizer is None else
               {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id})
    common = {"vocab_size": cfg.padded_vocab, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
              "state_size": cfg.d_state, "expand": cfg.expand, "conv_kernel": cfg.d_conv,
              "layer_norm_epsilon": cfg.norm_eps, "residual_in_fp32": cfg.residual_in_fp32,
              "use_bias": cfg.proj_bias, "use_conv_bias": cfg.conv_bias, "tie_word_embeddings": cfg.tie_embeddings,
              "time_step_min": cfg.dt_min, "time_step_max": cfg.dt_max, "time_step_floor": cfg.dt_init_floor,
              **special, "hidden_act": "silu", "biomamba": to_dict(cfg)}
    if dtype is not None:  # transformers < 4.56 reads torch_dtype, later ones dtype (and torch_dtype)
        common["torch_dtype"] = common["dtype"] = str(dtype).removeprefix("torch.")
    if cfg.arch == "mamba2":
        out = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", **common,
               "num_heads": cfg.nheads, "head_dim": cfg.headdim, "n_groups": cfg.ngroups, "chunk_size": cfg.chunk_size}
        if cfg.dt_limit != (0.0, math.inf):  # else transformers' own default, which every version reads
            out["time_step_limit"] = [_json_float(v) for v in cfg.dt_limit]
        return out
    return {"architectures": ["MambaForCausalLM"], "model_type": "mamba", **common,
            "time_step_rank": cfg.resolved_dt_rank}


# ---- reading --------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc


def _read_sharded(index: Path, read) -> dict[str, torch.Tensor]:
    weight_map = _read_json(index).get("weight_map", {})
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(read(index.parent / shard))
    missing = set(weight_map) - set(tensors)
    if missing:
        raise CheckpointError(f"{index}: tensors listed but not found in shards: {sorted(missing)[:5]}")
    return tensors


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:  # parsed, never unpickled: a downloaded file cannot run code
        return read_torch_state_dict(path)
    except UnsafeFileError as exc:
        raise CheckpointError(str(exc)) from exc


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint directory: safetensors (single or sharded) first, else
    ``pytorch_model.bin`` (single or sharded), parsed without unpickling."""
    for name, read in (("model.safetensors", lambda p: load_file(str(p))), ("pytorch_model.bin", _read_torch_file)):
        if (directory / name).is_file():
            return read(directory / name)
        if (directory / f"{name}.index.json").is_file():
            return _read_sharded(directory / f"{name}.index.json", read)
    raise CheckpointError(f"{directory}: no model.safetensors, pytorch_model.bin or a sharded index of either")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin"]


def resolve_checkpoint_dir(name_or_path: str | Path, patterns: list[str] | None = None) -> Path:
    """A local directory as is; a hub id downloaded to the Hugging Face cache (clear error offline)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or not _looks_like_hub_id(name):
        raise CheckpointError(f"{name}: not a checkpoint directory (and not a hub id like state-spaces/mamba2-130m)")
    try:
        from huggingface_hub import snapshot_download

        from biomamba.utils.net import hub_endpoint, unreachable_reason

        patterns = patterns or WEIGHT_PATTERNS
        try:  # a complete cached copy needs no network
            return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: download below
            pass
        why = unreachable_reason()
        if why is not None:
            raise ConnectionError(why)
        local = snapshot_download(name, allow_patterns=patterns, endpoint=hub_endpoint())
    except Exception as exc:  # offline, gated, missing package: all end the same way for the user
        raise CheckpointError(
            f"could not download {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Offline? Download it where you have network (`huggingface-cli download {name} --local-dir DIR`), "
            f"copy DIR here and pass its path instead of the hub id."
        ) from exc
    return Path(local)


def read_checkpoint_config(name_or_path: str | Path) -> tuple[ModelConfig, str, Path]:
    """(config, layout, directory) of any supported checkpoint: config files only, no weights."""
    directory = resolve_checkpoint_dir(name_or_path)
    if (directory / NATIVE_CONFIG).is_file():
        raw = _read_json(directory / NATIVE_CONFIG)
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{directory}: written by a newer biomamba (format {raw['format_version']})")
        return from_dict(ModelConfig, raw["model"]), "native", directory
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no {NATIVE_CONFIG} or config.json: not a model checkpoint")
    raw = _read_json(directory / "config.json")
    if "model_type" in raw:
        return config_from_hf(raw, str(directory)), "hf", directory
    if "d_model" in raw:
        return config_from_state_spaces(raw, str(directory)), "state-spaces", directory
    raise CheckpointError(f"{directory}/config.json: neither a Hugging Face nor a state-spaces config")


def read_checkpoint(name_or_path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """(config, native-named tensors, layout) of any supported checkpoint."""
    cfg, layout, directory = read_checkpoint_config(name_or_path)
    tensors = read_weights(directory)
    if layout == "hf":
        tensors = {_hf_to_native(k): v for k, v in tensors.items()}
    return cfg, tensors, layout


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               backend: str = "auto") -> MambaLM:
    """Build the model described by a checkpoint and load its weights (strictly: no missing or extra keys)."""
    cfg, tensors, _ = read_checkpoint(name_or_path)
    with torch.device("meta"):
        model = MambaLM(cfg)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise CheckpointError(f"{name_or_path}: weights do not match the config: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.set_backend(backend)


# ---- writing --------------------------------------------------------------------------------
def _state_for_saving(model: MambaLM) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors stores no aliases; the tie is in the config
    return state


def _write_safetensors(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int | None) -> None:
    total = sum(t.numel() * t.element_size() for t in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_model(model: MambaLM, directory: str | Path, tokenizer=None, extra: dict[str, Any] | None = None) -> Path:
    """Native layout: safetensors + ``biomamba_config.json`` (+ tokenizer.json), written atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        _write_safetensors(_state_for_saving(model), tmp, None)
        meta = {"format": "biomamba", "format_version": FORMAT_VERSION, "model": to_dict(model.config),
                **(extra or {})}
        (tmp / NATIVE_CONFIG).write_text(json.dumps(meta, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory


def export_hf(model: MambaLM, directory: str | Path, tokenizer=None, max_shard_bytes: int | None = 5 * 2**30) -> Path:
    """Hugging Face layout: ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads it,
    and ``AutoTokenizer`` the tokenizer with its special tokens (padding too). ``config.json`` is
    strict JSON (no bare ``Infinity``)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        state = {_native_to_hf(k): v for k, v in _state_for_saving(model).items()}
        _write_safetensors(state, tmp, max_shard_bytes)
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        config = config_to_hf(model.config, tokenizer, dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, allow_nan=False))
        if tokenizer is not None:
            tokenizer.save(tmp)
            tokenizer.save_hf_config(tmp)
    return directory


def export_state_spaces(model: MambaLM, directory: str | Path) -> Path:
    """state-spaces layout (``config.json`` + ``pytorch_model.bin``), as ``mamba_ssm`` loads it."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # head included, as upstream
        torch.save(state, tmp / "pytorch_model.bin")
        (tmp / "config.json").write_text(json.dumps(config_to_state_spaces(model.config), indent=2))
    return directory


STATE_DTYPES = ("float32", "fp32", "bfloat16", "bf16")  # names resolve_dtype maps to fp32 / bf16


def load_pretrained(model: str | Path, device: str = "auto", dtype: str = "auto", backend: str = "auto",
                    state_dtype: str = "float32") -> MambaLM:
    """The model of a checkpoint (any layout or hub id) for inference (eval mode): ``device``
    "auto" is CUDA when available, ``dtype`` "auto" bf16 on a GPU and fp32 on the CPU, ``backend``
    "auto" the fastest kernels for that device. ``state_dtype`` is the dtype decoding keeps the
    SSM states in (``MambaLM.ssm_state_dtype``). ``MambaLM.from_pretrained`` is this function."""
    from biomamba.utils.device import resolve_device, resolve_dtype

    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}, got {state_dtype!r}")
    dev = resolve_device(device)
    lm = load_model(resolve_checkpoint_dir(model), device=dev, dtype=resolve_dtype(dtype, dev), backend=backend).eval()
    lm.ssm_state_dtype = resolve_dtype(state_dtype)
    return lm


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, device: str = "auto", dtype: str = "auto",
                             backend: str = "auto", state_dtype: str = "float32"):
    """``load_pretrained``'s model and its tokenizer: the one named, else the ``tokenizer.json``
    stored beside the weights, else the GPT-NeoX default."""
    from biomamba.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer

    directory = resolve_checkpoint_dir(model)
    lm = load_pretrained(directory, device, dtype, backend, state_dtype)
    if tokenizer is None:
        tokenizer = str(directory) if (directory / "tokenizer.json").is_file() else DEFAULT_TOKENIZER
    return lm, load_tokenizer(tokenizer)
