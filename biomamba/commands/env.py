"""`biomamba env`: versions, the device, and which kernel backend each op would use."""

from __future__ import annotations

import argparse
import importlib
import json


def report(backend: str = "auto") -> dict:
    import torch

    from biomamba.kernels import BackendUnavailable, get_kernels, resolve_backend_name

    versions = {}
    for name in ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "mamba_ssm",
                 "causal_conv1d"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except Exception:  # noqa: BLE001 - a broken optional package is reported, not fatal
            versions[name] = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_backend_name(backend, device)
    try:
        ops = get_kernels(resolved).describe()
        problem = None
    except (BackendUnavailable, ValueError) as exc:
        ops, problem = {}, str(exc)
    return {
        "versions": versions,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "backend_requested": backend,
        "backend": resolved,
        "ops": ops,
        "problem": problem,
        "slow_path": device == "cuda" and any(src == "torch" for src in ops.values()),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba env", description=__doc__)
    parser.add_argument("--backend", default="auto", help="auto | torch | triton | mamba_ssm")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    info = report(args.backend)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["problem"] is None else 1
    for name, version in info["versions"].items():
        print(f"{name:<14} {version or 'not installed'}")
    print(f"{'device':<14} {info['device']}")
    print(f"{'backend':<14} {info['backend']} (asked: {info['backend_requested']})")
    if info["problem"]:
        print(f"problem: {info['problem']}")
        return 1
    for op, source in info["ops"].items():
        print(f"  {op:<22} {source}")
    if info["slow_path"]:
        print("WARNING: on a GPU some ops run the torch reference (slow path); see the list above.")
    return 0
