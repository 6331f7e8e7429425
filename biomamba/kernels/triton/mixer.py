"""The Mamba2 mixer between its two projections as one op: SiLU(conv(xBC)) → SSD → gated RMSNorm,
from in_proj's output [z, xBC, dt].

Why one op: as three ops, autograd joins the gradients of the pieces that the forward split
apart with two concatenations a layer ([dx, dB, dC] into the conv output's gradient, and [dz,
dxBC, ddt] into in_proj's): 2.1 ms of a 130M training step and 5.1 of a 1.3B one (H200, session
6 and 7 profiles, bench/RESULTS.md). Here each backward kernel writes its slice of one buffer. And the
forward keeps what the SSD backward would recompute (Δ, CB, the chunks' starting states: the
forward pass over the chunks a layer); the states in the activations' dtype
(ssd.state_dtype), 2·b·l·h·p·n / chunk_size bytes a layer in bf16 (25 MB at the 130M shape,
16 × 1,024; 34 MB at 1.3B, 8 × 1,024).
"""

from __future__ import annotations

import torch
from torch import Tensor

from biomamba.kernels.reference import split_xbc, split_zxbcdt
from biomamba.kernels.triton import conv, norm, ssd


def core_fwd(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None,
             dt_bias: Tensor | None, norm_weight: Tensor, seq_idx: Tensor | None, d_inner: int, ngroups: int,
             d_state: int, headdim: int, chunk_size: int, dt_lo: float, dt_hi: float, eps: float,
             out_dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(the normed output (b, l, d_inner), the final SSM state, and for the backward: the conv
    output, the SSD output, the norm's reciprocal RMS, and the SSD's Δ, log-decay cumsum, CB and
    chunk starting states, which its backward would otherwise recompute)."""
    b, l, _ = zxbcdt.shape
    z, xBC, dt = split_zxbcdt(zxbcdt, d_inner, ngroups, d_state)
    post = conv.conv_fwd(xBC, conv_weight, conv_bias, seq_idx, True)
    x, B, C = split_xbc(post, d_inner, ngroups, d_state, headdim)
    y, final, kept = ssd.ssd_fwd(x, dt, A, B, C, chunk_size, D, dt_bias, True, dt_lo, dt_hi, seq_idx, None,
                                 keep=True)
    y = y.view(b, l, d_inner)
    out, rstd = norm.norm_fwd(y, z, norm_weight, eps, d_inner // ngroups, out_dtype)
    return (out, final, post, y, rstd, *kept)


def core_bwd(dout: Tensor, dfinal: Tensor | None, zxbcdt: Tensor, post: Tensor, y: Tensor, rstd: Tensor,
             kept: tuple[Tensor, Tensor, Tensor, Tensor], conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None, dt_bias: Tensor | None,
             norm_weight: Tensor, seq_idx: Tensor | None, d_inner: int, ngroups: int, d_state: int, headdim: int,
             chunk_size: int, dt_lo: float, dt_hi: float
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """(d zxbcdt, d conv weight, d conv bias, dA, dD, d dt_bias, d norm weight)."""
    b, l, F = zxbcdt.shape
    z, xBC, dt = split_zxbcdt(zxbcdt, d_inner, ngroups, d_state)
    grad = torch.empty((b, l, F), device=zxbcdt.device, dtype=zxbcdt.dtype)
    gz, gxbc, gdt = split_zxbcdt(grad, d_inner, ngroups, d_state)
    dy, _, dnorm_w = norm.norm_bwd(dout, y, z, norm_weight, rstd, d_inner // ngroups,
                                   dz_out=gz.view(b * l, d_inner))
    dpost = torch.empty_like(post)
    x, B, C = split_xbc(post, d_inner, ngroups, d_state, headdim)
    gx, gB, gC = split_xbc(dpost, d_inner, ngroups, d_state, headdim)
    _, _, dA, _, _, dD, ddt_bias, _ = ssd.ssd_bwd(
        dy.view(x.shape), dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, True, dt_lo, dt_hi, seq_idx, None,
        dx_out=gx, ddt_out=gdt, dB_out=gB, dC_out=gC, saved=kept)
    _, dconv_w, dconv_b = conv.conv_bwd(dpost, xBC, conv_weight, conv_bias, seq_idx, True, dx_out=gxbc)
    return grad, dconv_w, dconv_b, dA, dD, ddt_bias, dnorm_w
