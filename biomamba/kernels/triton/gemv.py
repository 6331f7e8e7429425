"""y = x · Wᵀ (+ b) for a few rows: the in/out projections of a decode step.

At batch 1 a decode step's two projections are matrix-vector products that only stream the
weight. cuBLAS took 5.7 and 4.2 µs a layer for them at 130M on an H200 (bench/RESULTS.md,
`profile gen`), about 0.9 and 0.6 TB/s of weight traffic. Here a program owns BN output
features and walks K in BK blocks: the rows of x are padded to 16 for ``tl.dot`` (the padding
costs no memory traffic, only idle tensor-core lanes), and the weight tile is read once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from biomamba.kernels.triton.common import dot, input_precision, last_unit


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, swn, sym,
                 HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IP: tl.constexpr):
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m = tl.arange(0, BM)
    nm = n < N
    mm = m < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        x = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=mm[:, None] & km[None, :], other=0.0)
        w = tl.load(w_ptr + n[:, None] * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        acc += dot(x, tl.trans(w), IP)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + m[:, None] * sym + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mm[:, None] & nm[None, :])


# output features a program, the K block, warps: a guess until the GPU sweep (`sweep gemv`)
TILES = {"BN": 16, "BK": 256, "warps": 4}
MAX_ROWS = 16  # rows one program holds (tl.dot's smallest M)


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M ≤ 16, K), weight (N, K), bias (N,) or None, all one dtype → (M, N)."""
    M, K = x.shape
    N = weight.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {M}")
    x, weight = last_unit(x), last_unit(weight)
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    BN, BK = TILES["BN"], min(TILES["BK"], triton.next_power_of_2(K))
    _gemv_kernel[(triton.cdiv(N, BN),)](
        x, weight, bias if bias is not None else weight, y, M, N, K, x.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BM=MAX_ROWS, BN=BN, BK=BK, IP=input_precision(x.dtype), num_warps=TILES["warps"])
    return y
