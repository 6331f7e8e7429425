"""Chunked state-space duality (Mamba2 §6) in Triton: forward, backward, and the decode step.

Per chunk c of T positions, head h (group g = h // (H/G)), with Δ the discretised step,
a_t = Σ_{u≤t in chunk} Δ_u A (chunk-local cumulative log-decay) and S_c the state entering
the chunk:

    y_t   = Σ_{s≤t, same doc} (C_t·B_s) e^{a_t−a_s} Δ_s x_s  +  e^{a_t}[doc_t = doc(S_c)] C_t S_c  +  D x_t
    Z_c   = Σ_s e^{a_T−a_s}[doc_s = doc_end] Δ_s x_s ⊗ B_s          (the chunk's own end state)
    S_c+1 = Z_c + e^{a_T}[doc_end = doc(S_c)] S_c

Forward kernels: (1) Δ and a per chunk (softplus, bias, clamp fused), (2) C·Bᵀ per chunk and
group (shared by the heads of a group), (3)+(4) one sequential pass over the chunks forming each
Z_c and giving every S_c and the final state, (5) the outputs. The backward takes (1)–(4) from
the forward (or recomputes them) and runs the same structure in reverse: dS_c (a pass over
chunks backwards), then dx/dΔ per head, dC and
dB per group (looping over the group's heads, so no per-head buffers of B/C size), and the
gradients of the log-decays, which reduce to per-position vectors finished by one more kernel
(a reverse cumulative sum per chunk and the chain rule through softplus/clamp/bias).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from biomamba.kernels.triton.common import dot, input_precision, last_unit
from biomamba.kernels.triton.conv import conv_window, store_window


@triton.jit
def _softplus(v):
    """log(1 + e^v), and v itself above 20 (torch's threshold), in fp32."""
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(v)))


# ---- (1) Δ and the chunk-local cumulative log-decay ------------------------------------------

@triton.jit
def _dt_kernel(dt_ptr, bias_ptr, A_ptr, delta_ptr, acs_ptr, L, H, NC, sdtb, sdtl, dt_lo, dt_hi,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
               T: tl.constexpr, BH: tl.constexpr):
    pb = tl.program_id(0)
    pc = tl.program_id(1)
    hh = tl.program_id(2) * BH + tl.arange(0, BH)
    t = pc * T + tl.arange(0, T)
    hm = hh < H
    tm = t < L
    v = tl.load(dt_ptr + pb * sdtb + t[:, None] * sdtl + hh[None, :], mask=tm[:, None] & hm[None, :],
                other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + hh, mask=hm, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        v = _softplus(v)
    if CLAMP:
        v = tl.minimum(tl.maximum(v, dt_lo), dt_hi)
    v = tl.where(tm[:, None], v, 0.0)  # padded steps neither decay nor feed the state
    A = tl.load(A_ptr + hh, mask=hm, other=0.0).to(tl.float32)
    a = tl.cumsum(v * A[None, :], axis=0)
    off = (pb * H + hh[None, :]) * (NC * T) + t[:, None]
    tl.store(delta_ptr + off, v, mask=hm[None, :])
    tl.store(acs_ptr + off, a, mask=hm[None, :])


# ---- (2) C·Bᵀ per chunk and group -----------------------------------------------------------

@triton.jit
def _cb_kernel(B_ptr, C_ptr, cb_ptr, L, G, N, NC, sbb, sbl, sbg, scb, scl, scg,
               T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IP: tl.constexpr):
    pid = tl.program_id(0)
    g = pid % G
    pc = (pid // G) % NC
    pb = pid // (G * NC)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    if pn * BN > pm * BM + BM - 1:  # strictly above the diagonal: never read
        return
    t = pm * BM + tl.arange(0, BM)
    s = pn * BN + tl.arange(0, BN)
    tg = pc * T + t
    sg = pc * T + s
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, N, BK):
        k = k0 + tl.arange(0, BK)
        km = k < N
        c = tl.load(C_ptr + pb * scb + tg[:, None] * scl + g * scg + k[None, :], mask=(tg < L)[:, None] & km[None, :],
                    other=0.0)
        bT = tl.load(B_ptr + pb * sbb + sg[None, :] * sbl + g * sbg + k[:, None], mask=(sg < L)[None, :] & km[:, None],
                     other=0.0)
        acc += dot(c, bT, IP)
    tl.store(cb_ptr + (((pb * NC + pc) * G + g) * T + t[:, None]) * T + s[None, :], acc)


# ---- (3)+(4) the chunk states, one pass over the chunks -------------------------------------
# One program owns a (batch, head, p-tile, n-tile) of the state and walks the chunks in order,
# forming each chunk's own end state Z_c in registers and carrying S in fp32: Z (and, backward,
# E) never reach memory. (Until session 11 a parallel kernel wrote every Z_c / E_c in fp32 and a
# second pass read them back: 134 MB each way a 1.3B layer at chunk 128.)

@triton.jit
def _states_fwd_kernel(x_ptr, B_ptr, delta_ptr, acs_ptr, seq_ptr, init_ptr, starts_ptr, final_ptr,
                       L, H, G, P, N, NC, sxb, sxl, sxh, sbb, sbl, sbg, ssb, ssl,
                       HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, T: tl.constexpr,
                       BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IP: tl.constexpr):
    """S_0 = init;  S_c+1 = Z_c + e^{a_T}[doc_end = doc(S_c)] S_c,
       Z_c[p,n] = Σ_t e^{a_T−a_t}[doc_t = doc_end] Δ_t x_t[p] B_t[n];  every S_c → starts, the last → final."""
    pid = tl.program_id(0)
    h = pid % H
    pb = pid // H
    g = h // (H // G)
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    n = tl.program_id(2) * BN + tl.arange(0, BN)
    pm = p < P
    nm = n < N
    PN = P * N
    e = p[:, None] * N + n[None, :]
    em = pm[:, None] & nm[None, :]
    if HAS_INIT:
        st = tl.load(init_ptr + (pb * H + h) * PN + e, mask=em, other=0.0).to(tl.float32)
    else:
        st = tl.zeros((BP, BN), dtype=tl.float32)
    if HAS_SEQ:
        doc = tl.load(seq_ptr + pb * ssb)
    for c in range(NC):
        tl.store(starts_ptr + ((pb * NC + c) * H + h) * PN + e, st.to(starts_ptr.dtype.element_ty), mask=em)
        base = (pb * H + h) * (NC * T) + c * T
        a_end = tl.load(acs_ptr + base + T - 1)
        carry = tl.exp(a_end)
        if HAS_SEQ:
            end_doc = tl.load(seq_ptr + pb * ssb + (tl.minimum(c * T + T, L) - 1) * ssl)
            carry = tl.where(end_doc == doc, carry, 0.0)
            doc = end_doc
        z = tl.zeros((BP, BN), dtype=tl.float32)
        for k0 in range(0, T, BK):
            k = k0 + tl.arange(0, BK)
            tg = c * T + k
            tm = tg < L
            w = tl.exp(a_end - tl.load(acs_ptr + base + k)) * tl.load(delta_ptr + base + k)
            if HAS_SEQ:
                w = tl.where(tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-1) == end_doc, w, 0.0)
            xT = tl.load(x_ptr + pb * sxb + tg[None, :] * sxl + h * sxh + p[:, None], mask=tm[None, :] & pm[:, None],
                         other=0.0)
            v = tl.load(B_ptr + pb * sbb + tg[:, None] * sbl + g * sbg + n[None, :], mask=tm[:, None] & nm[None, :],
                        other=0.0)
            z += dot(xT, (v.to(tl.float32) * w[:, None]).to(xT.dtype), IP)
        st = z + carry * st
    tl.store(final_ptr + (pb * H + h) * PN + e, st, mask=em)


