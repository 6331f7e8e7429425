"""A training micro-step (forward, loss, backward) replayed from a CUDA graph.

Why: the eager step of a small model is host-bound. At 130M, 16 × 1,024 on an H200 the GPU
was busy 78 % of the step while Python issued the step's ~3,000 ops (bench/RESULTS.md,
call E). Capturing the micro-step once per input shape and replaying it removes that cost;
the gradient clipping, optimizer step and EMA stay eager (a few fused launches).

How: the step is captured with the parameters' ``.grad`` already allocated, so autograd
records an in-place ``grad += new`` and every replay *adds* its micro-batch's gradient,
which is what accumulation needs. (``torch.cuda.make_graphed_callables`` returns static
gradient buffers that autograd may adopt as ``.grad``, after which a second micro-batch
overwrites the first: pytorch/pytorch#181723.) Hence the rules the trainer keeps: grads are
zeroed in place, never set to None; capture happens at the start of an optimizer step,
when they are zero; inputs are copied into static buffers; the loss scale is a device
scalar filled before each replay.

Shapes must repeat: packed pretraining rows always do; SFT batches padded to their longest
example may not, so at most ``max_graphs`` input signatures are captured (sharing one
memory pool, as their replays never overlap) and the rest run eagerly, counted.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Signature = tuple


def signature(batch: dict[str, Tensor | None]) -> Signature:
    """What a captured graph is specific to: each input's shape and dtype (None where absent)."""
    return tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in sorted(batch.items()))


class _Captured:
    def __init__(self, batch: dict[str, Tensor | None], device: torch.device):
        self.inputs = {k: None if v is None else torch.empty(v.shape, dtype=v.dtype, device=device)
                       for k, v in batch.items()}
        self.graph = torch.cuda.CUDAGraph()
        self.loss_sum: Tensor | None = None

    def load(self, batch: dict[str, Tensor | None]) -> None:
        for k, v in batch.items():
            if v is not None:
                self.inputs[k].copy_(v, non_blocking=True)


class MicroStepGraphs:
    """Replays ``(module(input_ids, seq_idx, targets)[0] * scale).backward()`` from CUDA graphs.

    ``module`` returns ``(Σ loss, count)``; ``params`` are the trained parameters (their
    gradients are accumulated in place); ``autocast_dtype`` is the autocast dtype or None.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], device: torch.device,
                 autocast_dtype: torch.dtype | None, *, max_graphs: int = 4, warmup: int = 2,
                 log: Callable[[str], None] = print):
        self.module, self.params, self.device = module, params, device
        self.autocast_dtype = autocast_dtype
        self.max_graphs, self.warmup, self.log = max_graphs, warmup, log
        self.graphs: dict[Signature, _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.scale = torch.ones((), dtype=torch.float32, device=device)
        self.eager_micro_steps = 0  # micro-batches whose signature found no graph
        self._told_full = False

    def _loss_backward(self, inputs: dict[str, Tensor | None]) -> Tensor:
        # no autocast weight cache: its casts would be allocated and freed inside the capture
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else torch.autocast(self.device.type, enabled=False))
        with ctx:
            ls, _ = self.module(inputs["input_ids"], inputs.get("seq_idx"), inputs["targets"])
        (ls * self.scale).backward()
        return ls

    def zero_grads(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def prepare(self, batches: list[dict[str, Tensor | None]]) -> None:
        """Capture a graph for each signature among ``batches`` not seen yet (while there is
        room). Call at the start of an optimizer step: the warm-up runs leave gradients that
        are zeroed afterwards, so any accumulated before would be lost."""
        for batch in batches:
            key = signature(batch)
            if key in self.graphs:
                continue
            if len(self.graphs) >= self.max_graphs:
                if not self._told_full:
                    self.log(f"note: {self.max_graphs} input shapes already have a CUDA graph; micro-batches of "
                             f"other shapes run eagerly (train.cuda_graph; pad batches to fixed lengths to avoid it)")
                    self._told_full = True
                continue
            self.graphs[key] = self._capture(batch)

    def _capture(self, batch: dict[str, Tensor | None]) -> _Captured:
        cap = _Captured(batch, self.device)
        cap.load(batch)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # JIT compilation, cuBLAS workspaces, .grad allocation
            for _ in range(self.warmup):
                self._loss_backward(cap.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # parameters the loss does not reach keep grad None, as in the eager step (the optimizer skips them)
        self.zero_grads()
        with torch.cuda.graph(cap.graph, pool=self.pool):
            cap.loss_sum = self._loss_backward(cap.inputs).detach()
        return cap

    def run(self, batch: dict[str, Tensor | None], scale: float) -> Tensor | None:
        """Replay the micro-step for ``batch`` (host tensors, ideally pinned); adds its gradient
        into ``.grad`` and returns Σ loss (a buffer the next replay overwrites: consume it
        first). None when the signature has no graph: the caller runs it eagerly."""
        cap = self.graphs.get(signature(batch))
        if cap is None:
            self.eager_micro_steps += 1
            return None
        cap.load(batch)
        self.scale.fill_(scale)
        cap.graph.replay()
        return cap.loss_sum
