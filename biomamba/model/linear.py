"""nn.Linear whose weight gradient can be accumulated straight into ``weight.grad`` by the GEMM.

Why: with fp32 master weights under bf16 autocast, autograd computes a bf16 weight gradient,
casts it to fp32 (a copy) and, when ``.grad`` already exists (the CUDA-graph micro-step keeps
it allocated), adds it in place (a second pass): at 1.3B, 8 × 1,024 on an H200 those two were
2.2 + 4.6 ms of a 197 ms step (bench/RESULTS.md, session 9 call 2). Here the backward's weight
GEMM adds into ``.grad`` itself (cuBLAS with an fp32 output, beta 1), and the weight's autograd
gradient is None.

It bypasses autograd's gradient accumulation, so DDP / FSDP reducers (which hook it) and
gradient hooks on these weights do not see it: ``grad_into_param`` is for single-device
training only (the trainer turns it on there). Off, the module is plain ``nn.Linear``.

Inside ``writing_grads()`` the GEMM writes the gradient instead (beta 0): the first micro-step of
an optimizer step then needs no zeroed ``.grad`` for these weights (zeroing them was 1.5 ms of a
1.3B step: session 9 call 3's profile).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _WriteScope:
    """``pending``: weights whose next backward writes .grad; a weight joins in its forward and
    leaves at its first backward (used twice in a forward: one write, then an add).
    ``written``: every weight that joined."""

    def __init__(self):
        self.pending: set = set()
        self.written: set = set()


_SCOPE: _WriteScope | None = None


@contextlib.contextmanager
def writing_grads() -> Iterator[set]:
    """A forward and its backward run inside write the gradients of ``grad_into_param`` weights
    into their ``.grad`` (whatever it held) instead of adding to them. Yields the set of the
    weights so written (filled as the forward runs)."""
    global _SCOPE
    if _SCOPE is not None:
        raise RuntimeError("writing_grads() does not nest")
    _SCOPE = _WriteScope()
    try:
        yield _SCOPE.written
    finally:
        _SCOPE = None


def _weight_grad_into(weight: nn.Parameter, dy2: Tensor, x2: Tensor, write: bool = False) -> None:
    """weight.grad (+)= dy2ᵀ · x2, formed in weight's dtype by the GEMM where the backend can;
    ``write``: = instead of +=."""
    grad, acc = weight.grad, weight.dtype
    if dy2.dtype == acc:  # the GEMM's output dtype is already the weight's
        if grad is None:
            weight.grad = dy2.t().mm(x2)
        elif write:
            torch.mm(dy2.t(), x2, out=grad)
        else:
            grad.addmm_(dy2.t(), x2)
        return
    if dy2.is_cuda:  # bf16 inputs, fp32 output and accumulation inside cuBLAS
        if grad is None:
            weight.grad = torch.ops.aten.mm.dtype(dy2.t(), x2, acc)
        elif write:  # beta 0: cuBLAS does not read what grad held
            torch.ops.aten.addmm.dtype_out(grad, dy2.t(), x2, acc, beta=0, out=grad)
        else:
            torch.ops.aten.addmm.dtype_out(grad, dy2.t(), x2, acc, out=grad)
        return
    product = dy2.t().mm(x2).to(acc)  # (the CPU has no mixed-dtype GEMM)
    if grad is None:
        weight.grad = product
    elif write:
        grad.copy_(product)
    else:
        grad.add_(product)


class _LinearGradIntoParam(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: nn.Parameter, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
        x_c, w_c = x.to(dtype), weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(x_c, w_c, bias.to(dtype) if bias is not None else None)
        ctx.save_for_backward(x_c, w_c)
        ctx.weight, ctx.x_dtype, ctx.has_bias = weight, x.dtype, bias is not None
        if _SCOPE is not None:
            _SCOPE.pending.add(weight)
            _SCOPE.written.add(weight)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x_c, w_c = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = (dy2.mm(w_c)).view(*dy.shape[:-1], w_c.shape[1]).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            write = _SCOPE is not None and ctx.weight in _SCOPE.pending
            if write:
                _SCOPE.pending.discard(ctx.weight)
            _weight_grad_into(ctx.weight, dy2, x_c.reshape(-1, x_c.shape[-1]), write)
        dbias = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, None, dbias, None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict names); with ``grad_into_param`` its weight
    gradient is accumulated into ``weight.grad`` by the backward's GEMM (module docstring)."""

    grad_into_param = False

    def forward(self, x: Tensor) -> Tensor:
        if not (self.grad_into_param and torch.is_grad_enabled() and self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.weight.dtype
        return _LinearGradIntoParam.apply(x, self.weight, self.bias, dtype)
