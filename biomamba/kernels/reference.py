"""Reference implementations of every kernel-seam op, in plain PyTorch.

These define the semantics the fast paths must reproduce; they run anywhere (CPU included)
and compute in fp32 internally whatever the input dtype. Shapes (b batch, l length, h heads,
p head dim, g groups, n state size, d channels, k conv width):

* ``ssd_scan``       x (b,l,h,p), dt (b,l,h), A (h), B/C (b,l,g,n) → y (b,l,h,p), final state (b,h,p,n)
* ``causal_conv1d``  x (b,l,d), weight (d,k), bias (d) → y (b,l,d)
* ``gated_rmsnorm``  x, z (..., d), weight (d) → y (..., d)
* ``ssd_step`` / ``conv_step``: one decoding step, updating the state tensors in place.
* ``norm_linear`` / ``gated_norm_linear``: a decoding step's norms with the projection after each.

``seq_idx`` (b,l) int marks documents in a packed row: neither the convolution window nor
the SSM state crosses a change of ``seq_idx``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

INF = math.inf


def discretize_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool,
                  dt_limit: tuple[float, float]) -> Tensor:
    """Δ = clamp(softplus(dt + dt_bias)), in fp32."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, INF):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _segsum(a: Tensor) -> Tensor:
    """out[..., i, j] = a[j+1] + … + a[i] for j ≤ i, −inf above the diagonal (stable: no cumsum differences)."""
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # [..., i, j] = a[i]
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    s = a.masked_fill(~strictly_lower, 0.0).cumsum(dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return s.masked_fill(~lower, -INF)


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF), seq_idx: Tensor | None = None,
             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked state-space duality (Mamba2 paper, §6): quadratic inside chunks, recurrent across.

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_tᵀ,   y_t = C_t h_t + D x_t.
    Returns ``(y, final_state)``; the final state is that of the last position (its document).
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    out_dtype = x.dtype
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b,l,h)
    Bh = B.float().repeat_interleave(h // g, dim=2)
    Ch = C.float().repeat_interleave(h // g, dim=2)
    xf = x.float()
    T = chunk_size
    pad = (-l) % T
    if pad:  # padded steps have Δ = 0: they neither decay nor feed the state
        xf, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bh, Ch))
        delta = F.pad(delta, (0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c = (l + pad) // T
    X = (xf * delta[..., None]).reshape(b, c, T, h, p)
    Bc, Cc = Bh.reshape(b, c, T, h, n), Ch.reshape(b, c, T, h, n)
    dA = (delta * A.float()).reshape(b, c, T, h).permute(0, 3, 1, 2)  # (b,h,c,T)
    A_cum = dA.cumsum(-1)

    seg = _segsum(dA)  # (b,h,c,T,T)
    if seq_idx is not None:
        sc = seq_idx.reshape(b, c, T)
        same_doc = (sc[:, :, :, None] == sc[:, :, None, :])[:, None]  # (b,1,c,T,T)
        seg = seg.masked_fill(~same_doc, -INF)
    # 1. within each chunk: y_i = Σ_{j≤i} (C_i·B_j) exp(A_cum_i − A_cum_j) Δ_j x_j
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, seg.exp(), X)

    # 2. each chunk's own contribution to the state at its last position
    decay_to_end = (A_cum[..., -1:] - A_cum).exp()  # (b,h,c,T)
    if seq_idx is not None:
        decay_to_end = decay_to_end * (sc == sc[:, :, -1:])[:, None]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, X)

    # 3. carry states across chunks; a state survives a chunk only if its document does
    state = (initial_state.float() if initial_state is not None
             else torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device))
    state_doc = seq_idx[:, 0] if seq_idx is not None else None
    start_states = []
    for ci in range(c):
        start_states.append(state)
        carry = A_cum[:, :, ci, -1].exp()  # (b,h)
        if seq_idx is not None:
            end_doc = sc[:, ci, -1]
            carry = carry * (end_doc == state_doc)[:, None]
            state_doc = end_doc
        state = chunk_states[:, ci] + carry[..., None, None] * state
    starts = torch.stack(start_states, dim=1)  # (b,c,h,p,n)

    # 4. the carried-in state's contribution to each position of the chunk
    decay_from_start = A_cum.exp()  # (b,h,c,T)
    if seq_idx is not None:
        prev_doc = torch.cat([seq_idx[:, :1], sc[:, :-1, -1]], dim=1)  # document of each carried-in state
        decay_from_start = decay_from_start * (sc == prev_doc[:, :, None])[:, None]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, starts, decay_from_start)

    y = y.reshape(b, c * T, h, p)[:, :l]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(out_dtype), state


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
                  activation: str | None = "silu") -> Tensor:
    """Depthwise causal convolution over time, channels last: y_t = Σ_j w_j x_{t−k+1+j} (+ SiLU)."""
    b, l, d = x.shape
    k = weight.shape[-1]
    xf = x.float()
    w = weight.float()
    y = torch.zeros_like(xf) if bias is None else bias.float().expand(b, l, d).clone()
    for s in range(k):  # s = how far back the tap looks
        if s >= l:
            break
        shifted = F.pad(xf, (0, 0, s, 0))[:, :l]
        if seq_idx is not None and s > 0:
            same = torch.zeros(b, l, dtype=torch.bool, device=x.device)
            same[:, s:] = seq_idx[:, s:] == seq_idx[:, :-s]
            shifted = shifted * same[..., None]
        y = y + shifted * w[:, k - 1 - s]
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported activation {activation!r}")
    return y.to(x.dtype)