@triton.jit
def _states_bwd_kernel(dy_ptr, C_ptr, acs_ptr, seq_ptr, starts_ptr, dfinal_ptr, dz_ptr, dinit_ptr, dgam_ptr,
                       L, H, G, P, N, NC, NBLK, sdyb, sdyl, sdyh, scb, scl, scg, ssb, ssl,
                       HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr, T: tl.constexpr,
                       BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IP: tl.constexpr):
    """Backwards over the chunks: dZ_c = dS_c+1 (→ dz);  dS_c = E_c + γ_c dS_c+1 with
       E_c[p,n] = Σ_t e^{a_t}[doc_t = doc(S_c)] dy_t[p] C_t[n] and γ_c = e^{a_T}[doc_end = doc(S_c)];
       γ_c ⟨dS_c+1, S_c⟩ over the tile → dgam (one partial a tile); dS_0 → dinit."""
    pid = tl.program_id(0)
    h = pid % H
    pb = pid // H
    g = h // (H // G)
    blk = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    n = tl.program_id(2) * BN + tl.arange(0, BN)
    pm = p < P
    nm = n < N
    PN = P * N
    e = p[:, None] * N + n[None, :]
    em = pm[:, None] & nm[None, :]
    if HAS_DFINAL:
        gst = tl.load(dfinal_ptr + (pb * H + h) * PN + e, mask=em, other=0.0).to(tl.float32)
    else:
        gst = tl.zeros((BP, BN), dtype=tl.float32)
    for ci in range(NC):
        c = NC - 1 - ci
        off = ((pb * NC + c) * H + h) * PN + e
        tl.store(dz_ptr + off, gst.to(dz_ptr.dtype.element_ty), mask=em)
        base = (pb * H + h) * (NC * T) + c * T
        gam = tl.exp(tl.load(acs_ptr + base + T - 1))
        if HAS_SEQ:
            end_doc = tl.load(seq_ptr + pb * ssb + (tl.minimum(c * T + T, L) - 1) * ssl)
            prev_doc = tl.load(seq_ptr + pb * ssb + tl.maximum(c * T - 1, 0) * ssl)
            gam = tl.where(end_doc == prev_doc, gam, 0.0)
        s = tl.load(starts_ptr + off, mask=em, other=0.0).to(tl.float32)
        tl.store(dgam_ptr + ((pb * H + h) * NC + c) * NBLK + blk, gam * tl.sum(tl.sum(gst * s, 1), 0))
        acc = tl.zeros((BP, BN), dtype=tl.float32)
        for k0 in range(0, T, BK):
            k = k0 + tl.arange(0, BK)
            tg = c * T + k
            tm = tg < L
            w = tl.exp(tl.load(acs_ptr + base + k))
            if HAS_SEQ:
                w = tl.where(tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-1) == prev_doc, w, 0.0)
            dyT = tl.load(dy_ptr + pb * sdyb + tg[None, :] * sdyl + h * sdyh + p[:, None],
                          mask=tm[None, :] & pm[:, None], other=0.0)
            v = tl.load(C_ptr + pb * scb + tg[:, None] * scl + g * scg + n[None, :], mask=tm[:, None] & nm[None, :],
                        other=0.0)
            acc += dot(dyT, (v.to(tl.float32) * w[:, None]).to(dyT.dtype), IP)
        gst = acc + gam * gst
    tl.store(dinit_ptr + (pb * H + h) * PN + e, gst, mask=em)


# ---- (5) outputs ----------------------------------------------------------------------------

