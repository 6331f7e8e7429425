"""RMSNorm, optionally gated (x·SiLU(z) normalised over groups of channels), forward/backward.

Rows are flattened leading dimensions; program (row block, group) owns BM rows × one group's
channels, so a group of any size (not only powers of two) is one masked tile. The weight
gradient is written as one partial row per program and summed afterwards (deterministic).
Semantics follow ``reference.gated_rmsnorm``: the normalised value is rounded to the input
dtype before the weight multiplies it; the output is stored in the dtype the caller asks for
(the promoted dtype of x and weight, or the autocast dtype: see ``biomamba.kernels.triton``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from biomamba.kernels.triton.common import last_unit, row_divisor, row_offsets, sum_rows


@triton.jit
def _rms_scaled(xf, w, G, eps, IN_DTYPE: tl.constexpr):
    """(xf · rstd rounded to the input dtype) · w over rows of G channels, and rstd (fp32)."""
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / G + eps)
    n = (xf * rstd[:, None]).to(IN_DTYPE).to(tl.float32)
    return n * w[None, :], rstd


@triton.jit
def _norm_fwd_kernel(x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr, M, G, NG, eps, sxm, szm, sym,
                     HAS_Z: tl.constexpr, BM: tl.constexpr, BG: tl.constexpr, XV: tl.constexpr,
                     ZV: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    g = tl.program_id(1)
    cols = tl.arange(0, BG)
    rm = rows < M
    cm = cols < G
    m = rm[:, None] & cm[None, :]
    ch = g * G + cols
    x = tl.load(x_ptr + row_offsets(rows, sxm, XV) + ch[None, :], mask=m, other=0.0)
    xf = x.to(tl.float32)
    if HAS_Z:  # z is a view of in_proj's output: its row stride needs the hint (common.py)
        z = tl.load(z_ptr + row_offsets(rows, szm, ZV) + ch[None, :], mask=m, other=0.0).to(tl.float32)
        xf = xf * z * tl.sigmoid(z)
    w = tl.load(w_ptr + ch, mask=cm, other=0.0).to(tl.float32)
    y, rstd = _rms_scaled(xf, w, G, eps, x.dtype)
    tl.store(y_ptr + rows[:, None] * sym + ch[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(rstd_ptr + rows * NG + g, rstd, mask=rm)


@triton.jit
def _norm_bwd_load(x_ptr, z_ptr, dy_ptr, dr_ptr, rows, m, ch, sxm, szm, sdym, sdrm, HAS_Z: tl.constexpr,
                   HAS_DR: tl.constexpr, XV: tl.constexpr, ZV: tl.constexpr, DV: tl.constexpr):
    x = tl.load(x_ptr + row_offsets(rows, sxm, XV) + ch[None, :], mask=m, other=0.0)
    z = x
    if HAS_Z:
        z = tl.load(z_ptr + row_offsets(rows, szm, ZV) + ch[None, :], mask=m, other=0.0)
    dy = tl.load(dy_ptr + row_offsets(rows, sdym, DV) + ch[None, :], mask=m, other=0.0)
    dr = dy.to(tl.float32)  # unused without HAS_DR
    if HAS_DR:
        dr = tl.load(dr_ptr + rows[:, None] * sdrm + ch[None, :], mask=m, other=0.0).to(tl.float32)
    return x, z, dy, dr


@triton.jit
def _norm_bwd_kernel(x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dr_ptr, dx_ptr, dz_ptr, dw_ptr, M, G, NG,
                     sxm, szm, sdym, sdrm, sdxm, sdzm, rows_per_prog,
                     HAS_Z: tl.constexpr, JOIN: tl.constexpr, HAS_DR: tl.constexpr, CAST_X: tl.constexpr,
                     BM: tl.constexpr,
                     BG: tl.constexpr, XV: tl.constexpr, ZV: tl.constexpr, DV: tl.constexpr,
                     PREFETCH: tl.constexpr):
    """A program walks its rows BM at a time; with PREFETCH it loads the next block's rows before
    working on the current one, so that their latency overlaps the row reductions (a loop
    without a dot is not software-pipelined by Triton).
    JOIN, the residual join's backward (``add_norm_bwd``): the norm input's gradient (plus, with
    HAS_DR, the one arriving through the residual stream) is stored twice, in dx's dtype (for the
    block's output) and in dz's (for the residual before it); CAST_X reads x in w's dtype, as
    the forward normalised it."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    cols = tl.arange(0, BG)
    cm = cols < G
    ch = g * G + cols
    w = tl.load(w_ptr + ch, mask=cm, other=0.0).to(tl.float32)
    dw = tl.zeros((BG,), dtype=tl.float32)
    start = pid * rows_per_prog
    end = tl.minimum(start + rows_per_prog, M)
    rows = start + tl.arange(0, BM)
    m = (rows < end)[:, None] & cm[None, :]
    if PREFETCH:
        x_in, z_in, dy_in, dr_in = _norm_bwd_load(x_ptr, z_ptr, dy_ptr, dr_ptr, rows, m, ch, sxm, szm, sdym, sdrm,
                                                  HAS_Z, HAS_DR, XV, ZV, DV)
    for r0 in range(start, start + rows_per_prog, BM):
        rows = r0 + tl.arange(0, BM)
        rm = rows < end
        m = rm[:, None] & cm[None, :]
        if PREFETCH:
            x, z, dy, dr = x_in, z_in, dy_in, dr_in
            nxt = rows + BM
            x_in, z_in, dy_in, dr_in = _norm_bwd_load(x_ptr, z_ptr, dy_ptr, dr_ptr, nxt,
                                                      (nxt < end)[:, None] & cm[None, :], ch, sxm, szm, sdym, sdrm,
                                                      HAS_Z, HAS_DR, XV, ZV, DV)
        else:
            x, z, dy, dr = _norm_bwd_load(x_ptr, z_ptr, dy_ptr, dr_ptr, rows, m, ch, sxm, szm, sdym, sdrm,
                                          HAS_Z, HAS_DR, XV, ZV, DV)
        if CAST_X:
            x = x.to(w_ptr.dtype.element_ty)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        if HAS_Z:
            z = z.to(tl.float32)
            sz = tl.sigmoid(z)
            xg = x * z * sz
        else:
            xg = x
        rstd = tl.load(rstd_ptr + rows * NG + g, mask=rm, other=0.0)
        n = xg * rstd[:, None]
        dw += tl.sum(dy * n, 0)
        dn = dy * w[None, :]
        dxg = rstd[:, None] * (dn - n * (tl.sum(dn * n, 1) / G)[:, None])
        if HAS_Z:
            tl.store(dx_ptr + rows[:, None] * sdxm + ch[None, :], (dxg * z * sz).to(dx_ptr.dtype.element_ty), mask=m)
            dz = dxg * x * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + rows[:, None] * sdzm + ch[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m)
        else:
            if HAS_DR:
                dxg += dr
            tl.store(dx_ptr + rows[:, None] * sdxm + ch[None, :], dxg.to(dx_ptr.dtype.element_ty), mask=m)
            if JOIN:
                tl.store(dz_ptr + rows[:, None] * sdzm + ch[None, :], dxg.to(dz_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + pid * NG * G + ch, dw, mask=cm)


@triton.jit
def _add_norm_fwd_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, rstd_ptr, M, D, eps, sxm, srm, BM: tl.constexpr,
                         BD: tl.constexpr):
    """s = r + x (stored in s's dtype), y = RMSNorm(s read in w's dtype) · w: the residual join of
    a pre-norm block and the next block's norm in one pass (the add alone was 2.97 ms of a 1.3B
    training step, session 9 profile; a decode step otherwise spends three kernels on it)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    rm = rows < M
    m = rm[:, None] & (cols < D)[None, :]
    total = tl.load(r_ptr + rows[:, None] * srm + cols[None, :], mask=m, other=0.0).to(tl.float32) \
        + tl.load(x_ptr + rows[:, None] * sxm + cols[None, :], mask=m, other=0.0).to(tl.float32)
    total = total.to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + rows[:, None] * D + cols[None, :], total, mask=m)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    y, rstd = _rms_scaled(total.to(w_ptr.dtype.element_ty).to(tl.float32), w, D, eps, w_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(rstd_ptr + rows, rstd, mask=rm)


def add_norm_fwd(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                 out_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(the normed sum in ``out_dtype``, default weight's; the sum; its reciprocal RMS per row)."""
    d = x.shape[-1]
    x2, r2 = _rows(x, d), _rows(residual, d)
    M = x2.shape[0]
    total = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, residual.dtype))
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype or weight.dtype)
    rstd = torch.empty((M, 1), device=x.device, dtype=torch.float32)
    BD = triton.next_power_of_2(d)
    BM = _bm(d)
    _add_norm_fwd_kernel[(triton.cdiv(M, BM),)](x2, r2, weight, y, total, rstd, M, d, eps, x2.stride(0),
                                               r2.stride(0), BM=BM, BD=BD, num_warps=4 if BD <= 1024 else 8)
    return y, total, rstd