def gated_rmsnorm(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int) -> Tensor:
    """RMSNorm(x · SiLU(z)) over groups of ``group_size`` channels, times ``weight`` (norm after gate)."""
    dtype = x.dtype
    xf = x.float()
    if z is not None:
        xf = xf * F.silu(z.float())
    shape = xf.shape
    grouped = xf.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * grouped.reshape(shape).to(dtype)


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """A pre-norm block's join: (rmsnorm(residual + x), residual + x). The sum keeps the promoted
    dtype of the two (fp32 with an fp32 residual stream); the norm reads it in weight's dtype."""
    total = residual + x
    return rmsnorm(total.to(weight.dtype), weight, eps), total


def compose_norm_linear(rmsnorm_fn, add_rmsnorm_fn):
    """``norm_linear`` made of a backend's own norms and ``F.linear``."""

    def norm_linear(x: Tensor, residual: Tensor | None, norm_weight: Tensor, eps: float, weight: Tensor,
                    bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A decode step's residual join and the projection after the next norm: (F.linear(
        rmsnorm(s), weight, bias), s) with s = residual + x as ``add_rmsnorm`` forms it, or s = x
        without a residual (the first block); the norm reads s in ``norm_weight``'s dtype."""
        if residual is None:
            h, total = rmsnorm_fn(x.to(norm_weight.dtype), norm_weight, eps), x
        else:
            h, total = add_rmsnorm_fn(x, residual, norm_weight, eps)
        return F.linear(h, weight, bias), total
    return norm_linear


def compose_gated_norm_linear(gated_rmsnorm_fn):
    """``gated_norm_linear`` made of a backend's own ``gated_rmsnorm`` and ``F.linear``."""

    def gated_norm_linear(x: Tensor, z: Tensor, norm_weight: Tensor, eps: float, group_size: int, weight: Tensor,
                          bias: Tensor | None = None) -> Tensor:
        """A Mamba2 decode step's gated norm and out_proj: F.linear(gated_rmsnorm(x, z), weight, bias)."""
        return F.linear(gated_rmsnorm_fn(x, z, norm_weight, eps, group_size), weight, bias)
    return gated_norm_linear


