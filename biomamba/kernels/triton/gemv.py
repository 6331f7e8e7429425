"""y = norm(x) · Wᵀ (+ b) for a few rows: a decode step's projections, each with the norm in front
of it fused in.

At batch 1 a decode step is launch-bound: per layer it ran RMSNorm(residual + x) → in_proj and
gated RMSNorm → out_proj as four kernels of 2–6 µs each (bench/RESULTS.md, `profile gen`). A
norm over one row of ≤ 8k channels costs next to nothing, so here every program of the GEMV
normalises the rows itself and the separate norm kernels disappear:

    PRO 0  y = x Wᵀ                                     (a plain GEMV)
    PRO 1  s = r + x;  y = RMSNorm(s) Wᵀ;  s stored     (the residual join + next block's norm + in_proj / LM head)
    PRO 2  y = RMSNorm_grouped(x · SiLU(z)) Wᵀ          (the mixer's gated norm + out_proj)

Each program owns BN output features and walks K in BK blocks, twice when there is a norm (the
sums of squares first, the product second: the rows are a few kB and stay in cache), or, when
all of K fits one block, once. The
normalised rows are rounded exactly where the reference rounds them (``reference.rmsnorm`` /
``gated_rmsnorm``), so the result is F.linear of the reference's normalised input. The product
is an fp32 multiply-and-sum: it needs no padding of the rows and no shared memory, and it beat
``tl.dot`` with rows padded to 16 in every GPU sweep (bench/RESULTS.md, calls K and L).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from biomamba.kernels.triton.common import last_unit


@triton.jit
def _norm_input(x_ptr, r_ptr, z_ptr, m, k, msk, sxm, srm, szm, PRO: tl.constexpr, HAS_RES: tl.constexpr,
                S_DT: tl.constexpr, N_DT: tl.constexpr):
    """The (BM, BK) tile the norm reads, in fp32, and for PRO 1 the sum s in its stored dtype.
    N_DT: the dtype the norm rounds to (PRO 1: its weight's, which it also reads s in; PRO 2: x's)."""
    x = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=msk, other=0.0)
    if PRO == 1:
        s = x.to(tl.float32)
        if HAS_RES:
            s = s + tl.load(r_ptr + m[:, None] * srm + k[None, :], mask=msk, other=0.0).to(tl.float32)
        s = s.to(S_DT)
        return s.to(N_DT).to(tl.float32), s  # the norm reads s in its weight's dtype
    elif PRO == 2:
        z = tl.load(z_ptr + m[:, None] * szm + k[None, :], mask=msk, other=0.0).to(tl.float32)
        t = x.to(tl.float32) * z * tl.sigmoid(z)
        return t, t
    else:
        return x.to(tl.float32), x


@triton.jit
def _times_w(acc, t, s, rstd, nw_ptr, w, k, km, PRO: tl.constexpr, N_DT: tl.constexpr, W_DT: tl.constexpr):
    """acc + (the normalised tile, rounded as the reference rounds it) · w-tileᵀ."""
    if PRO != 0:
        nw = tl.load(nw_ptr + k, mask=km, other=0.0).to(tl.float32)
        h = ((t * rstd[:, None]).to(N_DT).to(tl.float32) * nw[None, :]).to(W_DT)
    else:
        h = s.to(W_DT)
    return acc + tl.sum(h.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], 2)


@triton.jit
def _norm_gemv_kernel(x_ptr, r_ptr, z_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, s_ptr, M, N, NG, GS, eps,
                      sxm, srm, szm, swn, sym, ssm,
                      PRO: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, S_DT: tl.constexpr,
                      N_DT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      ONE_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid * BN + tl.arange(0, BN)
    m = tl.arange(0, BM)
    nm = n < N
    mm = m < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    W_DT = w_ptr.dtype.element_ty
    if ONE_BLOCK:  # one group, all of K in one block: one pass, the weight load issued first
        k = tl.arange(0, BK)
        km = k < GS
        msk = mm[:, None] & km[None, :]
        w = tl.load(w_ptr + n[:, None] * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        t, s = _norm_input(x_ptr, r_ptr, z_ptr, m, k, msk, sxm, srm, szm, PRO, HAS_RES, S_DT, N_DT)
        rstd = 1.0 / tl.sqrt(tl.sum(t * t, 1) / GS + eps)
        if PRO == 1 and HAS_RES:
            if pid == 0:  # one program stores the sum the next residual add reads
                tl.store(s_ptr + m[:, None] * ssm + k[None, :], s, mask=msk)
        acc = _times_w(acc, t, s, rstd, nw_ptr, w, k, km, PRO, N_DT, W_DT)
    else:
        for g in range(0, NG):  # one group of GS channels at a time (one group = all K but for PRO 2)
            rstd = tl.zeros((BM,), dtype=tl.float32)
            if PRO != 0:  # first the sums of squares
                for k0 in range(0, GS, BK):
                    kk = k0 + tl.arange(0, BK)
                    k = g * GS + kk
                    msk = mm[:, None] & (kk < GS)[None, :]
                    t, s = _norm_input(x_ptr, r_ptr, z_ptr, m, k, msk, sxm, srm, szm, PRO, HAS_RES, S_DT, N_DT)
                    rstd += tl.sum(t * t, 1)
                    if PRO == 1 and HAS_RES:
                        if pid == 0:
                            tl.store(s_ptr + m[:, None] * ssm + k[None, :], s, mask=msk)
                rstd = 1.0 / tl.sqrt(rstd / GS + eps)
            for k0 in range(0, GS, BK):
                kk = k0 + tl.arange(0, BK)
                k = g * GS + kk
                km = kk < GS
                msk = mm[:, None] & km[None, :]
                w = tl.load(w_ptr + n[:, None] * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
                t, s = _norm_input(x_ptr, r_ptr, z_ptr, m, k, msk, sxm, srm, szm, PRO, HAS_RES, S_DT, N_DT)
                acc = _times_w(acc, t, s, rstd, nw_ptr, w, k, km, PRO, N_DT, W_DT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + m[:, None] * sym + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mm[:, None] & nm[None, :])


# output features a program (for N ≥ 2,048 and below), the K block, warps, and the K up to which
# all of K is one block read in a single pass (0: never). From the GPU sweeps (bench/RESULTS.md,
# calls K and L): at 130M the single pass at 8 warps took 5.0 + 3.3 µs a layer against 6.5 + 8.0 for the norm kernel + cuBLAS, and decoding ran 0.434 ms/token with it.
TILES = {"BN_wide": 8, "BN_narrow": 8, "BK": 512, "warps": 8, "one_block_k": 2048}
MAX_ROWS = 16  # rows one program holds


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _launch(pro: int, x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None,
            z: Tensor | None = None, norm_weight: Tensor | None = None, eps: float = 0.0,
            group_size: int = 0, sum_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor | None]:
    M, K = x.shape
    N = weight.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"the GEMV takes at most {MAX_ROWS} rows, got {M}")
    x, weight = last_unit(x), last_unit(weight)
    r = last_unit(residual) if residual is not None else x
    zz = last_unit(z) if z is not None else x
    y = torch.empty((M, N), device=x.device, dtype=weight.dtype if pro else x.dtype)
    s = torch.empty((M, K), device=x.device, dtype=sum_dtype) if pro == 1 and residual is not None else y
    gs = group_size if pro == 2 else K
    BN = TILES["BN_wide"] if N >= 2048 else TILES["BN_narrow"]
    one_block = K // gs == 1 and K <= TILES["one_block_k"]
    BK = triton.next_power_of_2(K) if one_block else min(TILES["BK"], triton.next_power_of_2(gs))
    BM = triton.next_power_of_2(M)
    nw = norm_weight if norm_weight is not None else weight
    _norm_gemv_kernel[(triton.cdiv(N, BN),)](
        x, r, zz, nw, weight, bias if bias is not None else weight, y, s, M, N, K // gs, gs, float(eps),
        x.stride(0), r.stride(0), zz.stride(0), weight.stride(0), y.stride(0), s.stride(0),
        PRO=pro, HAS_RES=residual is not None, HAS_BIAS=bias is not None,
        S_DT=_TL[sum_dtype or x.dtype], N_DT=_TL[nw.dtype if pro == 1 else x.dtype], BM=BM, BN=BN, BK=BK,
        ONE_BLOCK=one_block, num_warps=TILES["warps"])
    return y, (s if pro == 1 and residual is not None else None)


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M ≤ 16, K), weight (N, K), bias (N,) or None, all one dtype → x Wᵀ + b (M, N)."""
    return _launch(0, x, weight, bias)[0]


def add_norm_gemv(x: Tensor, residual: Tensor | None, norm_weight: Tensor, eps: float, weight: Tensor,
                  bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(RMSNorm(s) · Wᵀ + b, s) with s = residual + x (x itself without a residual), as
    ``reference.norm_linear``; x, residual (M ≤ 16, K)."""
    if residual is None:
        return _launch(1, x, weight, bias, norm_weight=norm_weight, eps=eps)[0], x
    y, s = _launch(1, x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps,
                   sum_dtype=torch.promote_types(x.dtype, residual.dtype))
    return y, s


def gated_norm_gemv(x: Tensor, z: Tensor, norm_weight: Tensor, eps: float, group_size: int, weight: Tensor,
                    bias: Tensor | None) -> Tensor:
    """RMSNorm_grouped(x · SiLU(z)) · Wᵀ + b, as ``reference.gated_norm_linear``; x, z (M ≤ 16, K)."""
    return _launch(2, x, weight, bias, z=z, norm_weight=norm_weight, eps=eps, group_size=group_size)[0]
