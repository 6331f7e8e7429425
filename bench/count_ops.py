"""Host-side work of one training step, counted on the CPU: Triton launches and ATen calls per layer.

    python bench/count_ops.py [--preset tiny] [--batch 2] [--seq-len 64]

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from triton.runtime import interpreter

    from biomamba.model import MambaLM, model_preset

    launches: collections.Counter = collections.Counter()

    def count_only(self, *a, **k):  # the kernel is not run
        launches[self.fn.__name__] += 1

    interpreter.InterpretedFunction.run = count_only

    def count(n_layer: int) -> tuple[collections.Counter, collections.Counter]:
        cfg = dataclasses.replace(model_preset(args.preset), n_layer=n_layer)
        model = MambaLM(cfg, backend="torch").set_backend("triton")
        x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))
        labels = torch.roll(x, -1, 1)
        seq = (torch.arange(args.seq_len) // max(1, args.seq_len // 3)).to(torch.int32)[None].expand_as(x).contiguous()

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, n = model.loss(x, labels, seq_idx=seq)
            (loss / n).backward()

        step()
        model.zero_grad()
        launches.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        # top level: called from Python, not from inside another ATen op (each costs a dispatch)
        top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return collections.Counter(launches), collections.Counter(e.name for e in aten), len(top)

    # the difference between 2 and 4 layers is two layers' share exactly (the head, the
    # embedding and the loss cancel out)
    (l2, a2, t2), (l4, a4, t4) = count(2), count(4)
    print(f"preset {args.preset} at {args.batch} x {args.seq_len}, one forward + backward")
    print(f"  a layer: {(sum(l4.values()) - sum(l2.values())) / 2:.1f} Triton launches, "
          f"{(t4 - t2) / 2:.0f} top-level ATen calls ({(sum(a4.values()) - sum(a2.values())) / 2:.0f} "
          "with nested ones)")
    print(f"  outside the layers: {2 * sum(l2.values()) - sum(l4.values())} launches, "
          f"{2 * sum(a2.values()) - sum(a4.values())} ATen calls")
    for name in sorted(l4, key=lambda k: -l4[k]):
        print(f"    {(l4[name] - l2[name]) / 2:5.1f} a layer  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
