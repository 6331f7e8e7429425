"""The Mamba2 mixer (Dao & Gu, 2024, "Transformers are SSMs", §7 block design).

    [z, xBC, dt] = in_proj(u)                        z, x: d_inner; B, C: ngroups·d_state; dt: nheads
    xBC          = SiLU(causal_conv1d(xBC))           depthwise, width d_conv, never across documents
    Δ            = clamp(softplus(dt + dt_bias))      per head
    A            = −exp(A_log)                        per head (scalar × identity)
    y            = SSD(x, Δ, A, B, C) + D·x           chunked scan; h_t = e^{Δ_t A} h_{t−1} + Δ_t B_t x_t
    out          = out_proj(RMSNorm_grouped(y · SiLU(z)))

All heavy ops go through ``self.kernels`` (the kernel seam), so the same module runs the
torch reference on a laptop and the Triton fast path on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biomamba.kernels import get_kernels
from biomamba.kernels.reference import split_zxbcdt
from biomamba.model.config import ModelConfig
from biomamba.model.linear import Linear


@dataclass
class Mamba2State:
    """Decoding state of one layer: the last d_conv conv inputs and the SSM state (fp32 unless
    the model's ``ssm_state_dtype`` says otherwise)."""

    conv: Tensor  # (b, conv_dim, d_conv)
    ssm: Tensor  # (b, nheads, headdim, d_state)


class GatedRMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


def inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def init_dt_bias(n: int, cfg: ModelConfig) -> Tensor:
    """Δ at init log-uniform in [dt_min, dt_max] (floored); the bias is its inverse softplus."""
    dt = torch.exp(torch.rand(n) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    return inverse_softplus(dt.clamp(min=cfg.dt_init_floor))


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        di, g, n, h = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads
        self.in_proj = Linear(cfg.d_model, 2 * di + 2 * g * n + h, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(h, cfg))
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(di)
        self.out_proj = Linear(di, cfg.d_model, bias=cfg.proj_bias)
        self.kernels = get_kernels("torch")
        self._decay_key: tuple[int, int] | None = None  # what ``_decay_rates`` last computed from

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return split_zxbcdt(zxbcdt, self.cfg.d_inner, self.cfg.ngroups, self.cfg.d_state)

    def forward(self, u: Tensor, seq_idx: Tensor | None = None, state: Mamba2State | None = None) -> Tensor:
        """u (b, l, d_model) → (b, l, d_model). With ``state``, the final states are written into it."""
        cfg = self.cfg
        zxbcdt = self.in_proj(u)
        if state is not None:
            self._save_conv_state(state, self._split(zxbcdt)[1], seq_idx)
        # conv → SSD → gated norm, one op on the Triton backend (reference.compose_mamba2_core elsewhere)
        y, final_state = self.kernels.mamba2_core(
            zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, -torch.exp(self.A_log.float()), self.D,
            self.dt_bias, self.norm.weight, d_inner=cfg.d_inner, ngroups=cfg.ngroups, d_state=cfg.d_state,
            headdim=cfg.headdim, chunk_size=self.kernels.ssd_chunk(cfg.chunk_size), dt_limit=cfg.dt_limit,
            eps=cfg.norm_eps, seq_idx=seq_idx)
        if state is not None:
            state.ssm.copy_(final_state)
        return self.out_proj(y)

    def _save_conv_state(self, state: Mamba2State, xBC: Tensor, seq_idx: Tensor | None) -> None:
        """Keep the last d_conv inputs of the last document (zeros before its start)."""
        k = self.cfg.d_conv
        tail = xBC[:, -k:]
        if seq_idx is not None:
            tail = tail * (seq_idx[:, -k:] == seq_idx[:, -1:])[..., None]
        tail = tail.transpose(1, 2)  # (b, conv_dim, ≤k)
        state.conv.zero_()
        state.conv[:, :, k - tail.shape[-1]:] = tail.to(state.conv.dtype)

    def step(self, zxbcdt: Tensor, state: Mamba2State) -> Tensor:
        """One token after in_proj (the caller fuses in_proj with the norm before it):
        zxbcdt (b, in_proj features) → the block's output (b, d_model), updating ``state`` in place."""
        cfg, K = self.cfg, self.kernels
        b = zxbcdt.shape[0]
        di, g = cfg.d_inner, cfg.ngroups
        z, xBC, dt = self._split(zxbcdt)
        y = K.conv_ssd_step(state.conv, state.ssm, xBC, dt, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                            self._decay_rates(), D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                            dt_limit=cfg.dt_limit)
        return K.gated_norm_linear(y.reshape(b, di), z, self.norm.weight, cfg.norm_eps, di // g,
                                   self.out_proj.weight, self.out_proj.bias)

    def _decay_rates(self) -> Tensor:
        """A = −exp(A_log) in fp32 for decoding, cached until A_log changes (its version counter
        moves on every in-place update): recomputing it costs a decode step three kernels a layer."""
        key = (self.A_log.data_ptr(), self.A_log._version)
        if self._decay_key != key:
            self._decay = -torch.exp(self.A_log.detach().float())
            self._decay_key = key
        return self._decay

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype,
                  ssm_dtype: torch.dtype = torch.float32) -> Mamba2State:
        cfg = self.cfg
        return Mamba2State(
            conv=torch.zeros(batch_size, cfg.conv_dim, cfg.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, cfg.nheads, cfg.headdim, cfg.d_state, device=device, dtype=ssm_dtype),
        )
