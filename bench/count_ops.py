"""Host-side work of one training (or decode) step, counted on the CPU: Triton launches and ATen
calls per layer.

    python bench/count_ops.py [--preset tiny] [--batch 2] [--seq-len 64] [--decode] [--aten]

Runs one forward + backward of the model with the Triton backend under Triton's interpreter,
with every kernel launch counted and skipped (only the host-side structure is of interest:
the values are meaningless), bf16 autocast and documents marked by ``seq_idx``, as in
training. The counts do not depend on the shapes, so a tiny preset gives the per-layer numbers
of the 130M step. On a GPU each launch and each ATen call costs the host microseconds;
a step that issues more of them than the GPU can absorb is host-bound (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# top-level ATen calls that launch no device kernel (allocation, views, metadata)
_NO_DEVICE_WORK = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::new_empty_strided",
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::t", "aten::transpose",
    "aten::as_strided", "aten::split", "aten::split_with_sizes", "aten::slice", "aten::select", "aten::narrow",
    "aten::squeeze", "aten::unsqueeze", "aten::expand", "aten::detach", "aten::alias", "aten::resolve_conj", "aten::unbind",
    "aten::resolve_neg", "aten::lift_fresh", "aten::promote_types", "aten::to", "aten::matmul", "aten::linear",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--decode", action="store_true",
                   help="count one decode step (bf16 weights, batch 1) instead of a training step")
    p.add_argument("--aten", action="store_true", help="also list a layer's top-level ATen calls by name")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from triton.runtime import interpreter

    from biomamba.model import MambaLM, model_preset

    launches: collections.Counter = collections.Counter()

    def count_only(self, *a, **k):  # the kernel is not run
        launches[self.fn.__name__] += 1

    interpreter.InterpretedFunction.run = count_only

    def count(n_layer: int) -> tuple:
        cfg = dataclasses.replace(model_preset(args.preset), n_layer=n_layer)
        model = MambaLM(cfg, backend="torch").set_backend("triton")
        x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))
        labels = torch.roll(x, -1, 1)
        seq = (torch.arange(args.seq_len) // max(1, args.seq_len // 3)).to(torch.int32)[None].expand_as(x).contiguous()

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, n = model.loss(x, labels, seq_idx=seq)
            (loss / n).backward()

        if args.decode:
            model = model.to(torch.bfloat16).eval()
            cache = model.allocate_cache(1)

            def step() -> None:  # noqa: F811
                with torch.no_grad():
                    model.step(x[:1, 0], cache)

        step()
        model.zero_grad()
        launches.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        # top level: called from Python, not from inside another ATen op (each costs a dispatch)
        top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        # device kernels: the outermost calls that do device work (a copy, a matmul, an elementwise
        # op), i.e. not themselves view-like and under view-like wrappers only (linear → mm)
        def outermost_work(e) -> bool:
            if e.name in _NO_DEVICE_WORK:
                return False
            up = e.cpu_parent
            while up is not None and up.name.startswith("aten::"):
                if up.name not in _NO_DEVICE_WORK:
                    return False
                up = up.cpu_parent
            return True
        device = [e for e in aten if outermost_work(e)]
        return (collections.Counter(launches), collections.Counter(e.name for e in aten), len(top), len(device),
                collections.Counter(e.name for e in top))

    # the difference between 2 and 4 layers is two layers' share exactly (the head, the
    # embedding and the loss cancel out)
    (l2, a2, t2, k2, names2), (l4, a4, t4, k4, names4) = count(2), count(4)
    what = "one decode step" if args.decode else f"{args.batch} x {args.seq_len}, one forward + backward"
    print(f"preset {args.preset}, {what}")
    print(f"  a layer: {(sum(l4.values()) - sum(l2.values())) / 2:.1f} Triton launches, "
          f"{(t4 - t2) / 2:.0f} top-level ATen calls ({(sum(a4.values()) - sum(a2.values())) / 2:.0f} "
          f"with nested ones); {(k4 - k2) / 2:.0f} device kernels launched through ATen")
    print(f"  outside the layers: {2 * sum(l2.values()) - sum(l4.values())} launches, "
          f"{2 * sum(a2.values()) - sum(a4.values())} ATen calls")
    for name in sorted(l4, key=lambda k: -l4[k]):
        print(f"    {(l4[name] - l2[name]) / 2:5.1f} a layer  {name}")
    if args.aten:
        print("  top-level ATen calls a layer:")
        per_layer = {n: (names4[n] - names2[n]) / 2 for n in names4}
        for name, n in sorted(per_layer.items(), key=lambda kv: -kv[1]):
            if n:
                print(f"    {n:5.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
