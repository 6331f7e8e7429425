"""Adapters over the ``mamba_ssm`` / ``causal_conv1d`` packages (when installed), with the
signatures of ``biomamba.kernels.reference``. Ops the packages lack, or settings they do not
support, fall back to the reference. Needs CUDA: their kernels do not run on the CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from biomamba.kernels import reference

INF = math.inf


def available() -> tuple[bool, str]:
    try:
        import causal_conv1d  # noqa: F401
        import mamba_ssm  # noqa: F401
    except ImportError as exc:
        return False, f"mamba_ssm / causal_conv1d not importable ({exc})"
    if not torch.cuda.is_available():
        return False, "mamba_ssm's kernels need CUDA"
    return True, f"mamba_ssm {getattr(mamba_ssm, '__version__', '?')}"


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF), seq_idx: Tensor | None = None,
             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, final = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,
                                         initial_states=initial_state, seq_idx=seq_idx, dt_softplus=dt_softplus,
                                         dt_limit=dt_limit, return_final_states=True)
    return y, final.float()


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
                  activation: str | None = "silu") -> Tensor:
    from causal_conv1d import causal_conv1d_fn

    if x.stride(-1) != 1:
        x = x.contiguous()
    y = causal_conv1d_fn(x.transpose(1, 2), weight, bias, seq_idx=seq_idx, activation=activation)
    return y.transpose(1, 2)


def gated_rmsnorm(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int) -> Tensor:
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    y = rmsnorm_fn(x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False)
    return y.to(torch.promote_types(x.dtype, weight.dtype))


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

    return rms_norm_fn(x, weight, None, eps=eps).to(torch.promote_types(x.dtype, weight.dtype))


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF)) -> Tensor:
    if dt_limit != (0.0, INF):  # selective_state_update has no Δ clamp
        return reference.ssd_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                  dt_limit=dt_limit)
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    b, h, p = x.shape
    n = state.shape[-1]
    return selective_state_update(
        state, x, dt[..., None].expand(b, h, p), A[:, None, None].expand(h, p, n), B, C,
        D=D[:, None].expand(h, p) if D is not None else None, z=None,
        dt_bias=dt_bias[:, None].expand(h, p) if dt_bias is not None else None, dt_softplus=dt_softplus)


def conv_step(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None,
              activation: str | None = "silu") -> Tensor:
    from causal_conv1d import causal_conv1d_update

    return causal_conv1d_update(x, conv_state, weight, bias, activation)
