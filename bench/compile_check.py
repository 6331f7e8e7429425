"""Compile, for an sm_90 GPU (H100/H200) and on a machine without one, every Triton kernel that a
training step and decoding launch at a model preset's real widths: each launch is intercepted,
specialised the way Triton specialises it at run time (ints equal to 1 become constants,
16-divisible ints and 16-byte-aligned pointers get the divisibility attribute) and compiled to
a cubin, whose registers and stack frame are read back (the stack, i.e. spills, is listed
when > 0); nothing runs. Kernels' outputs are left unwritten, which is fine: only shapes, dtypes and
strides decide what is compiled.

Why: a GPU call costs minutes of a small budget, and the GPU machine's Triton is not the one CI
has. In call L (bench/RESULTS.md) every 1.3B case died on a compile error of Triton 3.6 that
Triton 3.9 does not have. Point ``--triton`` at another Triton (an unpacked wheel:
``pip download triton==3.6.0``, unzip) to check against that version.

    python bench/compile_check.py [--presets 130m,1.3b] [--triton DIR] [--verbose]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _interceptor(failures: dict, compiled: dict):
    """A replacement for ``JITFunction.run`` that compiles for sm_90 instead of launching."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)

    def run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if k in kwargs}
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        signature, constexprs, attrs = {}, {}, {}
        for p in self.params:
            value = bound.arguments[p.name]
            if p.is_constexpr:
                signature[p.name], constexprs[(p.num,)] = "constexpr", value
                continue
            kind, spec = native_specialize_impl(BaseBackend, value, False, not p.do_not_specialize,
                                                not p.do_not_specialize_on_alignment)
            if kind == "constexpr":
                signature[p.name], constexprs[(p.num,)] = "constexpr", spec
            else:
                signature[p.name] = kind
                if spec and "D" in spec:
                    attrs[(p.num,)] = [["tt.divisibility", 16]]
        key = (self.fn.__name__, tuple(signature.items()), tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
               tuple(sorted(attrs)), tuple(sorted(options.items())))
        if key in compiled or key in failures:
            return None
        what = f"{self.fn.__name__}(" + ", ".join(
            f"{n}={v!r}" for (i,), v in constexprs.items() for n in [self.arg_names[i]]) + f") {options}"
        try:
            kernel = triton.compile(ASTSource(fn=self, signature=signature, constexprs=constexprs, attrs=attrs),
                                    target=target, options=options)
            compiled[key] = f"{what}: {_resource_usage(kernel.asm['cubin'])}"
        except Exception as exc:  # report every failing specialisation, not just the first
            failures[key] = f"{what}: {str(exc).strip().splitlines()[-1][:200]}"
        return None

    return run


def _resource_usage(cubin: bytes) -> str:
    """Registers a thread and stack bytes (spills) of the cubin Triton's own ptxas made, read
    with the cuobjdump Triton bundles: what the GPU would report on loading it, known here."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not usage:
        return "usage unknown"
    # spilled registers live in the thread's stack frame (STACK), not in LOCAL (declared local
    # arrays, which Triton kernels have none of): at 255 registers a 1.3B dC specialisation has 112 B
    # of stack and 21 spill stores in its SASS, with LOCAL:0. (Shared memory is dynamic: not here.)
    return f"{usage[1]} registers, {int(usage[2]) + int(usage[4])} B stack (spills)"


def check(presets: list[str]) -> tuple[dict, dict]:
    """(compiled, failures): specialisation → description, for one training step (bf16 autocast,
    two documents, a length that does not divide the chunk) and decoding (a left-padded prefill,
    then steps at 1, 4, 16 and 64 rows, with the conv and SSM steps apart and fused) of each preset
    (one layer of its widths)."""
    import torch
    from triton.runtime.jit import JITFunction

    import biomamba.kernels.triton as T
    from biomamba.model import MambaLM
    from biomamba.model.config import model_preset

    failures: dict = {}
    compiled: dict = {}
    real_run, real_available, real_fused = JITFunction.run, T.available, T.FUSED_DECODE_STEP
    JITFunction.run = _interceptor(failures, compiled)
    T.available = lambda: (True, "compile check: kernels are compiled for sm_90, not run")
    try:
        for name in presets:
            torch.manual_seed(0)
            model = MambaLM(model_preset(name, n_layer=1), backend="triton")
            cfg = model.config
            length = 2 * cfg.chunk_size + 3
            ids = torch.randint(0, cfg.vocab_size, (2, length))
            seq = torch.zeros(2, length, dtype=torch.int32)
            seq[:, length // 3:] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = model.loss(ids, torch.roll(ids, -1, 1), seq_idx=seq)
            loss.backward()
            model = model.to(torch.bfloat16).eval()
            with torch.no_grad():
                for rows in (1, 4, 16, 64):
                    cache = model.allocate_cache(rows)
                    model.hidden(ids[:1].expand(rows, -1)[:, :32], seq_idx=seq[:1, :32].expand(rows, -1), cache=cache)
                    for fused in (False, True):
                        T.FUSED_DECODE_STEP = fused
                        model.step(ids[:1, 0].expand(rows), cache)
    finally:
        JITFunction.run, T.available, T.FUSED_DECODE_STEP = real_run, real_available, real_fused
    return compiled, failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="130m,1.3b", help="comma-separated model presets")
    parser.add_argument("--triton", help="a directory holding another Triton package, put first on sys.path")
    parser.add_argument("--verbose", action="store_true", help="list every specialisation, not only those that spill")
    parser.add_argument("--bwd-tile", action="append", default=[], metavar="KEY=INT",
                        help="set an ssd.BWD_TILES entry first (e.g. pw_maxnreg=168), to see a variant's registers")
    args = parser.parse_args(argv)
    if args.triton:
        sys.path.insert(0, args.triton)
    import triton

    from biomamba.kernels.triton import ssd
    for item in args.bwd_tile:
        key, _, value = item.partition("=")
        if key not in ssd.BWD_TILES:
            parser.error(f"--bwd-tile {item}: no BWD_TILES entry {key!r} (there are {sorted(ssd.BWD_TILES)})")
        ssd.BWD_TILES[key] = int(value)

    t0 = time.time()
    compiled, failures = check(args.presets.split(","))
    print(f"triton {triton.__version__}, presets {args.presets}: {len(compiled)} specialisations compiled, "
          f"{len(failures)} failed ({time.time() - t0:.0f} s)")
    for what in compiled.values():
        if args.verbose or not what.endswith(" 0 B stack (spills)"):
            print("  ", what)
    for what in failures.values():
        print("  FAILED", what)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
