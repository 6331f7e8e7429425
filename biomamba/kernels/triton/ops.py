"""The Triton kernels as PyTorch custom ops (namespace ``biomamba``), with fake implementations
and autograd, so that ``torch.compile`` traces through them as opaque nodes and FSDP2 / DTensor
code sees ordinary ops. Forward and backward are separate ops; autograd connects them.

No ``from __future__ import annotations`` here: ``torch.library`` reads the annotations.
"""

from typing import Optional

import torch
from torch import Tensor

from biomamba.kernels.triton import ce as _ce
from biomamba.kernels.triton import conv as _conv
from biomamba.kernels.triton import gemv as _gemv
from biomamba.kernels.triton import mixer as _mixer
from biomamba.kernels.triton import norm as _norm
from biomamba.kernels.triton import ssd as _ssd

lib = "biomamba"


# ---- causal conv1d ----------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                      silu: bool) -> Tensor:
    return _conv.conv_fwd(x, weight, bias, seq_idx, silu)


@causal_conv1d_fwd.register_fake
def _(x, weight, bias, seq_idx, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op(f"{lib}::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                      silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _conv.conv_bwd(dy, x, weight, bias, seq_idx, silu)


@causal_conv1d_bwd.register_fake
def _(dy, x, weight, bias, seq_idx, silu):
    db = bias.new_empty(bias.shape) if bias is not None else weight.new_empty(weight.shape[0])
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _conv_setup(ctx, inputs, output):
    x, weight, bias, seq_idx, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx)
    ctx.silu = silu


def _conv_backward(ctx, dy):
    x, weight, bias, seq_idx = ctx.saved_tensors
    dx, dw, db = causal_conv1d_bwd(dy, x, weight, bias, seq_idx, ctx.silu)
    return dx, dw, (db if bias is not None else None), None, None


causal_conv1d_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


# ---- (gated) RMSNorm --------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::rmsnorm_fwd", mutates_args=())
def rmsnorm_fwd(x: Tensor, z: Optional[Tensor], weight: Tensor, eps: float, group_size: int,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _norm.norm_fwd(x, z, weight, eps, group_size, out_dtype)


@rmsnorm_fwd.register_fake
def _(x, z, weight, eps, group_size, out_dtype):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty((rows, x.shape[-1] // group_size), dtype=torch.float32))


@torch.library.custom_op(f"{lib}::rmsnorm_bwd", mutates_args=())
def rmsnorm_bwd(dy: Tensor, x: Tensor, z: Optional[Tensor], weight: Tensor, rstd: Tensor,
                group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    dx, dz, dw = _norm.norm_bwd(dy, x, z, weight, rstd, group_size)
    return dx, (dz if z is not None else x.new_empty(0)), dw


@rmsnorm_bwd.register_fake
def _(dy, x, z, weight, rstd, group_size):
    return x.new_empty(x.shape), (z.new_empty(z.shape) if z is not None else x.new_empty(0)), weight.new_empty(weight.shape)


def _norm_setup(ctx, inputs, output):
    x, z, weight, eps, group_size, out_dtype = inputs
    ctx.set_materialize_grads(False)  # rstd has no gradient: no zero tensor for it
    ctx.save_for_backward(x, z, weight, output[1])
    ctx.group_size = group_size


def _norm_backward(ctx, dy, _drstd):
    if dy is None:
        return (None,) * 6
    x, z, weight, rstd = ctx.saved_tensors
    dx, dz, dw = rmsnorm_bwd(dy, x, z, weight, rstd, ctx.group_size)
    return dx, (dz if z is not None else None), dw, None, None, None


rmsnorm_fwd.register_autograd(_norm_backward, setup_context=_norm_setup)


@torch.library.custom_op(f"{lib}::add_rmsnorm_fwd", mutates_args=())
def add_rmsnorm_fwd(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return _norm.add_norm_fwd(x, residual, weight, eps, out_dtype)


@add_rmsnorm_fwd.register_fake
def _(x, residual, weight, eps, out_dtype):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype)),
            x.new_empty((rows, 1), dtype=torch.float32))


@torch.library.custom_op(f"{lib}::add_rmsnorm_bwd", mutates_args=())
def add_rmsnorm_bwd(dy: Tensor, dtotal: Optional[Tensor], total: Tensor, weight: Tensor, rstd: Tensor,
                    x_dtype: torch.dtype, res_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return _norm.add_norm_bwd(dy, dtotal, total, weight, rstd, x_dtype, res_dtype)


@add_rmsnorm_bwd.register_fake
def _(dy, dtotal, total, weight, rstd, x_dtype, res_dtype):
    return total.new_empty(total.shape, dtype=x_dtype), total.new_empty(total.shape, dtype=res_dtype), \
        weight.new_empty(weight.shape)


def _add_norm_setup(ctx, inputs, output):
    x, residual, weight, eps, out_dtype = inputs
    _, total, rstd = output
    ctx.save_for_backward(total, weight, rstd)
    ctx.dtypes = (x.dtype, residual.dtype)
    ctx.set_materialize_grads(False)  # the last join's sum has no gradient
    ctx.mark_non_differentiable(rstd)


def _add_norm_backward(ctx, dy, dtotal, _drstd):
    if dy is None and dtotal is None:
        return (None,) * 5
    total, weight, rstd = ctx.saved_tensors
    x_dtype, res_dtype = ctx.dtypes
    if dy is None:  # only the sum is used: the gradient passes through the add
        return dtotal.to(x_dtype), dtotal.to(res_dtype), None, None, None
    dx, dres, dw = add_rmsnorm_bwd(dy, dtotal, total, weight, rstd, x_dtype, res_dtype)
    return dx, dres, dw, None, None


add_rmsnorm_fwd.register_autograd(_add_norm_backward, setup_context=_add_norm_setup)


# ---- SSD scan ----------------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::ssd_scan_fwd", mutates_args=())
def ssd_scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Optional[Tensor],
                 dt_bias: Optional[Tensor], dt_softplus: bool, dt_lo: float, dt_hi: float,
                 seq_idx: Optional[Tensor], initial_state: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _ssd.ssd_fwd(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state)


@ssd_scan_fwd.register_fake
def _(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state):
    b, l, h, p = x.shape
    return x.new_empty(x.shape), x.new_empty((b, h, p, B.shape[-1]), dtype=torch.float32)


@torch.library.custom_op(f"{lib}::ssd_scan_bwd", mutates_args=())
def ssd_scan_bwd(dy: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 chunk_size: int, D: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool, dt_lo: float,
                 dt_hi: float, seq_idx: Optional[Tensor], initial_state: Optional[Tensor]
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, ddt, dA, dB, dC, dD, ddt_bias, dinit = _ssd.ssd_bwd(
        dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state)
    return (dx, ddt, dA, dB, dC, dD if dD is not None else x.new_empty(0),
            ddt_bias if ddt_bias is not None else x.new_empty(0),
            dinit.to(initial_state.dtype) if initial_state is not None else x.new_empty(0))


@ssd_scan_bwd.register_fake
def _(dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state):
    like = lambda t: t.new_empty(t.shape) if t is not None else x.new_empty(0)  # noqa: E731
    return like(x), like(dt), like(A), like(B), like(C), like(D), like(dt_bias), like(initial_state)


def _ssd_setup(ctx, inputs, output):
    x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, seq_idx, initial_state)
    ctx.args = (chunk_size, dt_softplus, dt_lo, dt_hi)
    ctx.set_materialize_grads(False)  # an unused final state: dfinal None, not a zero tensor


def _ssd_backward(ctx, dy, dfinal):
    if dy is None and dfinal is None:
        return (None,) * 13
    x, dt, A, B, C, D, dt_bias, seq_idx, initial_state = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    chunk_size, dt_softplus, dt_lo, dt_hi = ctx.args
    dx, ddt, dA, dB, dC, dD, ddt_bias, dinit = ssd_scan_bwd(
        dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_lo, dt_hi, seq_idx, initial_state)
    return (dx, ddt, dA, dB, dC, None, dD if D is not None else None, ddt_bias if dt_bias is not None else None,
            None, None, None, None, dinit if initial_state is not None else None)


ssd_scan_fwd.register_autograd(_ssd_backward, setup_context=_ssd_setup)


# ---- the Mamba2 mixer between its projections (conv → SSD → gated norm) ---------------------------

@torch.library.custom_op(f"{lib}::mamba2_core_fwd", mutates_args=())
def mamba2_core_fwd(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], A: Tensor, D: Optional[Tensor],
                    dt_bias: Optional[Tensor], norm_weight: Tensor, seq_idx: Optional[Tensor], d_inner: int,
                    ngroups: int, d_state: int, headdim: int, chunk_size: int, dt_lo: float, dt_hi: float, eps: float,
                    out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                     Tensor]:
    return _mixer.core_fwd(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, seq_idx, d_inner, ngroups,
                           d_state, headdim, chunk_size, dt_lo, dt_hi, eps, out_dtype)


@mamba2_core_fwd.register_fake
def _(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, seq_idx, d_inner, ngroups, d_state, headdim,
      chunk_size, dt_lo, dt_hi, eps, out_dtype):
    b, l, _ = zxbcdt.shape
    h, nc = d_inner // headdim, -(-l // chunk_size)
    f32 = dict(dtype=torch.float32)
    return (zxbcdt.new_empty((b, l, d_inner), dtype=out_dtype), zxbcdt.new_empty((b, h, headdim, d_state), **f32),
            zxbcdt.new_empty((b, l, d_inner + 2 * ngroups * d_state)), zxbcdt.new_empty((b, l, d_inner)),
            zxbcdt.new_empty((b * l, ngroups), **f32), zxbcdt.new_empty((b, h, nc * chunk_size), **f32),
            zxbcdt.new_empty((b, h, nc * chunk_size), **f32),
            zxbcdt.new_empty((b, nc, ngroups, chunk_size, chunk_size), **f32),
            zxbcdt.new_empty((b, nc, h, headdim, d_state)))  # ssd.state_dtype: x, B, C share zxbcdt's


@torch.library.custom_op(f"{lib}::mamba2_core_bwd", mutates_args=())
def mamba2_core_bwd(dout: Tensor, dfinal: Optional[Tensor], zxbcdt: Tensor, post: Tensor, y: Tensor, rstd: Tensor,
                    delta: Tensor, acs: Tensor, cb: Tensor, starts: Tensor, conv_weight: Tensor,
                    conv_bias: Optional[Tensor], A: Tensor, D: Optional[Tensor], dt_bias: Optional[Tensor],
                    norm_weight: Tensor, seq_idx: Optional[Tensor], d_inner: int, ngroups: int, d_state: int, headdim: int, chunk_size: int, dt_lo: float, dt_hi: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grad, dcw, dcb, dA, dD, ddt_bias, dnw = _mixer.core_bwd(
        dout, dfinal, zxbcdt, post, y, rstd, (delta, acs, cb, starts), conv_weight, conv_bias, A, D, dt_bias,
        norm_weight, seq_idx, d_inner, ngroups, d_state, headdim, chunk_size, dt_lo, dt_hi)
    none = zxbcdt.new_empty(0)
    return (grad, dcw, dcb, dA, dD if dD is not None else none, ddt_bias if ddt_bias is not None else none, dnw)


@mamba2_core_bwd.register_fake
def _(dout, dfinal, zxbcdt, post, y, rstd, delta, acs, cb, starts, conv_weight, conv_bias, A, D, dt_bias,
      norm_weight, seq_idx, d_inner, ngroups, d_state, headdim, chunk_size, dt_lo, dt_hi):
    like = lambda t: t.new_empty(t.shape) if t is not None else zxbcdt.new_empty(0)  # noqa: E731
    db = conv_bias.new_empty(conv_bias.shape) if conv_bias is not None else conv_weight.new_empty(conv_weight.shape[0])
    return like(zxbcdt), like(conv_weight), db, like(A), like(D), like(dt_bias), like(norm_weight)


def _core_setup(ctx, inputs, output):
    zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, seq_idx = inputs[:8]
    _, _, post, y, rstd, delta, acs, cb, starts = output
    ctx.save_for_backward(zxbcdt, post, y, rstd, delta, acs, cb, starts, conv_weight, conv_bias, A, D, dt_bias,
                          norm_weight, seq_idx)
    ctx.args = inputs[8:15]  # d_inner, ngroups, d_state, headdim, chunk_size, dt_lo, dt_hi
    # the kept tensors have no gradient and the final state often none: without this, autograd
    # fills a zero tensor for each (1.1 ms of a 130M step, 2.8 of a 1.3B one: session 9 profile)
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[2:])


def _core_backward(ctx, dout, dfinal, *_kept):
    if dout is None and dfinal is None:
        return (None,) * 17
    zxbcdt, post, y, rstd, delta, acs, cb, starts, conv_weight, conv_bias, A, D, dt_bias, norm_weight, seq_idx = \
        ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(y)
    grad, dcw, dcb, dA, dD, ddt_bias, dnw = mamba2_core_bwd(
        dout, dfinal, zxbcdt, post, y, rstd, delta, acs, cb, starts, conv_weight, conv_bias, A, D, dt_bias,
        norm_weight, seq_idx, *ctx.args)
    return (grad, dcw, dcb if conv_bias is not None else None, dA, dD if D is not None else None,
            ddt_bias if dt_bias is not None else None, dnw) + (None,) * 10


mamba2_core_fwd.register_autograd(_core_backward, setup_context=_core_setup)


# ---- decode steps (state updated in place) -------------------------------------------------------

@torch.library.custom_op(f"{lib}::ssd_step", mutates_args=("state",))
def ssd_step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                dt_bias: Optional[Tensor], dt_softplus: bool, dt_lo: float, dt_hi: float) -> Tensor:
    return _ssd.ssd_step_(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_lo, dt_hi)


@ssd_step_op.register_fake
def _(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_lo, dt_hi):
    return x.new_empty(x.shape)


@torch.library.custom_op(f"{lib}::conv_ssd_step", mutates_args=("conv_state", "ssm_state"))
def conv_ssd_step_op(conv_state: Tensor, ssm_state: Tensor, xBC: Tensor, dt: Tensor, conv_weight: Tensor,
                     conv_bias: Optional[Tensor], A: Tensor, D: Optional[Tensor], dt_bias: Optional[Tensor],
                     dt_softplus: bool, dt_lo: float, dt_hi: float) -> Tensor:
    return _ssd.conv_ssd_step_(conv_state, ssm_state, xBC, dt, conv_weight, conv_bias, A, D, dt_bias, dt_softplus,
                               dt_lo, dt_hi)


@conv_ssd_step_op.register_fake
def _(conv_state, ssm_state, xBC, dt, conv_weight, conv_bias, A, D, dt_bias, dt_softplus, dt_lo, dt_hi):
    return xBC.new_empty(ssm_state.shape[:3])


@torch.library.custom_op(f"{lib}::conv_step", mutates_args=("conv_state",))
def conv_step_op(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    return _conv.conv_step_(conv_state, x, weight, bias, silu)


@conv_step_op.register_fake
def _(conv_state, x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op(f"{lib}::norm_gemv", mutates_args=())
def norm_gemv_op(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _gemv.add_norm_gemv(x, None, norm_weight, eps, weight, bias)[0]


@norm_gemv_op.register_fake
def _(x, norm_weight, eps, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=weight.dtype)


@torch.library.custom_op(f"{lib}::add_norm_gemv", mutates_args=())
def add_norm_gemv_op(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, weight: Tensor,
                     bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _gemv.add_norm_gemv(x, residual, norm_weight, eps, weight, bias)


@add_norm_gemv_op.register_fake
def _(x, residual, norm_weight, eps, weight, bias):
    return (x.new_empty((x.shape[0], weight.shape[0]), dtype=weight.dtype),
            x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype)))


@torch.library.custom_op(f"{lib}::gated_norm_gemv", mutates_args=())
def gated_norm_gemv_op(x: Tensor, z: Tensor, norm_weight: Tensor, eps: float, group_size: int, weight: Tensor,
                       bias: Optional[Tensor]) -> Tensor:
    return _gemv.gated_norm_gemv(x, z, norm_weight, eps, group_size, weight, bias)


@gated_norm_gemv_op.register_fake
def _(x, z, norm_weight, eps, group_size, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=weight.dtype)


# ---- linear + cross-entropy ------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::linear_cross_entropy_fwd", mutates_args=())
def lce_fwd(h: Tensor, w: Tensor, t: Tensor, ignore_index: int, chunk_rows: int, need_dh: bool,
            need_dw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with torch.autocast(h.device.type, enabled=False):
        return _ce.lce_fwd(h, w, t, ignore_index, chunk_rows, need_dh, need_dw)


@lce_fwd.register_fake
def _(h, w, t, ignore_index, chunk_rows, need_dh, need_dw):
    return (h.new_empty((), dtype=torch.float32), t.new_empty((), dtype=torch.int64),
            h.new_empty(h.shape) if need_dh else h.new_empty(0),
            w.new_empty(w.shape, dtype=torch.float32) if need_dw else h.new_empty(0, dtype=torch.float32))


def _lce_setup(ctx, inputs, output):
    h, w, t, ignore_index, chunk_rows, need_dh, need_dw = inputs
    ctx.save_for_backward(output[2], output[3])
    ctx.need = (need_dh, need_dw)
    ctx.w_dtype = w.dtype


def _lce_backward(ctx, dloss, _dcount, _ddh, _ddw):
    dh, dw = ctx.saved_tensors
    need_dh, need_dw = ctx.need
    return (dh * dloss.to(dh.dtype) if need_dh else None, (dw * dloss).to(ctx.w_dtype) if need_dw else None,
            None, None, None, None, None)


lce_fwd.register_autograd(_lce_backward, setup_context=_lce_setup)

