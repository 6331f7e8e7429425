"""The Python API: what the verbs run, callable from a script or a notebook.

    import biomamba

    lm = biomamba.load("runs/demo/adapted/best")      # any checkpoint layout, or a hub id
    lm.generate(["BRCA1 mutations", "Metformin"], max_new_tokens=20)
    results = biomamba.evaluate(lm, "pubmedqa", split="validation", data_root="data")
    summary = biomamba.finetune("configs/sft/yesno.yaml", out="runs/sft", model="runs/demo/adapted/best",
                                train={"max_steps": 100})

Each function is a thin layer over the code its verb calls, never a second implementation:
``load`` is ``load_model_and_tokenizer`` (``biomamba generate`` / ``serve``), ``generate`` the
batched decoding of ``biomamba generate --file``, ``evaluate`` what ``biomamba eval
yesno|factoid|clinical`` runs, ``finetune`` ``biomamba sft`` and ``pretrain`` ``biomamba
pretrain``. Their settings are the verbs' config dataclasses, so a key the CLI does not
accept fails here too, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

from biomamba.config import ConfigError, _merge, from_dict, read_yaml, to_dict

T = TypeVar("T")


class LanguageModel:
    """A loaded checkpoint: ``.model`` (a ``MambaLM``, eval mode, on its device and kernel
    backend), ``.tokenizer`` and ``.generate``. ``biomamba.load`` builds one."""

    def __init__(self, model: Any, tokenizer: Any, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name  # what it was loaded from: results name it

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop: str | Sequence[str] | None = None, seed: int = 42,
                 batch_size: int = 16) -> str | list[str]:
        """Completions (without the prompt) of one prompt (a string back) or several (a list back,
        decoded ``batch_size`` at a time): greedy at ``temperature`` 0, else sampled with
        ``top_k`` / ``top_p`` from ``seed``; a completion ends at EOS, after ``max_new_tokens``,
        or at the first of the ``stop`` strings (cut from it). The same as ``biomamba generate``."""
        from biomamba.commands.generate import generate_batched
        from biomamba.generate import SamplingConfig

        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        if not all(isinstance(p, str) for p in batch):
            raise TypeError("prompts must be a string or a sequence of strings")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  seed=seed, stop=stops)
        out = generate_batched(self.model, self.tokenizer, batch, sampling, batch_size)
        return out[0] if single else out

    def __repr__(self) -> str:
        cfg = self.model.config
        return (f"LanguageModel({self.name or '<in memory>'}: {cfg.arch}, {self.model.num_parameters() / 1e6:.1f} M "
                f"parameters, {self.device}, {next(self.model.parameters()).dtype}, "
                f"backend {self.model.backend_name})")


def load(name_or_path: str | Path, *, tokenizer: str | Path | None = None, device: str = "auto",
         dtype: str = "auto", backend: str = "auto", state_dtype: str = "float32") -> LanguageModel:
    """A checkpoint (native, Hugging Face or state-spaces layout, or a hub id) with its tokenizer
    (``tokenizer``: a tokenizer.json or its directory; default the one stored beside the
    weights, else GPT-NeoX). ``device`` "auto" is CUDA when available; ``dtype`` "auto" bf16 on a
    GPU, fp32 on the CPU; ``backend`` "auto" the fastest kernels for the device."""
    from biomamba.model.checkpoint import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(name_or_path), None if tokenizer is None else str(tokenizer), device,
                                          dtype, backend, state_dtype)
    return LanguageModel(model, tok, str(name_or_path))


def _resolve(cls: type[T], config: Any, overrides: dict[str, Any]) -> T:
    """A verb's config from a config object, a YAML path or a mapping (or nothing: the defaults),
    with keyword overrides on top: nested sections as mappings (``train={"max_steps": 10}``) or
    dotted keys (``**{"train.max_steps": 10}``). Validated like the CLI's ``--key=value``."""
    if config is None:
        data: dict[str, Any] = {}
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not (isinstance(config, cls) or issubclass(cls, type(config))):  # a base part (TaskEvalConfig) will do
            raise TypeError(f"config is a {type(config).__name__}; this function takes a {cls.__name__}")
        data = to_dict(config)
    elif isinstance(config, (str, Path)):
        data = read_yaml(config)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise TypeError(f"config must be a {cls.__name__}, a YAML path or a mapping, not {type(config).__name__}")
    for key, value in overrides.items():
        nested: Any = to_dict(value)
        for part in reversed(key.split(".")):
            nested = {part: nested}
        data = _merge(data, nested)
    where = f" (from {config})" if isinstance(config, (str, Path)) else ""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{where}") from None


