"""The kernel seam: every hot op of the mixers is called through one ``Kernels`` object.

A backend is a module that defines some of the ops in ``OPS`` with the signatures of
``biomamba.kernels.reference``; ops it does not define fall back to the reference. Backends:

* ``torch``     – the reference (``reference.py``), runs anywhere;
* ``triton``    – our Triton fast path (``biomamba.kernels.triton``), CUDA or TRITON_INTERPRET=1;
* ``mamba_ssm`` – adapters over the ``mamba_ssm`` / ``causal_conv1d`` packages when installed;
* ``auto``      – triton on CUDA when available, else torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

from biomamba.kernels import reference

OPS = ("ssd_scan", "causal_conv1d", "gated_rmsnorm", "rmsnorm", "add_rmsnorm", "ssd_step", "conv_step",
       "conv_ssd_step", "norm_linear", "gated_norm_linear", "selective_scan", "linear_cross_entropy", "mamba2_core")
# ops that a backend without its own version gets composed from its own primitives (not the
# reference's): op → (the composer in reference.py, the primitives it takes)
COMPOSED = {"conv_ssd_step": ("compose_conv_ssd_step", ("conv_step", "ssd_step")),
            "norm_linear": ("compose_norm_linear", ("rmsnorm", "add_rmsnorm")),
            "gated_norm_linear": ("compose_gated_norm_linear", ("gated_rmsnorm",)),
            "mamba2_core": ("compose_mamba2_core", ("causal_conv1d", "ssd_scan", "gated_rmsnorm"))}
BACKENDS = {
    "torch": "biomamba.kernels.reference",
    "triton": "biomamba.kernels.triton",
    "mamba_ssm": "biomamba.kernels.mamba_ssm_adapter",
}


class BackendUnavailable(RuntimeError):
    pass


@dataclass
class Kernels:
    name: str
    impl: dict[str, Callable] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # op → backend that provides it
    details: Callable[[], dict[str, str]] | None = None  # op → how it runs now (a backend's switches)
    module: ModuleType | None = None  # the backend's module

    def ssd_chunk(self, model_chunk: int) -> int:
        """The SSD chunk length a model's mixers run at: the model's own, capped at the backend's
        ``SSD_MAX_CHUNK`` where it sets one. The scan's value does not depend on the chunk length
        (only its rounding and its speed), so a backend may pick the length it runs fastest at."""
        cap = getattr(self.module, "SSD_MAX_CHUNK", None)
        return min(model_chunk, cap) if cap else model_chunk

    def __getattr__(self, op: str) -> Callable:
        impl = self.__dict__.get("impl", {})
        if op in impl:
            return impl[op]
        raise AttributeError(op)

    def describe(self) -> dict[str, str]:
        out = dict(self.source)
        for op, how in (self.details() if self.details else {}).items():
            out[op] += f" ({how})"
        return out


def _load_module(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        raise BackendUnavailable(f"kernel backend {name!r} cannot be imported: {exc}") from exc
    check = getattr(module, "available", None)
    if check is not None:
        ok, why = check()
        if not ok:
            raise BackendUnavailable(f"kernel backend {name!r} is unavailable: {why}")
    return module


def resolve_backend_name(name: str = "auto", device_type: str = "cpu") -> str:
    if name != "auto":
        return name
    if device_type == "cuda":
        try:
            _load_module("triton")
            return "triton"
        except (BackendUnavailable, ValueError):
            return "torch"
    return "torch"


_CACHE: dict[str, Kernels] = {}


def get_kernels(name: str = "torch") -> Kernels:
    """The ops of backend ``name`` ("auto" must be resolved first), reference ops filling the gaps."""
    if name in _CACHE:
        return _CACHE[name]
    module = _load_module(name)
    kernels = Kernels(name, details=getattr(module, "op_details", None), module=module)
    for op in OPS:
        fn = getattr(module, op, None)
        kernels.impl[op] = fn if fn is not None else getattr(reference, op)
        kernels.source[op] = name if fn is not None else "torch"
    for op, (composer, parts) in COMPOSED.items():
        if getattr(module, op, None) is None:
            kernels.impl[op] = getattr(reference, composer)(*(kernels.impl[p] for p in parts))
            kernels.source[op] = " + ".join(kernels.source[p] for p in parts)
    _CACHE[name] = kernels
    return kernels
