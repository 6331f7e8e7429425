"""Depthwise causal conv1d (+SiLU, document boundaries) forward/backward, and its decode step.

Channels last: x (b, l, d) with any batch/time strides and unit channel stride. The forward and
the generic backward: one program owns a (time block × channel block) tile and reads the k taps
as k shifted loads of it; the backward recomputes the pre-activation for the k positions each
input feeds, so nothing but the inputs is saved. The width-4 backward (every Mamba checkpoint's
width) walks its positions row by row instead, keeping the last rows in registers. (The tile
kernel it replaced held all seven shifted tiles at once, 255 registers a thread: 398 µs a call at
130M against the row walk's 91.5, bench/RESULTS.md session 5 call B.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from biomamba.kernels.triton.common import last_unit, row_divisor, row_offsets, sum_rows


@triton.jit
def _tap(x_ptr, seq_ptr, pb, u, sq, s: tl.constexpr, c, cm, L, sxb, sxl, ssb, ssl, HAS_SEQ: tl.constexpr,
         BL: tl.constexpr, BD: tl.constexpr, XV: tl.constexpr):
    """x[u − s] as fp32 (BL, BD), zero before the start, past the end, or in another document than sq."""
    us = u - s
    m = (us >= 0) & (u < L)
    if HAS_SEQ:
        if s > 0:
            sqs = tl.load(seq_ptr + pb * ssb + us * ssl, mask=m, other=-1)
            m = m & (sqs == sq)
    return tl.load(x_ptr + pb * sxb + row_offsets(us, sxl, XV) + c[None, :], mask=m[:, None] & cm[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, pb, u, c, cm, L, sxb, sxl, swd, swk, ssb, ssl,
            K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
            XV: tl.constexpr):
    """Pre-activation at positions u (BL,) and channels c (BD,): bias + Σ_s w[k-1-s] x[u-s]."""
    acc = tl.zeros((BL, BD), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    sq = u  # unused unless HAS_SEQ
    if HAS_SEQ:
        sq = tl.load(seq_ptr + pb * ssb + u * ssl, mask=(u >= 0) & (u < L), other=0)
    for s in tl.static_range(K):
        xv = _tap(x_ptr, seq_ptr, pb, u, sq, s, c, cm, L, sxb, sxl, ssb, ssl, HAS_SEQ, BL, BD, XV)
        wv = tl.load(w_ptr + c * swd + (K - 1 - s) * swk, mask=cm, other=0.0).to(tl.float32)
        acc += xv * wv[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, y_ptr, L, D, sxb, sxl, swd, swk, ssb, ssl, syb, syl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                     BL: tl.constexpr, BD: tl.constexpr, XV: tl.constexpr, YV: tl.constexpr):
    pb = tl.program_id(0)
    t = tl.program_id(1) * BL + tl.arange(0, BL)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cm = c < D
    acc = _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, pb, t, c, cm, L, sxb, sxl, swd, swk, ssb, ssl,
                  K, HAS_BIAS, HAS_SEQ, BL, BD, XV)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + pb * syb + row_offsets(t, syl, YV) + c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & cm[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, D,
                     sxb, sxl, swd, swk, ssb, ssl, sdyb, sdyl, sdxb, sdxl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                     BL: tl.constexpr, BD: tl.constexpr, XV: tl.constexpr, DV: tl.constexpr):
    pb = tl.program_id(0)
    pl = tl.program_id(1)
    t = pl * BL + tl.arange(0, BL)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cm = c < D
    tm = t < L
    sq = t  # unused unless HAS_SEQ
    if HAS_SEQ:
        sq = tl.load(seq_ptr + pb * ssb + t * ssl, mask=tm, other=0)
    dx = tl.zeros((BL, BD), dtype=tl.float32)
    for j in tl.static_range(K):  # the output at u = t + j reads x[t] through tap k-1-j
        u = t + j
        um = u < L
        dyu = tl.load(dy_ptr + pb * sdyb + row_offsets(u, sdyl, DV) + c[None, :], mask=um[:, None] & cm[None, :],
                      other=0.0).to(tl.float32)
        if SILU:
            a = _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, pb, u, c, cm, L, sxb, sxl, swd, swk, ssb, ssl,
                        K, HAS_BIAS, HAS_SEQ, BL, BD, XV)
            sg = tl.sigmoid(a)
            da = dyu * sg * (1.0 + a * (1.0 - sg))
        else:
            da = dyu
        if j == 0:
            # weight / bias gradients from the outputs this program owns
            if HAS_BIAS:
                tl.store(db_ptr + (pb * tl.num_programs(1) + pl) * D + c, tl.sum(da, 0), mask=cm)
            for s in tl.static_range(K):
                xv = _tap(x_ptr, seq_ptr, pb, t, sq, s, c, cm, L, sxb, sxl, ssb, ssl, HAS_SEQ, BL, BD, XV)
                tl.store(dw_ptr + ((pb * tl.num_programs(1) + pl) * K + (K - 1 - s)) * D + c,
                         tl.sum(da * xv, 0), mask=cm)
        m = um & tm
        if HAS_SEQ:
            if j > 0:
                squ = tl.load(seq_ptr + pb * ssb + u * ssl, mask=um, other=-1)
                m = m & (squ == sq)
        wv = tl.load(w_ptr + c * swd + (K - 1 - j) * swk, mask=cm, other=0.0).to(tl.float32)
        dx += tl.where(m[:, None], da * wv[None, :], 0.0)
    tl.store(dx_ptr + pb * sdxb + t[:, None] * sdxl + c[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=tm[:, None] & cm[None, :])


@triton.jit
def _row(ptr, pb, u, c, cm, L, sb, sl, V: tl.constexpr):
    """Row u of a (b, L, D) tensor at channels c as fp32 (BD,), zero outside [0, L)."""
    off = pb * sb + u * sl
    if V > 1:
        off = tl.multiple_of(off, V)
    uc = u + tl.zeros_like(c)  # a row-wide mask (the interpreter rejects a scalar one beside cm)
    return tl.load(ptr + off + c, mask=cm & (uc >= 0) & (uc < L), other=0.0).to(tl.float32)


@triton.jit
def _conv4_bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, D,
                      sxb, sxl, swd, swk, ssb, ssl, sdyb, sdyl, sdxb, sdxl,
                      HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                      BL: tl.constexpr, BD: tl.constexpr, XV: tl.constexpr, DV: tl.constexpr):
    """The backward for width 4 (every Mamba checkpoint) as a row walk: a program walks its BL
    positions one row of BD channels at a time, holding the last three rows of x and of the
    activation gradient in registers, so every row of x and dy is read once (plus three rows of
    halo) and a thread keeps a few values a channel. Step u recomputes a[u] from x[u−3 … u], forms
    da[u], adds its weight-gradient terms (u in the block), and finishes dx[u−3].
    It replaced a tile kernel that loaded the seven shifted tiles x[t−3 … t+3] at once: 255
    registers a thread at 64 × 32, so two programs an SM to hide memory latency with; this one
    takes 106 and ran 4× faster (398 → 91 µs at 130M, 481 → 118 µs at 1.3B, bench/RESULTS.md,
    session 5 call B)."""
    pb = tl.program_id(0)
    pl = tl.program_id(1)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cm = c < D
    t0 = pl * BL
    w0 = tl.load(w_ptr + c * swd + 0 * swk, mask=cm, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + c * swd + 1 * swk, mask=cm, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + c * swd + 2 * swk, mask=cm, other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + c * swd + 3 * swk, mask=cm, other=0.0).to(tl.float32)
    bias = tl.zeros((BD,), dtype=tl.float32)
    if HAS_BIAS:
        bias += tl.load(bias_ptr + c, mask=cm, other=0.0).to(tl.float32)
    # x at u−1, u−2, u−3 and their documents (−1 before the start: never equal), da at u−1 … u−3
    xm1 = _row(x_ptr, pb, t0 - 1, c, cm, L, sxb, sxl, XV)
    xm2 = _row(x_ptr, pb, t0 - 2, c, cm, L, sxb, sxl, XV)
    xm3 = _row(x_ptr, pb, t0 - 3, c, cm, L, sxb, sxl, XV)
    if HAS_SEQ:
        dm1 = tl.load(seq_ptr + pb * ssb + (t0 - 1) * ssl, mask=t0 >= 1, other=-1)
        dm2 = tl.load(seq_ptr + pb * ssb + (t0 - 2) * ssl, mask=t0 >= 2, other=-1)
        dm3 = tl.load(seq_ptr + pb * ssb + (t0 - 3) * ssl, mask=t0 >= 3, other=-1)
    gm1 = tl.zeros((BD,), dtype=tl.float32)
    gm2 = tl.zeros((BD,), dtype=tl.float32)
    gm3 = tl.zeros((BD,), dtype=tl.float32)
    dw0 = tl.zeros((BD,), dtype=tl.float32)
    dw1 = tl.zeros((BD,), dtype=tl.float32)
    dw2 = tl.zeros((BD,), dtype=tl.float32)
    dw3 = tl.zeros((BD,), dtype=tl.float32)
    db = tl.zeros((BD,), dtype=tl.float32)
    x_next = _row(x_ptr, pb, t0, c, cm, L, sxb, sxl, XV)  # one row ahead: its load overlaps a step
    dy_next = _row(dy_ptr, pb, t0, c, cm, L, sdyb, sdyl, DV)
    for u in range(t0, t0 + BL + 3):
        xu = x_next
        dyu = dy_next
        x_next = _row(x_ptr, pb, u + 1, c, cm, L, sxb, sxl, XV)
        dy_next = _row(dy_ptr, pb, u + 1, c, cm, L, sdyb, sdyl, DV)
        if HAS_SEQ:
            du = tl.load(seq_ptr + pb * ssb + u * ssl, mask=u < L, other=-2)
            t1 = tl.where(dm1 == du, xm1, 0.0)
            t2 = tl.where(dm2 == du, xm2, 0.0)
            t3 = tl.where(dm3 == du, xm3, 0.0)
        else:
            t1 = xm1
            t2 = xm2
            t3 = xm3
        a = bias + w3 * xu + w2 * t1 + w1 * t2 + w0 * t3
        g = dyu
        if SILU:
            sg = tl.sigmoid(a)
            g = dyu * sg * (1.0 + a * (1.0 - sg))
        if u < t0 + BL:  # an output of this block: its weight and bias gradient terms
            dw3 += g * xu
            dw2 += g * t1
            dw1 += g * t2
            dw0 += g * t3
            db += g
        if u >= t0 + 3:  # dx[s], s = u − 3: the outputs at s … u that read x[s], in its document
            s_ = u - 3
            if HAS_SEQ:
                dx = w3 * gm3 + w2 * tl.where(dm2 == dm3, gm2, 0.0) + w1 * tl.where(dm1 == dm3, gm1, 0.0) \
                    + w0 * tl.where(du == dm3, g, 0.0)
            else:
                dx = w3 * gm3 + w2 * gm2 + w1 * gm1 + w0 * g
            tl.store(dx_ptr + pb * sdxb + s_ * sdxl + c, dx.to(dx_ptr.dtype.element_ty),
                     mask=cm & (s_ + tl.zeros_like(c) < L))
        xm3 = xm2
        xm2 = xm1
        xm1 = xu
        gm3 = gm2
        gm2 = gm1
        gm1 = g
        if HAS_SEQ:
            dm3 = dm2
            dm2 = dm1
            dm1 = du
    part = (pb * tl.num_programs(1) + pl) * 4
    tl.store(dw_ptr + (part + 3) * D + c, dw3, mask=cm)
    tl.store(dw_ptr + (part + 2) * D + c, dw2, mask=cm)
    tl.store(dw_ptr + (part + 1) * D + c, dw1, mask=cm)
    tl.store(dw_ptr + (part + 0) * D + c, dw0, mask=cm)
    if HAS_BIAS:
        tl.store(db_ptr + (pb * tl.num_programs(1) + pl) * D + c, db, mask=cm)


# (time block, channel block, warps) per kernel, from sweeps on an H200 (bench/RESULTS.md): the
# forward's best was 16 × 128 at 130M; the generic backward spilled at 64 × 128 (1.68 ms) and
# takes 64 × 32. The width-4 backward ("bwd4": positions a program walks, channels, warps), of
# 8 blockings (session 5 call B): 64 × 256 with 2 warps 134 µs at 1.3B (64 × 512: 136; 128 ×
# 512: 151) and 115 µs at 130M (128 × 512: 101). A module-level table so that a benchmark can sweep it.
BLOCKS = {"fwd": (16, 128, 4), "bwd": (64, 32, 4), "bwd4": (64, 256, 2)}
# the backward at width 4: "width4" (the row walk) or "generic" (the any-width one, for A/B timing);
# other widths always run the generic one
BWD_KERNEL = "width4"


def _blocks(kind: str, L: int, D: int) -> tuple[int, int, int]:
    bl, bd, warps = BLOCKS[kind]
    return min(bl, triton.next_power_of_2(max(L, 1))), min(bd, triton.next_power_of_2(D)), warps


def conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None, silu: bool) -> Tensor:
    x = last_unit(x)
    b, L, D = x.shape
    K = weight.shape[-1]
    y = torch.empty((b, L, D), device=x.device, dtype=x.dtype)
    BL, BD, warps = _blocks("fwd", L, D)
    seq = seq_idx if seq_idx is not None else x
    _conv_fwd_kernel[(b, triton.cdiv(L, BL), triton.cdiv(D, BD))](
        x, weight, bias if bias is not None else weight, seq, y, L, D, x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1), seq.stride(0) if seq_idx is not None else 0,
        seq.stride(1) if seq_idx is not None else 0, y.stride(0), y.stride(1),
        K=K, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, BL=BL, BD=BD,
        XV=row_divisor(x.stride(0), x.stride(1)), YV=row_divisor(y.stride(0), y.stride(1)),
        num_warps=warps)
    return y


def conv_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None,
             silu: bool, dx_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """dx, dweight, dbias; ``dx_out`` (b, L, D), unit last stride: where dx goes, else a new tensor."""
    x, dy = last_unit(x), last_unit(dy)
    b, L, D = x.shape
    K = weight.shape[-1]
    if BWD_KERNEL not in ("width4", "generic"):
        raise ValueError(f"BWD_KERNEL {BWD_KERNEL!r}: not width4 or generic")
    width4 = K == 4 and BWD_KERNEL == "width4"
    BL, BD, warps = _blocks("bwd4" if width4 else "bwd", L, D)
    nl = triton.cdiv(L, BL)
    dx = dx_out if dx_out is not None else torch.empty((b, L, D), device=x.device, dtype=x.dtype)
    dw_part = torch.empty((b * nl, K, D), device=x.device, dtype=torch.float32)
    db_part = torch.empty((b * nl, D), device=x.device, dtype=torch.float32)  # written whole when there is a bias
    seq = seq_idx if seq_idx is not None else x
    args = (x, weight, bias if bias is not None else weight, seq, dy, dx, dw_part, db_part, L, D,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            seq.stride(0) if seq_idx is not None else 0, seq.stride(1) if seq_idx is not None else 0,
            dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1))
    flags = dict(HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu, BL=BL, BD=BD,
                 XV=row_divisor(x.stride(0), x.stride(1)), DV=row_divisor(dy.stride(0), dy.stride(1)),
                 num_warps=warps)
    if width4:
        _conv4_bwd_kernel[(b, nl, triton.cdiv(D, BD))](*args, **flags)
    else:
        _conv_bwd_kernel[(b, nl, triton.cdiv(D, BD))](*args, K=K, **flags)
    # (D, K) contiguous, as the op's fake implementation promises (Inductor asserts the strides)
    dw = sum_rows(dw_part, weight.dtype).t().contiguous()
    # without a bias its gradient is not wanted (autograd gets None): an unfilled placeholder
    db = sum_rows(db_part, bias.dtype) if bias is not None else weight.new_empty(D)
    return dx, dw, db


# ---- decode step ----------------------------------------------------------------------------

@triton.jit
def conv_window(cs_ptr, xin_ptr, w_ptr, bias_ptr, pb, ch, chm, scb, scd, sck, sxb, swd, swk, K: tl.constexpr,
                KP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """One decode step of the causal conv for channels ch: the new window (channels × K, the
    state's dtype: the old one shifted by one, the input last) and the output w · window + bias
    (SiLU'd with SILU) rounded to the input's dtype, as fp32. Nothing is written: a caller that
    stores the window must first make every thread's reads of the old one precede it."""
    k = tl.arange(0, KP)
    rows = cs_ptr + pb * scb + ch[:, None] * scd
    old = tl.load(rows + (k[None, :] + 1) * sck, mask=chm[:, None] & (k[None, :] + 1 < K), other=0.0)
    xin = tl.load(xin_ptr + pb * sxb + ch, mask=chm, other=0.0).to(old.dtype)
    new = tl.where(k[None, :] == K - 1, xin[:, None], old)
    w = tl.load(w_ptr + ch[:, None] * swd + k[None, :] * swk, mask=chm[:, None] & (k[None, :] < K), other=0.0)
    acc = tl.sum(new.to(tl.float32) * w.to(tl.float32), 1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch, mask=chm, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return new, acc.to(xin_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def store_window(cs_ptr, pb, ch, chm, scb, scd, sck, window, K: tl.constexpr, KP: tl.constexpr):
    """Write conv_window's new window for channels ch."""
    k = tl.arange(0, KP)
    tl.store(cs_ptr + pb * scb + ch[:, None] * scd + k[None, :] * sck, window, mask=chm[:, None] & (k[None, :] < K))


@triton.jit
def _conv_step_kernel(state_ptr, x_ptr, w_ptr, bias_ptr, y_ptr, D, ssb, ssd, ssk, sxb, swd, swk, syb,
                      K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                      BD: tl.constexpr):
    pb = tl.program_id(0)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = c < D
    new, y = conv_window(state_ptr, x_ptr, w_ptr, bias_ptr, pb, c, cm, ssb, ssd, ssk, sxb, swd, swk, K, KP,
                         HAS_BIAS, SILU)
    tl.debug_barrier()  # every read of the old state precedes the writes (windows overlap across threads)
    store_window(state_ptr, pb, c, cm, ssb, ssd, ssk, new, K, KP)
    tl.store(y_ptr + pb * syb + c, y.to(y_ptr.dtype.element_ty), mask=cm)


def conv_step_(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    b, D, K = conv_state.shape
    y = torch.empty((b, D), device=x.device, dtype=x.dtype)
    BD = min(256, triton.next_power_of_2(D))
    _conv_step_kernel[(b, triton.cdiv(D, BD))](
        conv_state, x, weight, bias if bias is not None else weight, y, D,
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), x.stride(0),
        weight.stride(0), weight.stride(1), y.stride(0),
        K=K, KP=triton.next_power_of_2(K), HAS_BIAS=bias is not None, SILU=silu, BD=BD, num_warps=4)
    return y
