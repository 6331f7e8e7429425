"""Helpers the kernels share: matrix products that survive the CPU interpreter, alignment hints
for row offsets whose divisibility Triton cannot prove by itself, and the sum of a kernel's
per-program partial rows.

Alignment: Triton vectorises a tile load (8 bf16 at a time, PTX ld.global.v4.b32) only when it can prove
that each row starts on a 16-byte boundary. It learns that from integer arguments divisible by
16, so a row stride such as in_proj's output width at 130M (3,352 = 8 · 419) makes it load every
element on its own (ld.global.b16). The host knows the real divisor and passes it as a
constexpr; ``row_offsets`` hands it to the compiler (tests/test_kernels_codegen.py checks the PTX).
"""

import os

import torch
import triton
import triton.language as tl


@triton.jit
def dot(a, b, IP: tl.constexpr):
    """Matrix product with fp32 accumulation; IP "interp" upcasts the operands (Triton's CPU
    interpreter computes bf16 dots wrongly, seen with triton 3.9)."""
    if IP == "interp":
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b, input_precision=IP)


def input_precision(dtype: torch.dtype) -> str:
    """``dot``'s IP for operands of ``dtype``: exact fp32 products for fp32, the interpreter's mode
    under TRITON_INTERPRET=1."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "interp"
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def row_offsets(rows, stride, V: tl.constexpr):
    """rows[:, None] · stride, each a multiple of V (V divides stride: the caller guarantees it).
    The product is formed here: the hint attaches to the op that makes a value, so hinting a
    value passed in as an argument would be silently lost."""
    off = rows * stride
    if V > 1:  # a hint of 1 would discard divisibility the compiler proved itself
        # on the 1-D product: a 2-D hint on a (1, 1) tile (one row a program, e.g. the gated
        # norm's 4,096-channel groups at 1.3B) crashes Triton 3.6's coalescing pass
        off = tl.multiple_of(off, V)
    return off[:, None]


def last_unit(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension has unit stride (what the kernels index by), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def row_divisor(*strides: int) -> int:
    """The largest power of two ≤ 16 dividing every stride: what ``row_offsets`` may be told."""
    v = 16
    while v > 1 and any(s % v for s in strides):
        v //= 2
    return v


@triton.jit
def _sum_rows_kernel(x_ptr, y_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    cm = cols < C
    acc = tl.zeros((BR, BC), dtype=tl.float32)
    for r0 in range(0, R, BR):
        rows = r0 + tl.arange(0, BR)
        acc += tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=(rows < R)[:, None] & cm[None, :], other=0.0)
    tl.store(y_ptr + cols, tl.sum(acc, 0).to(y_ptr.dtype.element_ty), mask=cm)


def sum_rows(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σ over the rows of ``part`` (R, …; fp32, contiguous), in ``dtype``: the weight gradients'
    partial rows (one a program). torch's sum over the first dim of a (512, 4,096) fp32 tensor took
    19 µs on an H200 (session 9 profile, 97 a 1.3B step); this reads it in column blocks, in a
    fixed order (deterministic)."""
    R = part.shape[0]
    out = torch.empty(part.shape[1:], device=part.device, dtype=dtype)
    C = out.numel()
    BC = 64 if C >= 4096 else 32
    _sum_rows_kernel[(triton.cdiv(C, BC),)](part, out, R, C, BR=32, BC=BC, num_warps=4)
    return out
