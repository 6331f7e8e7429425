"""The Triton fast path: every op of the kernel seam but ``selective_scan`` (Mamba-1), which
falls back to the torch reference (and the decoding ops ``add_rmsnorm``, ``norm_linear`` and
``gated_norm_linear``, forward only).

Same signatures and semantics as ``biomamba.kernels.reference``; forward and backward in
Triton, registered as ``torch.ops.biomamba.*`` custom ops with fake implementations (so
``torch.compile`` and FSDP2 see ordinary ops). Runs on CUDA, or on the CPU through Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before triton is imported (slow; for tests).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

INF = math.inf


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    if _interpreting():
        return True, "TRITON_INTERPRET=1: Triton's CPU interpreter (slow, for tests)"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU interpreter)"
    return True, f"CUDA {torch.cuda.get_device_name()}"


from biomamba.kernels.reference import (  # noqa: E402
    compose_conv_ssd_step, compose_gated_norm_linear, compose_mamba2_core, compose_norm_linear)
from biomamba.kernels.triton import gemv  # noqa: E402
from biomamba.kernels.triton import ops as _ops  # noqa: E402  (registers torch.ops.biomamba.*)


# The longest SSD chunk a model's mixers run at (``Kernels.ssd_chunk``): the checkpoints say 256,
# and 128 trains faster on an H200 (1.3B, 8 × 1,024: 189.6 → 184.0 ms; 130M, 16 × 1,024: 53.6 →
# 51.6 ms; bench/RESULTS.md, session 10 call 1): the quadratic work within chunks halves, the
# chunk states (their traffic and the memory kept for the backward) double.
SSD_MAX_CHUNK = 128


def _silu(activation: str | None) -> bool:
    if activation not in (None, "silu"):
        raise ValueError(f"unsupported activation {activation!r}")
    return activation == "silu"


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
                  activation: str | None = "silu") -> Tensor:
    return _ops.causal_conv1d_fwd(x, weight, bias, seq_idx, _silu(activation))


def _norm_out_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The reference's dtype (x and weight promoted), except under autocast: there the norms
    store the autocast dtype directly. Every norm of the model feeds a matmul, which would cast
    an fp32 output to exactly that (same rounding), so the values downstream are unchanged and
    a cast kernel and half the output bytes are saved, forward and backward."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


def gated_rmsnorm(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int) -> Tensor:
    return _ops.rmsnorm_fwd(x, z, weight, float(eps), int(group_size), _norm_out_dtype(x, weight))[0]


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _ops.rmsnorm_fwd(x, None, weight, float(eps), x.shape[-1], _norm_out_dtype(x, weight))[0]


def add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """A pre-norm block's residual join and the next norm, one kernel forward and one backward
    (the backward adds the gradient arriving through the residual stream and writes it in the
    block output's and the residual's dtypes). Under autocast the normed sum is stored in the
    autocast dtype, as the other norms (``_norm_out_dtype``)."""
    ac = torch.is_autocast_enabled(x.device.type)
    out_dtype = torch.get_autocast_dtype(x.device.type) if ac else weight.dtype
    return _ops.add_rmsnorm_fwd(x, residual, weight, float(eps), out_dtype)[:2]


# norm_linear and gated_norm_linear run as one fused norm + GEMV kernel for up to GEMV_ROWS rows
# (at most gemv.MAX_ROWS) and weights of up to GEMV_MAX_WEIGHT elements; otherwise, and while
# GEMV_ROWS is 0, as the norm kernel then cuBLAS. From the in-graph sweep (`sweep gemv`,
# bench/RESULTS.md, session 5 call A; µs a layer, fused against norm + cuBLAS): 130M at 1 row,
# in_proj 5.0 / 6.5 and out_proj 3.3 / 8.0; at 2 rows 6.4 / 6.6 and 4.3 / 7.9; at 4 rows in_proj
# loses (9.2 / 6.8). Where the weight is large, streaming it dominates and cuBLAS streams it
# faster: the LM head (130M: 34.3 / 25.9), 1.3B's in_proj (13.9 / 13.3, 17.4 M elements) and
# out_proj (18.6 / 11.3).
GEMV_ROWS = 2
GEMV_MAX_WEIGHT = 1 << 22


def _gemv_applies(x: Tensor, weight: Tensor, bias: Tensor | None, *others: Tensor) -> bool:
    """The fused kernels serve inference only: a few rows, no autocast, no gradient wanted."""
    rows = x.numel() // x.shape[-1]
    return (0 < rows <= min(GEMV_ROWS, gemv.MAX_ROWS) and weight.numel() <= GEMV_MAX_WEIGHT
            and (bias is None or bias.dtype == weight.dtype)
            and not torch.is_autocast_enabled(x.device.type)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, *others))))


_composed_norm_linear = compose_norm_linear(rmsnorm, add_rmsnorm)


def norm_linear(x: Tensor, residual: Tensor | None, norm_weight: Tensor, eps: float, weight: Tensor,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    if not (_gemv_applies(x, weight, bias, norm_weight, *([residual] if residual is not None else []))
            and norm_weight.dtype == weight.dtype):
        return _composed_norm_linear(x, residual, norm_weight, eps, weight, bias)
    d, n = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, d)
    if residual is None:
        y, total = _ops.norm_gemv_op(x2, norm_weight, float(eps), weight, bias), x
    else:
        y, total = _ops.add_norm_gemv_op(x2, residual.reshape(-1, d), norm_weight, float(eps), weight, bias)
        total = total.reshape(x.shape)
    return y.reshape(*x.shape[:-1], n), total


_composed_gated_norm_linear = compose_gated_norm_linear(gated_rmsnorm)


def gated_norm_linear(x: Tensor, z: Tensor, norm_weight: Tensor, eps: float, group_size: int, weight: Tensor,
                      bias: Tensor | None = None) -> Tensor:
    if not (_gemv_applies(x, weight, bias, z, norm_weight) and x.dtype == weight.dtype == norm_weight.dtype):
        return _composed_gated_norm_linear(x, z, norm_weight, eps, group_size, weight, bias)
    d, n = x.shape[-1], weight.shape[0]
    y = _ops.gated_norm_gemv_op(x.reshape(-1, d), z.reshape(-1, d), norm_weight, float(eps), int(group_size),
                                weight, bias)
    return y.reshape(*x.shape[:-1], n)


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF), seq_idx: Tensor | None = None,
             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    if chunk_size & (chunk_size - 1):
        from biomamba.kernels import reference  # the kernels tile by powers of two

        return reference.ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, dt_bias=dt_bias,
                                  dt_softplus=dt_softplus, dt_limit=dt_limit, seq_idx=seq_idx,
                                  initial_state=initial_state)
    return _ops.ssd_scan_fwd(x, dt, A, B, C, int(chunk_size), D, dt_bias, bool(dt_softplus), float(dt_limit[0]),
                             float(dt_limit[1]), seq_idx, initial_state)


_composed_mamba2_core = compose_mamba2_core(causal_conv1d, ssd_scan, gated_rmsnorm)


def mamba2_core(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None,
                dt_bias: Tensor | None, norm_weight: Tensor, *, d_inner: int, ngroups: int, d_state: int,
                headdim: int, chunk_size: int, dt_limit: tuple[float, float] = (0.0, INF), eps: float,
                seq_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One op (``biomamba.kernels.triton.mixer``): its backward writes in_proj's output gradient
    into one buffer; a chunk size that is no power of two goes to the composed ops."""
    if chunk_size & (chunk_size - 1):
        return _composed_mamba2_core(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, d_inner=d_inner,
                                     ngroups=ngroups, d_state=d_state, headdim=headdim, chunk_size=chunk_size,
                                     dt_limit=dt_limit, eps=eps, seq_idx=seq_idx)
    out, final = _ops.mamba2_core_fwd(
        zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, seq_idx, int(d_inner), int(ngroups),
        int(d_state), int(headdim), int(chunk_size), float(dt_limit[0]), float(dt_limit[1]), float(eps),
        _norm_out_dtype(zxbcdt, norm_weight))[:2]
    return out, final


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF)) -> Tensor:
    return _ops.ssd_step_op(state, x, dt, A, B, C, D, dt_bias, bool(dt_softplus), float(dt_limit[0]),
                            float(dt_limit[1]))