def split_zxbcdt(zxbcdt: Tensor, d_inner: int, ngroups: int, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """in_proj's output → views z (…, d_inner), xBC (…, d_inner + 2·ngroups·d_state), dt (…, heads)."""
    gn = ngroups * d_state
    return zxbcdt.split([d_inner, d_inner + 2 * gn, zxbcdt.shape[-1] - 2 * d_inner - 2 * gn], dim=-1)


def split_xbc(xbc: Tensor, d_inner: int, ngroups: int, d_state: int, headdim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The conv's output (b, l, d_inner + 2·ngroups·d_state) → views x (b, l, h, p), B and C (b, l, g, n)."""
    gn = ngroups * d_state
    x, B, C = xbc.split([d_inner, gn, gn], dim=-1)
    return (x.unflatten(-1, (d_inner // headdim, headdim)), B.unflatten(-1, (ngroups, d_state)),
            C.unflatten(-1, (ngroups, d_state)))


def compose_mamba2_core(conv_fn, ssd_fn, gated_rmsnorm_fn):
    """``mamba2_core`` made of a backend's own conv, SSD scan and gated norm."""

    def mamba2_core(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None,
                    dt_bias: Tensor | None, norm_weight: Tensor, *, d_inner: int, ngroups: int, d_state: int,
                    headdim: int, chunk_size: int, dt_limit: tuple[float, float] = (0.0, math.inf), eps: float,
                    seq_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A Mamba2 mixer between its projections, from in_proj's output [z, xBC, dt]: the gated
        norm of SSD(SiLU(conv(xBC))) with z, (b, l, d_inner), and the final SSM state (b, h, p, n).
        Δ = softplus(dt + dt_bias), clamped to ``dt_limit``, as the Mamba2 block always has it."""
        b, l, _ = zxbcdt.shape
        z, xBC, dt = split_zxbcdt(zxbcdt, d_inner, ngroups, d_state)
        post = conv_fn(xBC, conv_weight, conv_bias, seq_idx=seq_idx, activation="silu")
        x, B, C = split_xbc(post, d_inner, ngroups, d_state, headdim)
        y, final = ssd_fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True,
                          dt_limit=dt_limit, seq_idx=seq_idx)
        return gated_rmsnorm_fn(y.reshape(b, l, d_inner), z, norm_weight, eps, d_inner // ngroups), final
    return mamba2_core


norm_linear = compose_norm_linear(rmsnorm, add_rmsnorm)
gated_norm_linear = compose_gated_norm_linear(gated_rmsnorm)
mamba2_core = compose_mamba2_core(causal_conv1d, ssd_scan, gated_rmsnorm)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
             D: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True,
             dt_limit: tuple[float, float] = (0.0, INF)) -> Tensor:
    """One recurrent step. state (b,h,p,n) is updated in place; x (b,h,p), dt (b,h), B/C (b,g,n)."""
    h = x.shape[1]
    g = B.shape[1]
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b,h)
    decay = (delta * A.float()).exp()
    Bh = B.float().repeat_interleave(h // g, dim=1)
    Ch = C.float().repeat_interleave(h // g, dim=1)
    xf = x.float()
    new = state.float() * decay[..., None, None] + (delta[..., None] * xf)[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + xf * D.float()[:, None]
    return y.to(x.dtype)


def conv_step(conv_state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None,
              activation: str | None = "silu") -> Tensor:
    """One step of the causal conv. conv_state (b,d,k) holds the last k inputs; updated in place."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype)


def compose_conv_ssd_step(conv_step_fn, ssd_step_fn):
    """``conv_ssd_step`` made of a backend's own ``conv_step`` and ``ssd_step`` (what a backend
    without a fused version runs)."""

    def conv_ssd_step(conv_state: Tensor, ssm_state: Tensor, xBC: Tensor, dt: Tensor, conv_weight: Tensor,
                      conv_bias: Tensor | None, A: Tensor, *, D: Tensor | None = None, dt_bias: Tensor | None = None,
                      dt_softplus: bool = True, dt_limit: tuple[float, float] = (0.0, INF)) -> Tensor:
        """A Mamba2 decode step after in_proj: the causal conv + SiLU over xBC (b, H·P + 2·G·N),
        then the SSM step; both states updated in place; returns y (b, H, P)."""
        b, h, p, n = ssm_state.shape
        g = (xBC.shape[-1] - h * p) // (2 * n)
        xBC = conv_step_fn(conv_state, xBC, conv_weight, conv_bias, activation="silu")
        x, B, C = xBC.split([h * p, g * n, g * n], dim=-1)
        return ssd_step_fn(ssm_state, x.reshape(b, h, p), dt, A, B.reshape(b, g, n), C.reshape(b, g, n), D=D,
                           dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
    return conv_ssd_step


conv_ssd_step = compose_conv_ssd_step(conv_step, ssd_step)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, *, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   seq_idx: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-1 selective scan, sequential: u/delta/z (b,l,d), A (d,n), B/C (b,l,n) → y (b,l,d), state (b,d,n)."""
    b, l, d = u.shape
    delta = discretize_dt(delta, delta_bias, delta_softplus, (0.0, INF))
    Af = A.float()
    uf = u.float()
    Bf, Cf = B.float(), C.float()
    state = (initial_state.float() if initial_state is not None
             else torch.zeros(b, d, A.shape[1], dtype=torch.float32, device=u.device))
    ys = []
    for t in range(l):
        decay = (delta[:, t, :, None] * Af).exp()
        if seq_idx is not None and t > 0:
            decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1])[:, None, None]
        state = decay * state + (delta[:, t] * uf[:, t])[..., None] * Bf[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", state, Cf[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + uf * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), state


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, *, ignore_index: int = -100,
                         chunk_rows: int = 4096) -> tuple[Tensor, Tensor]:
    """Σ cross-entropy(hidden @ weightᵀ, targets) over non-ignored rows, and their count.

    Logits are formed ``chunk_rows`` rows at a time in fp32 and recomputed in the backward
    (activation checkpointing per chunk), so the full (rows × vocab) fp32 logits and their
    gradient never exist at once. hidden (..., d), weight (V, d), targets (...) long.
    """
    from torch.utils.checkpoint import checkpoint

    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    count = (t != ignore_index).sum()

    def chunk_loss(hc: Tensor, tc: Tensor, w: Tensor) -> Tensor:
        logits = (hc @ w.t()).float()
        return F.cross_entropy(logits, tc, ignore_index=ignore_index, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_rows):
        hc, tc = h[start:start + chunk_rows], t[start:start + chunk_rows]
        if torch.is_grad_enabled() and (hc.requires_grad or weight.requires_grad):
            total = total + checkpoint(chunk_loss, hc, tc, weight, use_reentrant=False)
        else:
            total = total + chunk_loss(hc, tc, weight)
    return total, count
