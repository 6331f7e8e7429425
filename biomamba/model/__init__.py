"""Mamba2 (and Mamba-1) language models in plain PyTorch, presets, and checkpoint conversion."""

from biomamba.model.config import HUB_IDS, PRESETS, ModelConfig, model_preset
from biomamba.model.lm import InferenceCache, MambaLM, seq_idx_from_cu_seqlens

__all__ = ["ModelConfig", "model_preset", "PRESETS", "HUB_IDS", "MambaLM", "InferenceCache",
           "seq_idx_from_cu_seqlens", "load_model", "save_model", "export_hf", "export_state_spaces"]


def __getattr__(name: str):
    # checkpoint I/O pulls in safetensors/json helpers; import on first use
    if name in ("load_model", "save_model", "export_hf", "export_state_spaces"):
        from biomamba.model import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
