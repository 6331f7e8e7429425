"""The Mamba-1 mixer (Gu & Dao, 2023), for the first BioMamba paper's ``mamba-130m`` base.

    [x, z] = in_proj(u);  x = SiLU(causal_conv1d(x))
    [dt_low, B, C] = x_proj(x);  Δ = softplus(dt_proj(dt_low))       per channel
    h_t = exp(Δ_t A) h_t−1 + Δ_t B_t x_t;  y_t = C_t h_t + D x_t       A = −exp(A_log), (d_inner, d_state)
    out = out_proj(y · SiLU(z))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biomamba.kernels import get_kernels
from biomamba.model.config import ModelConfig
from biomamba.model.linear import Linear
from biomamba.model.mamba2 import init_dt_bias


@dataclass
class Mamba1State:
    conv: Tensor  # (b, d_inner, d_conv)
    ssm: Tensor  # (b, d_inner, d_state), fp32 unless the model's ssm_state_dtype says otherwise


class Mamba1Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        di, n, r = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.in_proj = Linear(cfg.d_model, 2 * di, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(r ** -0.5), r ** -0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(di, cfg))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = Linear(di, cfg.d_model, bias=cfg.proj_bias)
        self.kernels = get_kernels("torch")

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r, n = self.cfg.resolved_dt_rank, self.cfg.d_state
        dt_low, B, C = self.x_proj(x).split([r, n, n], dim=-1)
        return dt_low @ self.dt_proj.weight.t(), B, C  # bias is added (in fp32) inside the scan

    def forward(self, u: Tensor, seq_idx: Tensor | None = None, state: Mamba1State | None = None) -> Tensor:
        K = self.kernels
        x, z = self.in_proj(u).chunk(2, dim=-1)
        if state is not None:
            k = self.cfg.d_conv
            tail = x[:, -k:]
            if seq_idx is not None:
                tail = tail * (seq_idx[:, -k:] == seq_idx[:, -1:])[..., None]
            state.conv.zero_()
            state.conv[:, :, k - tail.shape[1]:] = tail.transpose(1, 2).to(state.conv.dtype)
        x = K.causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, seq_idx=seq_idx, activation="silu")
        dt, B, C = self._ssm_inputs(x)
        y, final_state = K.selective_scan(x, dt, -torch.exp(self.A_log.float()), B, C, D=self.D, z=z,
                                          delta_bias=self.dt_proj.bias, delta_softplus=True, seq_idx=seq_idx)
        if state is not None:
            state.ssm.copy_(final_state)
        return self.out_proj(y)

    def step(self, xz: Tensor, state: Mamba1State) -> Tensor:
        """One token after in_proj (the caller fuses it with the norm before): xz (b, 2·d_inner) →
        the block's output (b, d_model), updating ``state`` in place."""
        K = self.kernels
        x, z = xz.chunk(2, dim=-1)
        x = K.conv_step(state.conv, x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, B, C = self._ssm_inputs(x)
        y, new_state = K.selective_scan(x[:, None], dt[:, None], -torch.exp(self.A_log.float()), B[:, None],
                                        C[:, None], D=self.D, z=z[:, None], delta_bias=self.dt_proj.bias,
                                        delta_softplus=True, initial_state=state.ssm)
        state.ssm.copy_(new_state)
        return self.out_proj(y[:, 0])

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype,
                  ssm_dtype: torch.dtype = torch.float32) -> Mamba1State:
        cfg = self.cfg
        return Mamba1State(
            conv=torch.zeros(batch_size, cfg.d_inner, cfg.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device, dtype=ssm_dtype),
        )