@triton.jit
def _out_kernel(x_ptr, B_ptr, C_ptr, cb_ptr, delta_ptr, acs_ptr, seq_ptr, starts_ptr, D_ptr, y_ptr,
                L, H, G, P, N, NC, sxb, sxl, sxh, scb, scl, scg, ssb, ssl, syb, syl, syh,
                HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, T: tl.constexpr, BM: tl.constexpr,
                BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IP: tl.constexpr):
    pid = tl.program_id(0)
    h = pid % H
    pc = (pid // H) % NC
    pb = pid // (H * NC)
    g = h // (H // G)
    pm = tl.program_id(1)
    t = pm * BM + tl.arange(0, BM)
    p = tl.program_id(2) * BP + tl.arange(0, BP)
    tg = pc * T + t
    tm = tg < L
    pmask = p < P
    base = (pb * H + h) * (NC * T) + pc * T
    a_t = tl.load(acs_ptr + base + t)
    # the carried-in state: e^{a_t} C_t S_c
    e_t = tl.exp(a_t)
    if HAS_SEQ:
        doc_t = tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-1)
        prev_doc = tl.load(seq_ptr + pb * ssb + tl.maximum(pc * T - 1, 0) * ssl)
        e_t = tl.where(doc_t == prev_doc, e_t, 0.0)
    acc = tl.zeros((BM, BP), dtype=tl.float32)
    sbase = starts_ptr + ((pb * NC + pc) * H + h) * P * N
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nm = n < N
        c = tl.load(C_ptr + pb * scb + tg[:, None] * scl + g * scg + n[None, :], mask=tm[:, None] & nm[None, :],
                    other=0.0)
        sT = tl.load(sbase + p[None, :] * N + n[:, None], mask=pmask[None, :] & nm[:, None], other=0.0)
        acc += dot(c, sT.to(c.dtype), IP)
    acc = acc * e_t[:, None]
    # within the chunk, causal: s ≤ t
    cbase = cb_ptr + ((pb * NC + pc) * G + g) * T * T
    for k0 in range(0, (pm + 1) * BM, BK):
        s = k0 + tl.arange(0, BK)
        sg = pc * T + s
        sm = sg < L
        cb = tl.load(cbase + t[:, None] * T + s[None, :])
        a_s = tl.load(acs_ptr + base + s)
        d_s = tl.load(delta_ptr + base + s)
        keep = (s[None, :] <= t[:, None]) & sm[None, :]
        if HAS_SEQ:
            doc_s = tl.load(seq_ptr + pb * ssb + sg * ssl, mask=sm, other=-2)
            keep = keep & (doc_s[None, :] == doc_t[:, None])
        w = tl.where(keep, cb * tl.exp(a_t[:, None] - a_s[None, :]) * d_s[None, :], 0.0)
        xs = tl.load(x_ptr + pb * sxb + sg[:, None] * sxl + h * sxh + p[None, :], mask=sm[:, None] & pmask[None, :],
                     other=0.0)
        acc += dot(w.to(xs.dtype), xs, IP)
    if HAS_D:
        xt = tl.load(x_ptr + pb * sxb + tg[:, None] * sxl + h * sxh + p[None, :], mask=tm[:, None] & pmask[None, :],
                     other=0.0).to(tl.float32)
        acc += tl.load(D_ptr + h).to(tl.float32) * xt
    tl.store(y_ptr + pb * syb + tg[:, None] * syl + h * syh + p[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=tm[:, None] & pmask[None, :])


# ---- backward: dx, dΔ (direct), per-position log-decay gradients, dD ---------------------------

@triton.jit
def _bwd_dx_kernel(x_ptr, B_ptr, cb_ptr, dy_ptr, delta_ptr, acs_ptr, seq_ptr, dz_ptr, D_ptr,
                   dx_ptr, ddt_ptr, q_ptr, dd_ptr,
                   L, H, G, P, N, NC, sxb, sxl, sxh, sbb, sbl, sbg, sdyb, sdyl, sdyh, ssb, ssl, sob, sol, soh,
                   HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, T: tl.constexpr, BM: tl.constexpr,
                   BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IP: tl.constexpr):
    pid = tl.program_id(0)
    h = pid % H
    pc = (pid // H) % NC
    pb = pid // (H * NC)
    g = h // (H // G)
    pm = tl.program_id(1)
    s = pm * BM + tl.arange(0, BM)
    sg = pc * T + s
    sm = sg < L
    p = tl.arange(0, BP)
    pmask = p < P
    base = (pb * H + h) * (NC * T) + pc * T
    a_s = tl.load(acs_ptr + base + s)
    d_s = tl.load(delta_ptr + base + s)
    a_end = tl.load(acs_ptr + base + T - 1)
    f_s = tl.exp(a_end - a_s)
    if HAS_SEQ:
        doc_s = tl.load(seq_ptr + pb * ssb + sg * ssl, mask=sm, other=-1)
        end_doc = tl.load(seq_ptr + pb * ssb + (tl.minimum(pc * T + T, L) - 1) * ssl)
        f_s = tl.where(doc_s == end_doc, f_s, 0.0)
    # through the chunk's end state: dX_s = f_s · B_s dZᵀ, and q = Δ_s x_s·dX_s (its part of the
    # log-decay gradient, which the tail kernel needs apart)
    acc = tl.zeros((BM, BP), dtype=tl.float32)
    zbase = dz_ptr + ((pb * NC + pc) * H + h) * P * N
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nm = n < N
        b = tl.load(B_ptr + pb * sbb + sg[:, None] * sbl + g * sbg + n[None, :], mask=sm[:, None] & nm[None, :],
                    other=0.0)
        zT = tl.load(zbase + p[None, :] * N + n[:, None], mask=pmask[None, :] & nm[:, None], other=0.0)
        acc += dot(b, zT.to(b.dtype), IP)
    acc = acc * f_s[:, None]
    x_ptrs = x_ptr + pb * sxb + sg[:, None] * sxl + h * sxh + p[None, :]
    xmask = sm[:, None] & pmask[None, :]
    q = d_s * tl.sum(tl.load(x_ptrs, mask=xmask, other=0.0).to(tl.float32) * acc, 1)
    # within the chunk: dX_s += Σ_{t≥s} w_st dy_t, w_st = (C_t·B_s) e^{a_t−a_s}, w rounded to bf16 once
    # (as any bf16 GEMM input). The column part of the log-decay gradient, Δ_s Σ_t w_st (x_s·dy_t),
    # is not taken from this sum: it nearly cancels the row part, so both come from the PW kernel's
    # fp32 products (with w rounded here, dA was off by 25 % at the GPU test shape)
    cbase = cb_ptr + ((pb * NC + pc) * G + g) * T * T
    for k0 in range(pm * BM, T, BK):
        t = k0 + tl.arange(0, BK)
        tg = pc * T + t
        tm = tg < L
        cbT = tl.load(cbase + t[None, :] * T + s[:, None], mask=(t[None, :] >= s[:, None]), other=0.0)
        a_t = tl.load(acs_ptr + base + t)
        keep = (t[None, :] >= s[:, None]) & tm[None, :]
        if HAS_SEQ:
            doc_t = tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-2)
            keep = keep & (doc_t[None, :] == doc_s[:, None])
        w = tl.where(keep, cbT * tl.exp(a_t[None, :] - a_s[:, None]), 0.0)
        dy_t = tl.load(dy_ptr + pb * sdyb + tg[:, None] * sdyl + h * sdyh + p[None, :],
                       mask=tm[:, None] & pmask[None, :], other=0.0)
        acc += dot(w.to(dy_t.dtype), dy_t, IP)
    xf = tl.load(x_ptrs, mask=xmask, other=0.0).to(tl.float32)  # again (from L2): not live in the loop
    x_dx = tl.sum(xf * acc, 1)  # x_s·dX_s/Δ_s: dΔ through x
    dy_s = tl.load(dy_ptr + pb * sdyb + sg[:, None] * sdyl + h * sdyh + p[None, :], mask=sm[:, None] & pmask[None, :],
                   other=0.0).to(tl.float32)
    dx = acc * d_s[:, None]
    if HAS_D:
        dx += tl.load(D_ptr + h).to(tl.float32) * dy_s
    tl.store(dx_ptr + pb * sob + sg[:, None] * sol + h * soh + p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=sm[:, None] & pmask[None, :])
    vec = base + s
    tl.store(ddt_ptr + vec, x_dx)
    tl.store(q_ptr + vec, q)
    tl.store(dd_ptr + vec, tl.sum(xf * dy_s, 1))


# ---- backward: dC and dB per group, the heads merged before the product with B / C --------------
# B and C are shared by a group's heads, so Σ_h (pw_h · B) = (Σ_h pw_h) · B: the within-chunk
# weights of all heads, PW[t,s] = Σ_h (dy_t·x_s) e^{a_t−a_s} Δ_s (s ≤ t), are summed first and
# multiplied by B (for dC) and, transposed, by C (for dB) once. The per-head products dy_t·x_s are
# formed once, by the PW kernel, one (t, s) tile pair a program, which also writes each head's row
# and column parts of the within-chunk log-decay gradient, M = pw_h ∘ CB summed over s (a partial
# per s-tile) and over t (a partial per t-tile): the two nearly cancel, so both are summed from the
# same fp32 M (session 10: the column part came from the dx kernel's bf16 product). (Until session
# 7 the dC and dB kernels each formed every product, and dC added the row part in place, head by
# head, with a barrier between.) Then dC and dB add the per-head terms through the states.

@triton.jit
def _bwd_pw_kernel(x_ptr, dy_ptr, cb_ptr, delta_ptr, acs_ptr, seq_ptr, pw_ptr, part_ptr, colpart_ptr,
                   L, H, G, P, NC, sxb, sxl, sxh, sdyb, sdyl, sdyh, ssb, ssl, spw, spart,
                   HAS_SEQ: tl.constexpr, HS: tl.constexpr, T: tl.constexpr, BM: tl.constexpr,
                   BP: tl.constexpr, IP: tl.constexpr):
    """PW[t,s] over one slice of the group's heads (HS slices: fp32 partials at spw apart) for the
    (t-tile, s-tile) pair of program axes 1, 2; the row parts at part_ptr + s-tile · spart, the
    column parts at colpart_ptr + t-tile · spart."""
    pid = tl.program_id(0)
    hs = pid % HS
    g = (pid // HS) % G
    pc = (pid // (HS * G)) % NC
    pb = pid // (HS * G * NC)
    ti = tl.program_id(1)
    si = tl.program_id(2)
    if si <= ti:  # the causal (lower) tiles only
        t = ti * BM + tl.arange(0, BM)
        s = si * BM + tl.arange(0, BM)
        tg = pc * T + t
        sg = pc * T + s
        tm = tg < L
        sm = sg < L
        p = tl.arange(0, BP)
        pmask = p < P
        keep = (s[None, :] <= t[:, None]) & sm[None, :] & tm[:, None]
        if HAS_SEQ:
            doc_t = tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-1)
            doc_s = tl.load(seq_ptr + pb * ssb + sg * ssl, mask=sm, other=-2)
            keep = keep & (doc_s[None, :] == doc_t[:, None])
        cb = tl.load(cb_ptr + ((pb * NC + pc) * G + g) * T * T + t[:, None] * T + s[None, :])
        hpg = H // G
        HPS = hpg // HS
        pw_all = tl.zeros((BM, BM), dtype=tl.float32)
        for hi in range(HPS):
            h = g * hpg + hs * HPS + hi
            base = (pb * H + h) * (NC * T) + pc * T
            a_t = tl.load(acs_ptr + base + t)
            a_s = tl.load(acs_ptr + base + s)
            d_s = tl.load(delta_ptr + base + s)
            dy_t = tl.load(dy_ptr + pb * sdyb + tg[:, None] * sdyl + h * sdyh + p[None, :],
                           mask=tm[:, None] & pmask[None, :], other=0.0)
            x_s = tl.load(x_ptr + pb * sxb + sg[:, None] * sxl + h * sxh + p[None, :],
                          mask=sm[:, None] & pmask[None, :], other=0.0)
            dyx = dot(dy_t, tl.trans(x_s), IP)  # (BM, BM): dy_t · x_s
            pw = tl.where(keep, dyx * tl.exp(a_t[:, None] - a_s[None, :]) * d_s[None, :], 0.0)
            m = pw * cb
            tl.store(part_ptr + si * spart + base + t, tl.sum(m, 1))
            tl.store(colpart_ptr + ti * spart + base + s, tl.sum(m, 0))
            pw_all += pw
        tl.store(pw_ptr + hs * spw + ((pb * NC + pc) * G + g) * T * T + t[:, None] * T + s[None, :], pw_all)


@triton.jit
def _bwd_dc_kernel(C_ptr, dy_ptr, acs_ptr, seq_ptr, starts_ptr, B_ptr, pw_ptr, part_ptr, colpart_ptr, dc_ptr,
                   dda_ptr,
                   L, H, G, P, N, NC, sbb, sbl, sbg, scb, scl, scg, sdyb, sdyl, sdyh, ssb, ssl, spw, spart,
                   sob, sol, sog, soz,
                   HAS_SEQ: tl.constexpr, HS: tl.constexpr, PWS: tl.constexpr, T: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IP: tl.constexpr):
    """dC_t = Σ_h e^{a_t} dy_t·S_h + Σ_{s≤t} PW[t,s] B_s over one slice of the group's heads (HS
    slices: partial sums at soz apart, added on the host; the first adds the PW part, summing the
    PW kernel's PWS partials), and each head's log-decay gradient through the state and within the
    chunk (row part − column part), complete."""
    pid = tl.program_id(0)
    hs = pid % HS
    g = (pid // HS) % G
    pc = (pid // (HS * G)) % NC
    pb = pid // (HS * G * NC)
    pm = tl.program_id(1)
    t = pm * BM + tl.arange(0, BM)
    tg = pc * T + t
    tm = tg < L
    p = tl.arange(0, BP)
    pmask = p < P
    n = tl.arange(0, BN)
    nm = n < N
    if HAS_SEQ:
        doc_t = tl.load(seq_ptr + pb * ssb + tg * ssl, mask=tm, other=-1)
        prev_doc = tl.load(seq_ptr + pb * ssb + tl.maximum(pc * T - 1, 0) * ssl)
    c_t = tl.load(C_ptr + pb * scb + tg[:, None] * scl + g * scg + n[None, :], mask=tm[:, None] & nm[None, :],
                  other=0.0).to(tl.float32)
    hpg = H // G
    HPS = hpg // HS
    dc = tl.zeros((BM, BN), dtype=tl.float32)
    for hi in range(HPS):
        h = g * hpg + hs * HPS + hi
        base = (pb * H + h) * (NC * T) + pc * T
        e_t = tl.exp(tl.load(acs_ptr + base + t))
        if HAS_SEQ:
            e_t = tl.where(doc_t == prev_doc, e_t, 0.0)
        dy_t = tl.load(dy_ptr + pb * sdyb + tg[:, None] * sdyl + h * sdyh + p[None, :],
                       mask=tm[:, None] & pmask[None, :], other=0.0)
        st = tl.load(starts_ptr + ((pb * NC + pc) * H + h) * P * N + p[:, None] * N + n[None, :],
                     mask=pmask[:, None] & nm[None, :], other=0.0)
        dcs = dot(dy_t, st.to(dy_t.dtype), IP) * e_t[:, None]
        row = tl.sum(dcs * c_t, 1)
        for si in range(0, pm + 1):  # the PW kernel's tiles are this kernel's row blocks
            row += tl.load(part_ptr + si * spart + base + t)
        for ti in range(pm, T // BM):
            row -= tl.load(colpart_ptr + ti * spart + base + t)
        tl.store(dda_ptr + base + t, row)
        dc += dcs
    if hs == 0:
        pwbase = pw_ptr + ((pb * NC + pc) * G + g) * T * T
        for k0 in range(0, (pm + 1) * BM, BK):
            s = k0 + tl.arange(0, BK)
            sg = pc * T + s
            sm = sg < L
            pw = tl.load(pwbase + t[:, None] * T + s[None, :])
            for a in range(1, PWS):
                pw += tl.load(pwbase + a * spw + t[:, None] * T + s[None, :])
            b_s = tl.load(B_ptr + pb * sbb + sg[:, None] * sbl + g * sbg + n[None, :], mask=sm[:, None] & nm[None, :],
                          other=0.0)
            dc += dot(pw.to(b_s.dtype), b_s, IP)
    tl.store(dc_ptr + hs * soz + pb * sob + tg[:, None] * sol + g * sog + n[None, :],
             dc.to(dc_ptr.dtype.element_ty),
             mask=tm[:, None] & nm[None, :])


@triton.jit
def _bwd_db_kernel(x_ptr, C_ptr, delta_ptr, acs_ptr, seq_ptr, dz_ptr, pw_ptr, db_ptr,
                   L, H, G, P, N, NC, sxb, sxl, sxh, scb, scl, scg, ssb, ssl, spw,
                   sob, sol, sog, soz,
                   HAS_SEQ: tl.constexpr, HS: tl.constexpr, PWS: tl.constexpr, T: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IP: tl.constexpr):
    """dB_s = Σ_h e^{a_end−a_s} Δ_s x_s·dZ_h + Σ_{t≥s} PW[t,s] C_t, split as the dC kernel."""
    pid = tl.program_id(0)
    hs = pid % HS
    g = (pid // HS) % G
    pc = (pid // (HS * G)) % NC
    pb = pid // (HS * G * NC)
    pm = tl.program_id(1)
    s = pm * BM + tl.arange(0, BM)
    sg = pc * T + s
    sm = sg < L
    p = tl.arange(0, BP)
    pmask = p < P
    n = tl.arange(0, BN)
    nm = n < N
    if HAS_SEQ:
        doc_s = tl.load(seq_ptr + pb * ssb + sg * ssl, mask=sm, other=-1)
        end_doc = tl.load(seq_ptr + pb * ssb + (tl.minimum(pc * T + T, L) - 1) * ssl)
    hpg = H // G
    HPS = hpg // HS
    db = tl.zeros((BM, BN), dtype=tl.float32)
    for hi in range(HPS):
        h = g * hpg + hs * HPS + hi
        base = (pb * H + h) * (NC * T) + pc * T
        f_s = tl.exp(tl.load(acs_ptr + base + T - 1) - tl.load(acs_ptr + base + s)) * tl.load(delta_ptr + base + s)
        if HAS_SEQ:
            f_s = tl.where(doc_s == end_doc, f_s, 0.0)
        x_s = tl.load(x_ptr + pb * sxb + sg[:, None] * sxl + h * sxh + p[None, :], mask=sm[:, None] & pmask[None, :],
                      other=0.0)
        dz = tl.load(dz_ptr + ((pb * NC + pc) * H + h) * P * N + p[:, None] * N + n[None, :],
                     mask=pmask[:, None] & nm[None, :], other=0.0)
        db += dot(x_s, dz.to(x_s.dtype), IP) * f_s[:, None]
    if hs == 0:
        pwbase = pw_ptr + ((pb * NC + pc) * G + g) * T * T
        for k0 in range(pm * BM, T, BK):
            t = k0 + tl.arange(0, BK)
            tg = pc * T + t
            tm = tg < L
            pw = tl.load(pwbase + t[:, None] * T + s[None, :])  # (BK, BM): PW[t, s]
            for a in range(1, PWS):
                pw += tl.load(pwbase + a * spw + t[:, None] * T + s[None, :])
            c_t = tl.load(C_ptr + pb * scb + tg[:, None] * scl + g * scg + n[None, :], mask=tm[:, None] & nm[None, :],
                          other=0.0)
            db += dot(tl.trans(pw.to(c_t.dtype)), c_t, IP)
    tl.store(db_ptr + hs * soz + pb * sob + sg[:, None] * sol + g * sog + n[None, :],
             db.to(db_ptr.dtype.element_ty),
             mask=sm[:, None] & nm[None, :])


# ---- backward: the per-position tail (log-decay → Δ → dt, dt_bias, A, D) ----------------------

@triton.jit
def _bwd_tail_kernel(row_ptr, q_ptr, dgam_ptr, ddtx_ptr, delta_ptr, ddpos_ptr, dt_ptr, bias_ptr, A_ptr,
                     ddt_ptr, dA_ptr, dbias_ptr, dD_ptr, L, H, NC, NBLK, sdtb, sdtl, sgb, sgl, dt_lo, dt_hi,
                     HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                     T: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr):
    """One (batch, chunk, head block): the log-decay gradient per position (the dC kernel's part,
    −q for the end state's Δ_s x_s·dZ e^{a_T−a_s}, the chunk's end terms on its last position)
    summed from the end of the chunk (a reverse cumsum: the tile is read back to front and summed
    forward), then dΔ = dΔ_x + ddA·A, chained through clamp and softplus to dt; the per-head sums
    dA, dt_bias, D are written per program."""
    pb = tl.program_id(0)
    pc = tl.program_id(1)
    hh = tl.program_id(2) * BH + tl.arange(0, BH)
    hm = hh < H
    r = T - 1 - tl.arange(0, T)  # positions in the chunk, last first
    off = (pb * H + hh[None, :]) * (NC * T) + pc * T + r[:, None]
    m = hm[None, :]
    q = tl.load(q_ptr + off, mask=m, other=0.0)
    dda = tl.load(row_ptr + off, mask=m, other=0.0) - q
    # the chunk's end terms: Σ_t q_t and the state pass's Σ over its blocks, on the last position
    end = tl.sum(q, 0)
    blk = tl.arange(0, BB)
    end += tl.sum(tl.load(dgam_ptr + ((pb * H + hh[None, :]) * NC + pc) * NBLK + blk[:, None],
                          mask=hm[None, :] & (blk[:, None] < NBLK), other=0.0), 0)
    dda = tl.where((r == T - 1)[:, None], dda + end[None, :], dda)
    ddA = tl.cumsum(dda, axis=0)
    delta = tl.load(delta_ptr + off, mask=m, other=0.0)
    A = tl.load(A_ptr + hh, mask=hm, other=0.0).to(tl.float32)
    g = tl.load(ddtx_ptr + off, mask=m, other=0.0) + ddA * A[None, :]
    part = (pb * NC + pc) * H + hh
    tl.store(dA_ptr + part, tl.sum(ddA * delta, 0), mask=hm)
    if HAS_D:
        tl.store(dD_ptr + part, tl.sum(tl.load(ddpos_ptr + off, mask=m, other=0.0), 0), mask=hm)
    lpos = pc * T + r
    lm = (lpos < L)[:, None] & hm[None, :]
    v = tl.load(dt_ptr + pb * sdtb + lpos[:, None] * sdtl + hh[None, :], mask=lm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + hh, mask=hm, other=0.0).to(tl.float32)[None, :]
    if CLAMP:
        if SOFTPLUS:
            sp = _softplus(v)
        else:
            sp = v
        g = tl.where((sp >= dt_lo) & (sp <= dt_hi), g, 0.0)
    if SOFTPLUS:
        g = g * tl.sigmoid(v)
    g = tl.where(lm, g, 0.0)
    tl.store(ddt_ptr + pb * sgb + lpos[:, None] * sgl + hh[None, :], g.to(ddt_ptr.dtype.element_ty), mask=lm)
    if HAS_BIAS:
        tl.store(dbias_ptr + part, tl.sum(g, 0), mask=hm)


# ---- host side ------------------------------------------------------------------------------

def _dt_limits(dt_lo: float, dt_hi: float) -> dict:
    """The Δ clamp as kernel arguments: whether to clamp at all, and finite bounds."""
    return dict(dt_lo=float(dt_lo), dt_hi=float(min(dt_hi, 3.0e38)),
                CLAMP=not (dt_lo == 0.0 and math.isinf(dt_hi)))


# Backward tiling: rows a program owns and the inner block, of the dx kernel (BM, BK) and of the
# dC/dB kernels (dcdb_BM, dcdb_BK), and their warps. Module-level so that a benchmark can sweep it
# on the GPU (bench/RESULTS.md, calls F and G, the 130M shape on an H200): dx is fastest at 64/32
# (407 µs), dC + dB at 64/64 (260 + 204 µs; 349 + 252 at 64/32). BK must not exceed BM.
# "dcdb_heads": heads a dC/dB program sums; None: split a group's heads into the fewest equal parts
# that give the grid at least "dcdb_programs" programs. At 1.3B (b8, 64 heads) the unsplit grid is
# b·chunks·4 = 128 programs for 132 SMs; 16 heads a program (512 programs) took dC + dB from
# 608 + 461 to 305 + 205 µs, the best of 64/32/16/8 (bench/RESULTS.md, session 5 call A).
# "dx_maxnreg" / "dcdb_maxnreg" (None: the compiler's choice) cap the registers a thread: the three
# kernels use 224–255 uncapped (bench/compile_check.py, Triton 3.6), two 4-warp programs an SM. At 168
# three fit; dx spills 40 B and gets faster (130M 329 → 274 µs, 1.3B 437 → 362), dC / dB spill
# 608 / 200 B and get slower (236 → 449, 157 → 207 µs at 130M): bench/RESULTS.md, session 7 call 1.
# "pw_heads", "pw_programs", "pw_warps", "pw_maxnreg": the same for the PW kernel (its grid: the
# causal tile pairs of dcdb_BM), and "pw_max_heads": at most that many heads a PW program (more
# parts when needed). PW has 221 registers uncapped (two programs an SM); capped at 168 it spills
# 24 B and runs 180 → 122 µs at 130M, 236 → 159 at 1.3B (session 9 call 1). Split finer, PW gets
# faster and dC (which sums the PW partials) slower at 130M (24 heads a program → 12: PW + dC + dB
# 257 → 280 µs) but faster at 1.3B (32 → 16: 340 → 321 µs): hence at most 24 heads a program.
# Since the PW kernel, dC / dB read PW tiles, not products, and want fewer programs:
# dcdb_BK 32 and 256 programs (130M: 12 heads a program → 24; 1.3B: 16 → 32) measured fastest,
# dC + dB at 130M 99.6 + 84.4 → 74.7 + 57.2 µs, at 1.3B 132.5 + 95.4 → 123.6 + 58.9 (session 7
# call 2, session 8 call 1).
BWD_TILES = {"BM": 64, "BK": 32, "dx_warps": 4, "dcdb_BM": 64, "dcdb_BK": 32, "dcdb_warps": 4, "dcdb_heads": None,
             "dcdb_programs": 256, "stages": None, "dx_maxnreg": 168, "dcdb_maxnreg": None,
             "pw_heads": None, "pw_programs": 512, "pw_max_heads": 24, "pw_warps": 4, "pw_maxnreg": 168}


def _dcdb_heads(heads: int, programs: int, target: int, most: int | None = None) -> int:
    """Heads a dC/dB (or PW) program sums when BWD_TILES["dcdb_heads"] (["pw_heads"]) is None:
    the fewest equal parts of ``heads`` that take the unsplit grid of ``programs`` to ``target``,
    with at most ``most`` heads a part."""
    for parts in range(1, heads + 1):
        if heads % parts == 0 and programs * parts >= target and (most is None or heads // parts <= most):
            return heads // parts
    return 1


# Forward tiling of the output kernel (rows, inner block, warps); "stages" (None: Triton's
# default) is the software-pipelining depth. From a sweep of 7 variants on an H200 (call F,
# bench/RESULTS.md): the output kernel took 166 µs at 64/32 against 183 at 64/64 and 198–251
# for the others.
FWD_TILES = {"out_BM": 64, "out_BK": 32, "out_warps": 4, "stages": None}


# The chunk-state passes (forward and backward): the state tile a program carries (p × n), the
# block of positions per product. "BN" None: the whole state width N where the grid, b·H·(P/BP)
# programs, still has "programs", else "min_BN" (N / min_BN times the programs).
# H200, chunk 128, µs a call forward / backward (bench/RESULTS.md, session 11 call 2): 1.3B b8
# (512 programs at N) 85 / 113 at BN 128 against 103 / 130 at 64; 130M b16 (384) 77 / 93 at 64
# against 75 / 101 at 128; the perplexity forward 130M 8 × 16,384 (192) 556 at 64, 623 at 128,
# 799 at 32. BP 32, 8 warps, 2 or 4 stages: no faster anywhere; BK 32 only on the perplexity shape
# (531 against 556).
STATE_TILES = {"BP": 64, "BN": None, "min_BN": 64, "programs": 512, "BK": 64, "warps": 4, "stages": None}


def _state_tile_n(b: int, H: int, P: int, N: int, BP: int) -> int:
    """The n-width of a state-pass program's tile, its p-width being BP (STATE_TILES["BN"], or
    its rule when None)."""
    BN = triton.next_power_of_2(N)
    if STATE_TILES["BN"] is not None:
        return min(STATE_TILES["BN"], BN)
    return BN if b * H * triton.cdiv(P, BP) >= STATE_TILES["programs"] else min(STATE_TILES["min_BN"], BN)


def _launch_opts(table: dict, maxnreg: str | None = None) -> dict:
    """Launch options that are left to Triton unless the table sets them."""
    opts = {} if table["stages"] is None else {"num_stages": table["stages"]}
    if maxnreg is not None and table[maxnreg] is not None:
        opts["maxnreg"] = table[maxnreg]
    return opts


class _Cfg:
    """Tile sizes: big tiles on the GPU, small ones keep the CPU interpreter quick."""

    def __init__(self, T: int, P: int, N: int, b: int, H: int):
        self.BM = min(64, T)
        self.bBM = min(BWD_TILES["BM"], T)
        self.bBK = min(BWD_TILES["BK"], self.bBM)
        self.cBM = min(BWD_TILES["dcdb_BM"], T)
        self.cBK = min(BWD_TILES["dcdb_BK"], self.cBM)
        self.oBM = min(FWD_TILES["out_BM"], T)
        self.oBK = min(FWD_TILES["out_BK"], self.oBM)
        self.BP = triton.next_power_of_2(P)
        self.BN = triton.next_power_of_2(N)
        self.BNK = min(64, self.BN)  # n-blocking where n is a reduction dim
        self.BPo = min(64, self.BP)  # p-blocking of the outputs
        self.sBP = min(STATE_TILES["BP"], self.BP)
        self.sBN = _state_tile_n(b, H, P, N, self.sBP)
        self.sBK = min(STATE_TILES["BK"], T)


def state_dtype(x: Tensor, B: Tensor, C: Tensor) -> torch.dtype:
    """How the chunks' starting states and their gradients dZ are stored between kernels: in the
    inputs' dtype when x, B and C share one (every kernel that reads them rounds them to it for its
    products: bf16 halves their traffic, 67 MB each a 1.3B layer in fp32), else fp32. The passes
    over chunks carry them in fp32 in registers; the final state stays fp32."""
    return x.dtype if x.dtype == B.dtype == C.dtype else torch.float32


def _dims(x, B, chunk_size):
    """(b, L, H, P, G, N, T, NC): batch, length, heads, head dim, groups, state size, chunk, chunks."""
    b, L, H, P = x.shape
    G, N = B.shape[-2:]
    T = chunk_size
    if T & (T - 1):
        raise ValueError(f"triton ssd_scan needs a power-of-two chunk_size, got {T}")
    return b, L, H, P, G, N, T, triton.cdiv(L, T)


def _prep(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_lo, dt_hi):
    b, L, H, P, G, N, T, NC = _dims(x, B, chunk_size)
    dt = last_unit(dt)
    delta = torch.empty((b, H, NC * T), device=x.device, dtype=torch.float32)
    acs = torch.empty_like(delta)
    BH = min(16, triton.next_power_of_2(H))
    _dt_kernel[(b, NC, triton.cdiv(H, BH))](
        dt, dt_bias if dt_bias is not None else dt, A, delta, acs, L, H, NC, dt.stride(0), dt.stride(1),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, T=T, BH=BH, num_warps=4, **_dt_limits(dt_lo, dt_hi))
    return b, L, H, P, G, N, T, NC, delta, acs


def _seq_args(seq_idx: Tensor | None, like: Tensor):
    if seq_idx is None:
        return like, 0, 0
    return seq_idx, seq_idx.stride(0), seq_idx.stride(1)


def _chunk_prefix(x, B, C, delta, acs, seq_idx, initial_state, dims, cfg):
    """CB and the pass over the chunks: every chunk's starting state and the final state."""
    b, L, H, P, G, N, T, NC = dims
    ip = input_precision(x.dtype)
    seq, ssb, ssl = _seq_args(seq_idx, x)
    cb = torch.empty((b, NC, G, T, T), device=x.device, dtype=torch.float32)
    _cb_kernel[(b * NC * G, T // cfg.BM, T // cfg.BM)](
        B, C, cb, L, G, N, NC, B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        T=T, BM=cfg.BM, BN=cfg.BM, BK=cfg.BNK, IP=ip, num_warps=4)
    starts = torch.empty((b, NC, H, P, N), device=x.device, dtype=state_dtype(x, B, C))
    final = torch.empty((b, H, P, N), device=x.device, dtype=torch.float32)
    init = initial_state.contiguous() if initial_state is not None else final
    _states_fwd_kernel[(b * H, triton.cdiv(P, cfg.sBP), triton.cdiv(N, cfg.sBN))](
        x, B, delta, acs, seq, init, starts, final, L, H, G, P, N, NC, x.stride(0), x.stride(1), x.stride(2),
        B.stride(0), B.stride(1), B.stride(2), ssb, ssl,
        HAS_SEQ=seq_idx is not None, HAS_INIT=initial_state is not None, T=T, BP=cfg.sBP, BN=cfg.sBN, BK=cfg.sBK,
        IP=ip, num_warps=STATE_TILES["warps"], **_launch_opts(STATE_TILES))
    return cb, starts, final


def ssd_fwd(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state,
            keep: bool = False):
    """(y, the final state); with ``keep``, also what the backward would recompute, for ``saved``
    there: (Δ, the log-decay cumsum, CB, the chunks' starting states)."""
    x, B, C = last_unit(x), last_unit(B), last_unit(C)
    b, L, H, P, G, N, T, NC, delta, acs = _prep(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_lo, dt_hi)
    dims = (b, L, H, P, G, N, T, NC)
    cfg = _Cfg(T, P, N, b, H)
    cb, starts, final = _chunk_prefix(x, B, C, delta, acs, seq_idx, initial_state, dims, cfg)
    seq, ssb, ssl = _seq_args(seq_idx, x)
    y = torch.empty((b, L, H, P), device=x.device, dtype=x.dtype)
    _out_kernel[(b * NC * H, T // cfg.oBM, triton.cdiv(P, cfg.BPo))](
        x, B, C, cb, delta, acs, seq, starts, D if D is not None else A, y,
        L, H, G, P, N, NC, x.stride(0), x.stride(1), x.stride(2), C.stride(0), C.stride(1), C.stride(2),
        ssb, ssl, y.stride(0), y.stride(1), y.stride(2),
        HAS_SEQ=seq_idx is not None, HAS_D=D is not None, T=T, BM=cfg.oBM, BK=cfg.oBK, BP=cfg.BPo, BN=cfg.BNK,
        IP=input_precision(x.dtype), num_warps=FWD_TILES["out_warps"], **_launch_opts(FWD_TILES))
    return (y, final, (delta, acs, cb, starts)) if keep else (y, final)


def _dcdb(x, B, C, dy, cb, delta, acs, seq_idx, starts, dz, dda_row, dims, cfg, dB_out, dC_out):
    b, L, H, P, G, N, T, NC = dims
    seq, ssb, ssl = _seq_args(seq_idx, x)
    ip = input_precision(x.dtype)
    RB = cfg.cBM  # row block of dC / dB, and the PW kernel's tile
    NT = T // RB
    hpg = H // G
    slices = {}
    for key, programs in (("dcdb", b * NC * G * NT), ("pw", b * NC * G * NT * (NT + 1) // 2)):
        heads = BWD_TILES[f"{key}_heads"] or _dcdb_heads(hpg, programs, BWD_TILES[f"{key}_programs"],
                                                         BWD_TILES.get(f"{key}_max_heads"))
        if hpg % heads:
            raise ValueError(f"BWD_TILES['{key}_heads'] = {heads} must divide the {hpg} heads of a group")
        slices[key] = hpg // heads  # programs sharing a group's heads; > 1: fp32 partial sums
    HS, PWS = slices["dcdb"], slices["pw"]
    # PW (its PWS partials) and the row / column parts of the log-decay gradient, one vector a PW
    # tile column / row
    pw = torch.empty((PWS, b, NC, G, T, T), device=x.device, dtype=torch.float32)
    part, colpart = torch.empty((2, NT, b, H, NC * T), device=x.device, dtype=torch.float32).unbind(0)
    _bwd_pw_kernel[(b * NC * G * PWS, NT, NT)](
        x, dy, cb, delta, acs, seq, pw, part, colpart, L, H, G, P, NC, x.stride(0), x.stride(1), x.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2), ssb, ssl, pw.stride(0), part.stride(0),
        HAS_SEQ=seq_idx is not None, HS=PWS, T=T, BM=RB, BP=cfg.BP, IP=ip,
        num_warps=BWD_TILES["pw_warps"], **_launch_opts(BWD_TILES, "pw_maxnreg"))
    if HS == 1:  # the kernels write dC, dB themselves (soz unused)
        dC = (dC_out if dC_out is not None else torch.empty((b, L, G, N), device=x.device, dtype=C.dtype))[None]
        dB = (dB_out if dB_out is not None else torch.empty((b, L, G, N), device=x.device, dtype=B.dtype))[None]
    else:
        dC = torch.empty((HS, b, L, G, N), device=x.device, dtype=torch.float32)
        dB = torch.empty((HS, b, L, G, N), device=x.device, dtype=torch.float32)
    flags = dict(HAS_SEQ=seq_idx is not None, HS=HS, PWS=PWS, T=T, BM=RB, BK=cfg.cBK, BP=cfg.BP, BN=cfg.BN,
                 IP=ip, num_warps=BWD_TILES["dcdb_warps"], **_launch_opts(BWD_TILES, "dcdb_maxnreg"))
    _bwd_dc_kernel[(b * NC * G * HS, NT)](
        C, dy, acs, seq, starts, B, pw, part, colpart, dC, dda_row,
        L, H, G, P, N, NC, B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2), ssb, ssl, pw.stride(0), part.stride(0),
        dC.stride(1), dC.stride(2), dC.stride(3), dC.stride(0), **flags)
    _bwd_db_kernel[(b * NC * G * HS, NT)](
        x, C, delta, acs, seq, dz, pw, dB,
        L, H, G, P, N, NC, x.stride(0), x.stride(1), x.stride(2), C.stride(0), C.stride(1), C.stride(2),
        ssb, ssl, pw.stride(0), dB.stride(1), dB.stride(2), dB.stride(3), dB.stride(0), **flags)
    if HS == 1:
        return dC[0], dB[0]
    return _into(dC.sum(0), dC_out, C.dtype), _into(dB.sum(0), dB_out, B.dtype)


def _into(t: Tensor, out: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, written into ``out`` when there is one."""
    return t.to(dtype) if out is None else out.copy_(t)


def ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx,
            initial_state, dx_out=None, ddt_out=None, dB_out=None, dC_out=None, saved=None):
    """The gradients (dx, ddt, dA, dB, dC, dD, ddt_bias, dinit); ``dx_out`` … ``dC_out`` (unit last
    stride, the shapes of x, dt, B, C): where those four go (slices of one buffer), else new tensors.
    ``saved``: what ``ssd_fwd(keep=True)`` kept, else it is recomputed (Δ, CB, the state pass)."""
    x, B, C, dy, dt = last_unit(x), last_unit(B), last_unit(C), last_unit(dy), last_unit(dt)
    if dy.dtype != x.dtype:
        dy = dy.to(x.dtype)
    if saved is None:
        b, L, H, P, G, N, T, NC, delta, acs = _prep(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_lo, dt_hi)
    else:
        b, L, H, P, G, N, T, NC = _dims(x, B, chunk_size)
        delta, acs, cb, starts = saved
    dims = (b, L, H, P, G, N, T, NC)
    cfg = _Cfg(T, P, N, b, H)
    ip = input_precision(x.dtype)
    if saved is None:
        cb, starts, _ = _chunk_prefix(x, B, C, delta, acs, seq_idx, initial_state, dims, cfg)
    seq, ssb, ssl = _seq_args(seq_idx, x)
    HSQ = seq_idx is not None
    # dS backwards over the chunks (E_c = Σ_t e^{a_t} dy_t ⊗ C_t formed on the way): dZ, dinit, dγ
    grid = (b * H, triton.cdiv(P, cfg.sBP), triton.cdiv(N, cfg.sBN))
    nblk = grid[1] * grid[2]
    dz = torch.empty((b, NC, H, P, N), device=x.device, dtype=state_dtype(x, B, C))
    dinit = torch.empty((b, H, P, N), device=x.device, dtype=torch.float32)
    dgam = torch.empty((b, H, NC, nblk), device=x.device, dtype=torch.float32)
    _states_bwd_kernel[grid](
        dy, C, acs, seq, starts, dfinal.contiguous() if dfinal is not None else dinit, dz, dinit, dgam,
        L, H, G, P, N, NC, nblk, dy.stride(0), dy.stride(1), dy.stride(2), C.stride(0), C.stride(1), C.stride(2),
        ssb, ssl, HAS_SEQ=HSQ, HAS_DFINAL=dfinal is not None, T=T, BP=cfg.sBP, BN=cfg.sBN, BK=cfg.sBK, IP=ip,
        num_warps=STATE_TILES["warps"], **_launch_opts(STATE_TILES))
    # per head: dx, dΔ through x, the end state's part of the log-decay gradient, dD
    dx = dx_out if dx_out is not None else torch.empty((b, L, H, P), device=x.device, dtype=x.dtype)
    # four per-position fp32 vectors, one allocation (each wrapper call costs the host a dispatch)
    ddt_x, q, dD_pos, dda_row = torch.empty((4, b, H, NC * T), device=x.device, dtype=torch.float32).unbind(0)
    _bwd_dx_kernel[(b * NC * H, T // cfg.bBM)](
        x, B, cb, dy, delta, acs, seq, dz, D if D is not None else A, dx, ddt_x, q, dD_pos,
        L, H, G, P, N, NC, x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1), B.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2), ssb, ssl, dx.stride(0), dx.stride(1), dx.stride(2),
        HAS_SEQ=HSQ, HAS_D=D is not None, T=T, BM=cfg.bBM, BK=cfg.bBK, BP=cfg.BP, BN=cfg.BNK, IP=ip,
        num_warps=BWD_TILES["dx_warps"], **_launch_opts(BWD_TILES, "dx_maxnreg"))
    # per group: dC (+ the log-decay gradient through the state and within the chunk) and dB
    dC, dB = _dcdb(x, B, C, dy, cb, delta, acs, seq_idx, starts, dz, dda_row, dims, cfg, dB_out, dC_out)
    # log-decay gradient per position → per step (reverse cumsum in the chunk) → Δ, A, dt, dt_bias,
    # in one kernel; the per-head sums come back per (batch, chunk) and are added here
    ddt = ddt_out if ddt_out is not None else torch.empty((b, L, H), device=x.device, dtype=dt.dtype)
    parts = torch.empty((3, b * NC, H), device=x.device, dtype=torch.float32)  # per (batch, chunk): dA, dt_bias, D
    dA_part, dbias_part, dD_part = parts.unbind(0)
    BH = min(16, triton.next_power_of_2(H))
    _bwd_tail_kernel[(b, NC, triton.cdiv(H, BH))](
        dda_row, q, dgam, ddt_x, delta, dD_pos, dt, dt_bias if dt_bias is not None else A, A,
        ddt, dA_part, dbias_part, dD_part, L, H, NC, nblk, dt.stride(0), dt.stride(1), ddt.stride(0), ddt.stride(1),
        HAS_BIAS=dt_bias is not None, HAS_D=D is not None, SOFTPLUS=dt_softplus, T=T, BH=BH,
        BB=triton.next_power_of_2(nblk), num_warps=4, **_dt_limits(dt_lo, dt_hi))
    # three reductions, not one over the stack: a custom op's outputs may not share storage
    ddt_bias = dbias_part.sum(0).to(dt_bias.dtype) if dt_bias is not None else None
    dD = dD_part.sum(0) if D is not None else None
    return dx, ddt, dA_part.sum(0).to(A.dtype), dB, dC, dD, ddt_bias, dinit


# ---- decode step ----------------------------------------------------------------------------

@triton.jit
def _ssm_update(state_ptr, dt_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, pb, h, p, n, pm, nm, x, b, c,
                sstb, ssth, sstp, sdtb, syb, syh, dt_lo, dt_hi, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr):
    """One SSM step for head h, rows p of the state: S ← e^{Δ·A} S + Δ·x ⊗ B, y = S·C (+ D·x).
    x (BP,), b and c (BN,) are fp32."""
    v = tl.load(dt_ptr + pb * sdtb + h).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        v = _softplus(v)
    if CLAMP:
        v = tl.minimum(tl.maximum(v, dt_lo), dt_hi)
    decay = tl.exp(v * tl.load(A_ptr + h).to(tl.float32))
    sp = state_ptr + pb * sstb + h * ssth + p[:, None] * sstp + n[None, :]
    m = pm[:, None] & nm[None, :]
    st = tl.load(sp, mask=m, other=0.0).to(tl.float32)
    new = st * decay + (v * x)[:, None] * b[None, :]
    tl.store(sp, new.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(new * c[None, :], 1)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + pb * syb + h * syh + p, y.to(y_ptr.dtype.element_ty), mask=pm)


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, H, G, P, N,
                 sstb, ssth, sstp, sxb, sxh, sdtb, sbb, sbg, scb, scg, syb, syh, dt_lo, dt_hi,
                 HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                 BP: tl.constexpr, BN: tl.constexpr):
    pb = tl.program_id(0)
    h = tl.program_id(1)
    p = tl.program_id(2) * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    pm = p < P
    nm = n < N
    g = h // (H // G)
    x = tl.load(x_ptr + pb * sxb + h * sxh + p, mask=pm, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + pb * sbb + g * sbg + n, mask=nm, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + pb * scb + g * scg + n, mask=nm, other=0.0).to(tl.float32)
    _ssm_update(state_ptr, dt_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, pb, h, p, n, pm, nm, x, b, c,
                sstb, ssth, sstp, sdtb, syb, syh, dt_lo, dt_hi, HAS_D, HAS_BIAS, SOFTPLUS, CLAMP)


@triton.jit
def _conv_ssd_step_kernel(cs_ptr, xin_ptr, cw_ptr, cbias_ptr, state_ptr, dt_ptr, A_ptr, D_ptr, bias_ptr, y_ptr,
                          count_ptr, H, G, P, N, scb, scd, sck, sxb, swd, swk, sstb, ssth, sstp, sdtb, syb, syh,
                          dt_lo, dt_hi, K: tl.constexpr, KP: tl.constexpr, HAS_CBIAS: tl.constexpr,
                          HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                          CLAMP: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """conv_step then ssd_step in one program a (batch, head, p block): the program convolves its
    own x channels (and writes their windows), and the group's B and C channels, which every
    program of the group needs. Their windows may only be written once all of those programs have
    read them: each counts itself in on an atomic counter after its reads, and the last one in
    writes the B/C windows and resets the counter."""
    pb = tl.program_id(0)
    h = tl.program_id(1)
    p = tl.program_id(2) * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    pm = p < P
    nm = n < N
    hpg = H // G
    g = h // hpg
    cx = h * P + p
    new_x, x = conv_window(cs_ptr, xin_ptr, cw_ptr, cbias_ptr, pb, cx, pm, scb, scd, sck, sxb, swd, swk, K, KP,
                           HAS_CBIAS, True)
    cbc = H * P + g * N + n
    ccc = H * P + G * N + g * N + n
    new_b, b = conv_window(cs_ptr, xin_ptr, cw_ptr, cbias_ptr, pb, cbc, nm, scb, scd, sck, sxb, swd, swk, K, KP,
                           HAS_CBIAS, True)
    new_c, c = conv_window(cs_ptr, xin_ptr, cw_ptr, cbias_ptr, pb, ccc, nm, scb, scd, sck, sxb, swd, swk, K, KP,
                           HAS_CBIAS, True)
    # every thread's reads of the old windows precede any write to them: a thread's window
    # overlaps its neighbours' (each reads k+1 where another writes k), and the count below
    # tells the group's other programs that this one has read the B/C windows
    tl.debug_barrier()
    store_window(cs_ptr, pb, cx, pm, scb, scd, sck, new_x, K, KP)
    arrived = tl.atomic_add(count_ptr + pb * G + g, 1)
    if arrived == hpg * tl.num_programs(2) - 1:  # the group's last program
        store_window(cs_ptr, pb, cbc, nm, scb, scd, sck, new_b, K, KP)
        store_window(cs_ptr, pb, ccc, nm, scb, scd, sck, new_c, K, KP)
        tl.atomic_xchg(count_ptr + pb * G + g, 0)
    _ssm_update(state_ptr, dt_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, pb, h, p, n, pm, nm, x, b, c,
                sstb, ssth, sstp, sdtb, syb, syh, dt_lo, dt_hi, HAS_D, HAS_BIAS, SOFTPLUS, CLAMP)


_GROUP_COUNTERS: dict = {}  # (device, batch × groups) → int32 zeros: the B/C window counters


def conv_ssd_step_(conv_state, ssm_state, xBC, dt, conv_weight, conv_bias, A, D, dt_bias, dt_softplus, dt_lo,
                   dt_hi):
    b, H, P, N = ssm_state.shape
    K = conv_state.shape[-1]
    G = (xBC.shape[-1] - H * P) // (2 * N)
    key = (xBC.device, b * G)
    if key not in _GROUP_COUNTERS:  # allocated on first use (a decode graph's eager warm-up)
        _GROUP_COUNTERS[key] = torch.zeros(b * G, device=xBC.device, dtype=torch.int32)
    counters = _GROUP_COUNTERS[key]
    xBC = last_unit(xBC)
    y = torch.empty((b, H, P), device=xBC.device, dtype=xBC.dtype)
    BN = triton.next_power_of_2(N)
    BP = max(1, min(triton.next_power_of_2(P), 4096 // BN))
    _conv_ssd_step_kernel[(b, H, triton.cdiv(P, BP))](
        conv_state, xBC, conv_weight, conv_bias if conv_bias is not None else conv_weight, ssm_state, dt, A,
        D if D is not None else A, dt_bias if dt_bias is not None else A, y, counters, H, G, P, N,
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), xBC.stride(0),
        conv_weight.stride(0), conv_weight.stride(1), ssm_state.stride(0), ssm_state.stride(1),
        ssm_state.stride(2), dt.stride(0), y.stride(0), y.stride(1),
        K=K, KP=triton.next_power_of_2(K), HAS_CBIAS=conv_bias is not None, HAS_D=D is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, BP=BP, BN=BN, num_warps=4,
        **_dt_limits(dt_lo, dt_hi))
    return y


def ssd_step_(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_lo, dt_hi):
    b, H, P, N = state.shape
    G = B.shape[1]
    x, B, C = last_unit(x), last_unit(B), last_unit(C)
    y = torch.empty((b, H, P), device=x.device, dtype=x.dtype)
    BN = triton.next_power_of_2(N)
    BP = max(1, min(triton.next_power_of_2(P), 4096 // BN))
    _step_kernel[(b, H, triton.cdiv(P, BP))](
        state, x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, y, H, G, P, N,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, BP=BP, BN=BN,
        num_warps=4, **_dt_limits(dt_lo, dt_hi))
    return y