def conv_step(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None,
              activation: str | None = "silu") -> Tensor:
    return _ops.conv_step_op(conv_state, x, weight, bias, _silu(activation))


# conv_ssd_step as one kernel (True) or as conv_step + ssd_step (False): off until a GPU run shows
# the fused step faster (bench/gpu_bench.py `gen …-fused`)
FUSED_DECODE_STEP = False
_unfused_conv_ssd_step = compose_conv_ssd_step(conv_step, ssd_step)


def op_details() -> dict[str, str]:
    """How the ops with a switch run now, for `biomamba env`."""
    gemv_how = (f"norm + GEMV as one kernel up to {GEMV_ROWS} rows and {GEMV_MAX_WEIGHT} weight elements"
                if GEMV_ROWS else "norm kernel + cuBLAS")
    return {"norm_linear": gemv_how, "gated_norm_linear": gemv_how,
            "conv_ssd_step": "one fused kernel" if FUSED_DECODE_STEP else "conv_step + ssd_step; the fused kernel is off"}


def conv_ssd_step(conv_state: Tensor, ssm_state: Tensor, xBC: Tensor, dt: Tensor, conv_weight: Tensor,
                  conv_bias: Tensor | None, A: Tensor, *, D: Tensor | None = None, dt_bias: Tensor | None = None,
                  dt_softplus: bool = True, dt_limit: tuple[float, float] = (0.0, INF)) -> Tensor:
    if not FUSED_DECODE_STEP:
        return _unfused_conv_ssd_step(conv_state, ssm_state, xBC, dt, conv_weight, conv_bias, A, D=D,
                                      dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
    return _ops.conv_ssd_step_op(conv_state, ssm_state, xBC, dt, conv_weight, conv_bias, A, D, dt_bias,
                                 bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]))


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, *, ignore_index: int = -100,
                         chunk_rows: int = 4096) -> tuple[Tensor, Tensor]:
    """Σ cross-entropy(hidden @ weightᵀ, targets) over non-ignored rows, and their count.

    Matmuls run in the autocast dtype when autocast is on (as the reference's would), else in
    the inputs' dtype; the gradients are formed chunk by chunk during the forward.
    """
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    w = weight.to(dtype)
    t = targets.reshape(-1)
    grad = torch.is_grad_enabled()
    loss, count, _, _ = _ops.lce_fwd(h, w, t, int(ignore_index), int(chunk_rows),
                                     grad and h.requires_grad, grad and w.requires_grad)
    return loss, count
