"""biomamba: adapt Mamba2 language models to biomedical and clinical text, and prove the result.

The Python API (``biomamba/api.py``; docs/api.md):

    import biomamba
    lm = biomamba.load("runs/demo/adapted/best")          # any checkpoint layout or hub id
    lm.generate("BRCA1 mutations", max_new_tokens=20)
    biomamba.evaluate(lm, "pubmedqa", split="validation", data_root="data")
    biomamba.finetune("configs/sft/yesno.yaml", out="runs/sft", model="runs/demo/adapted/best")

Names are imported on first use, so ``import biomamba`` (and the CLI's start) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# exported name → the module that defines it
_EXPORTS = {
    "load": "biomamba.api",
    "evaluate": "biomamba.api",
    "finetune": "biomamba.api",
    "pretrain": "biomamba.api",
    "LanguageModel": "biomamba.api",
    "MambaLM": "biomamba.model.lm",
    "ModelConfig": "biomamba.model.config",
    "model_preset": "biomamba.model.config",
    "SamplingConfig": "biomamba.generate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'biomamba' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