def _rows(t: Tensor, d: int) -> Tensor:
    return last_unit(t.reshape(-1, d))


def _bm(G: int) -> int:
    return max(1, min(16, 4096 // triton.next_power_of_2(G)))


def norm_fwd(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int,
             out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    d = x.shape[-1]
    x2 = _rows(x, d)
    z2 = _rows(z, d) if z is not None else x2
    M, NG, G = x2.shape[0], d // group_size, group_size
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    rstd = torch.empty((M, NG), device=x.device, dtype=torch.float32)
    BG, BM = triton.next_power_of_2(G), _bm(G)
    _norm_fwd_kernel[(triton.cdiv(M, BM), NG)](
        x2, z2, weight, y, rstd, M, G, NG, eps, x2.stride(0), z2.stride(0), d,
        HAS_Z=z is not None, BM=BM, BG=BG, XV=row_divisor(x2.stride(0)), ZV=row_divisor(z2.stride(0)),
        num_warps=4 if BG <= 1024 else 8)
    return y, rstd


# Backward launch: at most "programs" programs (each walks its rows BM at a time and writes one
# partial weight-gradient row), "warps" a program (None: by the group's padded width, below),
# "stages" the loop's software pipelining (None: Triton's default), "prefetch" whether a program
# loads its next rows before working on the current ones, "tile" the elements of a row block
# (rows × the padded group width: BM = tile // BG, at least 1). Module-level for
# ``bench/gpu_bench.py sweep norm_bwd``. The defaults, from 9 launches at the 130M and 1.3B
# training shapes (H200, session 6 call 2, kernel µs, old defaults → these): 1.3B gated 204 → 100,
# 130M gated 145 → 84 (the memory floor: 70 and 52), the block norms 50 → 49 and 35 → 33.
BWD_LAUNCH = {"programs": 512, "warps": None, "stages": None, "prefetch": True, "tile": 2048}


def _bwd_warps(BG: int) -> int:
    """16 warps for a 4,096-wide group (the 1.3B gated norm: 204 → 132 µs, 16 against 8, session 6
    call 1); they made the 2,048-wide ones slower (130M gated 145 → 221 µs, 1.3B block norm 50 → 123)."""
    return 4 if BG <= 1024 else 8 if BG <= 2048 else 16


def _launch_bwd(dy: Tensor, x2: Tensor, z2: Tensor | None, weight: Tensor, rstd: Tensor, group_size: int,
                dx: Tensor, dz: Tensor, join: bool = False, dres: Tensor | None = None,
                cast_x: bool = False) -> Tensor:
    """The backward kernel over rows x2 (rows × d): writes dx, and dz (the gate's gradient; with
    ``join``, dx again in dz's dtype, after adding ``dres`` if given); returns dweight."""
    d = x2.shape[-1]
    dy2 = _rows(dy, d)
    dr2 = _rows(dres, d) if dres is not None else dy2
    M, NG, G = x2.shape[0], d // group_size, group_size
    BG = triton.next_power_of_2(G)
    BM = max(1, min(16, BWD_LAUNCH["tile"] // BG))
    nprog = min(triton.cdiv(M, BM), BWD_LAUNCH["programs"])
    rows_per_prog = triton.cdiv(triton.cdiv(M, nprog), BM) * BM
    nprog = triton.cdiv(M, rows_per_prog)
    dw_part = torch.empty((nprog, d), device=x2.device, dtype=torch.float32)
    zz = z2 if z2 is not None else x2
    _norm_bwd_kernel[(nprog, NG)](
        x2, zz, weight, rstd, dy2, dr2, dx, dz, dw_part, M, G, NG, x2.stride(0), zz.stride(0), dy2.stride(0),
        dr2.stride(0), d, dz.stride(0), rows_per_prog, HAS_Z=z2 is not None, JOIN=join,
        HAS_DR=dres is not None, CAST_X=cast_x, BM=BM, BG=BG, XV=row_divisor(x2.stride(0)), ZV=row_divisor(zz.stride(0)),
        DV=row_divisor(dy2.stride(0)), PREFETCH=BWD_LAUNCH["prefetch"],
        num_warps=BWD_LAUNCH["warps"] or _bwd_warps(BG),
        **({} if BWD_LAUNCH["stages"] is None else {"num_stages": BWD_LAUNCH["stages"]}))
    return sum_rows(dw_part, weight.dtype)


def norm_bwd(dy: Tensor, x: Tensor, z: Tensor | None, weight: Tensor, rstd: Tensor,
             group_size: int, dz_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """dx, dz, dweight; ``dz_out`` (rows × d, unit last stride): where dz goes (a slice of a larger
    gradient buffer), else a new tensor."""
    d = x.shape[-1]
    x2 = _rows(x, d)
    z2 = _rows(z, d) if z is not None else None
    M = x2.shape[0]
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if z is None:
        dz = dx
    else:
        dz = dz_out if dz_out is not None else torch.empty((M, d), device=x.device, dtype=z.dtype)
    dw = _launch_bwd(dy, x2, z2, weight, rstd, group_size, dx, dz)
    if z is not None and dz_out is None:
        dz = dz.view(z.shape)
    return dx, dz, dw


def add_norm_bwd(dy: Tensor, dtotal: Tensor | None, total: Tensor, weight: Tensor, rstd: Tensor,
                 x_dtype: torch.dtype, res_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The residual join's backward: the gradient of the sum (the norm's, plus ``dtotal`` arriving
    through the residual stream) in ``x_dtype`` (the block output's) and in ``res_dtype`` (the
    residual's), one kernel; and dweight."""
    d = total.shape[-1]
    total2 = _rows(total, d)
    dx = torch.empty(total.shape, device=total.device, dtype=x_dtype)
    dres = torch.empty(total2.shape, device=total.device, dtype=res_dtype)  # rows × d: the kernel's dz
    dw = _launch_bwd(dy, total2, None, weight, rstd, d, dx, dres, join=True, dres=dtotal,
                     cast_x=total.dtype != weight.dtype)
    return dx, dres.view(total.shape), dw
