"""`biomamba env`: versions, the device, and which kernel backend each op would use.

A user on the slow path (the torch reference on a GPU) sees it at once.
"""

from __future__ import annotations

import argparse
import importlib
import platform

KERNEL_BACKENDS = ("triton", "mamba_ssm", "torch")


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - an unimportable package is a finding, not a crash
        return f"not importable ({type(exc).__name__})"


def report() -> dict:
    import torch

    from biomamba.kernels import OPS, BackendUnavailable, get_kernels, resolve_backend_name

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {m: _version(m) for m in ("biomamba", "torch", "triton", "transformers", "mamba_ssm",
                                              "causal_conv1d")},
        "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "cuda": torch.version.cuda,
        "backends": {},
    }
    for name in KERNEL_BACKENDS:
        try:
            out["backends"][name] = {"ok": True, "ops": get_kernels(name).describe()}
        except (BackendUnavailable, ValueError) as exc:
            out["backends"][name] = {"ok": False, "why": str(exc)}
    auto = resolve_backend_name("auto", device_type)
    out["auto"] = {"backend": auto, "ops": get_kernels(auto).describe()}
    slow = [op for op, src in out["auto"]["ops"].items() if src == "torch" and op != "selective_scan"]
    out["slow_path"] = device_type == "cuda" and bool(slow)
    out["ops"] = list(OPS)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba env", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    info = report()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']} on {info['platform']}")
    for name, ver in info["versions"].items():
        print(f"  {name:<14} {ver}")
    print(f"device: {info['device']} (CUDA {info['cuda']})")
    print("kernel backends:")
    for name, b in info["backends"].items():
        print(f"  {name:<10} " + ("available" if b["ok"] else f"unavailable: {b['why']}"))
    print(f"auto → {info['auto']['backend']}; op → backend that runs it:")
    for op, src in info["auto"]["ops"].items():
        print(f"  {op:<22} {src}")
    if info["slow_path"]:
        print("WARNING: on a GPU but some ops run the torch reference (slow path): install triton, "
              "or see `biomamba env --json` for why a backend is unavailable.")
    return 0