def evaluate(model: LanguageModel | str | Path, task: str, split: str | None = None, *,
             out: str | Path | None = None, config: Any = None, print_table: bool = False,
             **overrides: Any) -> dict[str, Any]:
    """Score ``model`` (a ``LanguageModel`` or a checkpoint to load) on ``task`` (a built-in task
    name or a task YAML) and return the results ``biomamba eval`` writes to results.json:
    metrics with intervals, counts, predictions. ``split``: "test" or "validation" (default: the
    config's, else test). ``config``: a ``TaskEvalVerbConfig``, a YAML path (configs/eval/*.yaml)
    or a mapping; keyword ``overrides`` are its fields (``data_root``, ``paths``, ``max_examples``,
    ``batch_size``, ``modes``, …). ``out``: also write the run directory the verb writes."""
    from biomamba.commands.eval import TaskEvalVerbConfig, evaluate_config

    loaded = model if isinstance(model, LanguageModel) else None
    name = loaded.name if loaded is not None else str(model)
    fixed = {"task": task, "model": name or "in-memory model", **({"split": split} if split is not None else {})}
    cfg = _resolve(TaskEvalVerbConfig, config, {**overrides, **fixed})
    lm = None
    if loaded is not None:
        from biomamba.eval.lm import from_mamba

        lm = from_mamba(loaded.model, loaded.tokenizer, batch_size=cfg.batch_size)
    return evaluate_config(cfg, Path(out) if out is not None else None, lm=lm, print_table=print_table)


def finetune(config: Any = None, *, out: str | Path, **overrides: Any) -> dict[str, Any]:
    """Supervised fine-tuning, as ``biomamba sft`` runs it, into the run directory ``out``;
    returns the run's summary. ``config``: an ``SFTConfig``, a YAML path (configs/sft/*.yaml) or a
    mapping; keyword ``overrides`` on top (``model=``, ``task=``, ``data_root=``,
    ``train={"max_steps": 10}``, …). ``model`` is a checkpoint path or hub id."""
    from biomamba.commands.sft import finetune_config
    from biomamba.sft import SFTConfig

    if isinstance(overrides.get("model"), LanguageModel):
        raise TypeError("finetune trains from a checkpoint on disk: pass model= its path (LanguageModel.name), "
                        "not the loaded model")
    return finetune_config(_resolve(SFTConfig, config, overrides), Path(out))


def pretrain(config: Any = None, *, out: str | Path, **overrides: Any) -> dict[str, Any]:
    """(Continued) pretraining, as ``biomamba pretrain`` runs it, into the run directory ``out``;
    returns the run's summary. ``config``: a ``PretrainConfig``, a YAML path
    (configs/pretrain/*.yaml) or a mapping; keyword ``overrides`` on top (``data=`` the token
    shards, ``model={"init_from": ...}``, ``train={"max_steps": 10}``, …)."""
    from biomamba.train.config import PretrainConfig
    from biomamba.train.pretrain import run_pretrain

    return run_pretrain(_resolve(PretrainConfig, config, overrides), Path(out))


__all__ = ["LanguageModel", "load", "evaluate", "finetune", "pretrain"]
