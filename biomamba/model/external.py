"""Any Hugging Face causal LM (GPT-2, GPT-NeoX, Llama, Gemma, BioGPT, …) for the comparisons
of the papers' Tables 3 and 7, loaded without unpickling anything.

``from_pretrained`` reads ``model.safetensors`` itself (``use_safetensors=True``: it never
falls back to ``torch.load``); a checkpoint that exists only as ``pytorch_model.bin`` (many of
the papers' baselines) is parsed by ``utils.torch_zip`` and handed over as a state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from biomamba.model.checkpoint import CheckpointError, WEIGHT_PATTERNS, read_weights, resolve_checkpoint_dir

TOKENIZER_PATTERNS = ["*.txt", "*.model", "*.tiktoken", "tokenizer*", "vocab*", "merges*"]


def load_causal_lm(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[Any, Any, Path]:
    """(model in eval mode on ``device`` in ``dtype``, its tokenizer, its local directory)."""
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(f"{name}: loading a non-Mamba model needs transformers (pip install "
                              f"'biomamba[hf]')") from exc
    directory = resolve_checkpoint_dir(name, WEIGHT_PATTERNS + TOKENIZER_PATTERNS)
    try:
        config = transformers.AutoConfig.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; name the directory
        raise CheckpointError(f"{directory}: not a transformers model config ({type(exc).__name__}: {exc})") from exc
    has_safetensors = any(directory.glob("*.safetensors"))
    try:
        if has_safetensors:
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True)
        else:
            state = read_weights(directory)
            cls = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the Auto class wants a path here
            model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{directory}: cannot load as a transformers causal LM ({type(exc).__name__}: "
                              f"{exc})") from exc
    return model.to(device).eval(), tokenizer, directory

