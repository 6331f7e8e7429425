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

The first micro-step of an optimizer step has a graph of its own, captured inside
``model.linear.writing_grads()``: the projections whose GEMMs accumulate into ``.grad``
(``grad_into_param``) write it there instead, so ``zero_grads`` leaves those (most of the
model's weights: 1.24 of 1.34 B at 1.3B) as they are; the later micro-steps replay the adding
graph, and anything that would add into a stale gradient (an eager micro-step, the adding
graph) zeroes it first.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from biomamba.model.linear import writing_grads

Signature = tuple


def signature(batch: dict[str, Tensor | None]) -> Signature:
    """What a captured graph is specific to: each input's shape and dtype (None where absent)."""
    return tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in sorted(batch.items()))


class _Captured:
    def __init__(self, batch: dict[str, Tensor | None], device: torch.device):
        self.inputs = {k: None if v is None else torch.empty(v.shape, dtype=v.dtype, device=device)
                       for k, v in batch.items()}
        # first of an optimizer step (True: writes the written weights' .grad) or not → (graph, Σ loss)
        self.variants: dict[bool, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.written: set = set()  # the weights whose .grad the first-of-step graph writes

    def load(self, batch: dict[str, Tensor | None]) -> None:
        for k, v in batch.items():
            if v is not None:
                self.inputs[k].copy_(v, non_blocking=True)


def _zero(params: list[nn.Parameter]) -> None:
    """Zero the gradients ``params`` have, in place (one multi-tensor launch)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


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
        self.first_of_step = True  # the next micro-step is an optimizer step's first
        self.stale: list[nn.Parameter] = []  # parameters whose .grad still holds the last step's

    def _loss_backward(self, inputs: dict[str, Tensor | None]) -> Tensor:
        # no autocast weight cache: its casts would be allocated and freed inside the capture
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else torch.autocast(self.device.type, enabled=False))
        with ctx:
            ls, _ = self.module(inputs["input_ids"], inputs.get("seq_idx"), inputs["targets"])
        (ls * self.scale).backward()
        return ls

    def zero_grads(self) -> None:
        """After an optimizer step: zero the gradients, except those that every first-of-step
        graph writes (they stay stale until the next micro-step writes or zeroes them)."""
        firsts = [cap.written for cap in self.graphs.values() if True in cap.variants]
        written = set.intersection(*firsts) if firsts else set()
        self.stale = [p for p in self.params if p.grad is not None and p in written]
        _zero([p for p in self.params if p not in written])
        self.first_of_step = True

    def zero_all_grads(self) -> None:
        """Zero every gradient (before training on without the graphs)."""
        _zero(self.params)
        self.stale, self.first_of_step = [], True

    def _zero_stale(self, keep: set = frozenset()) -> None:
        _zero([p for p in self.stale if p not in keep])
        self.stale = []

    def prepare(self, batches: list[dict[str, Tensor | None]]) -> None:
        """Capture the graphs ``batches`` want (the first one's as an optimizer step's first
        micro-step, the others' as later ones) that are not captured yet, while there is room
        for their signatures. Call at the start of an optimizer step: the warm-up runs leave
        gradients that are zeroed afterwards, so any accumulated before would be lost."""
        for k, batch in enumerate(batches):
            key = signature(batch)
            if key not in self.graphs:
                if len(self.graphs) >= self.max_graphs:
                    if not self._told_full:
                        self.log(f"note: {self.max_graphs} input shapes already have a CUDA graph; micro-batches "
                                 f"of other shapes run eagerly (train.cuda_graph; pad batches to fixed lengths "
                                 f"to avoid it)")
                        self._told_full = True
                    continue
                self.graphs[key] = _Captured(batch, self.device)
            if (k == 0) not in self.graphs[key].variants:
                self._capture(self.graphs[key], batch, first=k == 0)

    def _capture(self, cap: _Captured, batch: dict[str, Tensor | None], first: bool) -> None:
        cap.load(batch)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # JIT compilation, cuBLAS workspaces, .grad allocation
            for _ in range(self.warmup):
                self._loss_backward(cap.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # parameters the loss does not reach keep grad None, as in the eager step (the optimizer skips them)
        self.zero_all_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            if first:
                with writing_grads() as written:
                    loss_sum = self._loss_backward(cap.inputs).detach()
                cap.written = written
            else:
                loss_sum = self._loss_backward(cap.inputs).detach()
        cap.variants[first] = (graph, loss_sum)

    def run(self, batch: dict[str, Tensor | None], scale: float) -> Tensor | None:
        """Replay the micro-step for ``batch`` (host tensors, ideally pinned); adds its gradient
        into ``.grad`` and returns Σ loss (a buffer the next replay overwrites: consume it
        first). None when the signature has no graph: the caller runs it eagerly."""
        cap = self.graphs.get(signature(batch))
        first, self.first_of_step = self.first_of_step, False
        variant = None if cap is None else cap.variants.get(first) or cap.variants.get(False)
        if variant is None:
            self._zero_stale()  # the eager micro-step adds into .grad
            self.eager_micro_steps += 1
            return None
        writes = first and variant is cap.variants.get(True)
        self._zero_stale(cap.written if writes else frozenset())
        graph, loss_sum = variant
        cap.load(batch)
        self.scale.fill_(scale)
        graph.replay()
        return loss_sum
