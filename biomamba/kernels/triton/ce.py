"""Linear + cross-entropy without the full logits: chunks of rows, gradients formed in the forward.

For each chunk of rows: logits = h Wᵀ (one matmul, in the compute dtype: bf16 under autocast),
then one Triton program per row computes log-sum-exp and the loss and overwrites the logits
in place with their gradient softmax − onehot; dh = grad W and dW += gradᵀ h follow. The
backward only scales the stored dh, dW by the incoming scalar. Against the reference
(checkpointed fp32 logits per chunk, recomputed in the backward) this saves the fp32 copy
of each chunk's logits, its gradient, and the recomputed matmul.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ce_rows_kernel(logits_ptr, tgt_ptr, loss_ptr, V, stride, ignore_index,
                    WRITE_GRAD: tl.constexpr, BV: tl.constexpr):
    r = tl.program_id(0)
    row = logits_ptr + r.to(tl.int64) * stride
    tgt = tl.load(tgt_ptr + r)
    m = -float("inf")
    ssum = 0.0
    for v0 in range(0, V, BV):
        v = v0 + tl.arange(0, BV)
        z = tl.load(row + v, mask=v < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, 0))
        ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
    lse = m + tl.log(ssum)
    valid = tgt != ignore_index
    zt = tl.load(row + tl.where(valid, tgt, 0)).to(tl.float32)
    tl.store(loss_ptr + r, tl.where(valid, lse - zt, 0.0))
    if WRITE_GRAD:
        for v0 in range(0, V, BV):
            v = v0 + tl.arange(0, BV)
            vm = v < V
            z = tl.load(row + v, mask=vm, other=0.0).to(tl.float32)
            gz = tl.exp(z - lse) - tl.where(v == tgt, 1.0, 0.0)
            gz = tl.where(valid, gz, 0.0)
            tl.store(row + v, gz.to(logits_ptr.dtype.element_ty), mask=vm)


def lce_fwd(h: Tensor, w: Tensor, t: Tensor, ignore_index: int, chunk_rows: int,
            need_dh: bool, need_dw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """h (R, d), w (V, d), t (R,) → (Σ loss fp32, count, dh (R,d) or empty, dW fp32 (V,d) or empty)."""
    R, d = h.shape
    V = w.shape[0]
    grad = need_dh or need_dw
    dh = torch.empty_like(h) if need_dh else h.new_empty(0)
    dw = torch.zeros((V, d), device=h.device, dtype=torch.float32) if need_dw else h.new_empty(0, dtype=torch.float32)
    losses = torch.empty(R, device=h.device, dtype=torch.float32)
    BV = min(4096, triton.next_power_of_2(V))
    for s in range(0, R, chunk_rows):
        hc, tc = h[s:s + chunk_rows], t[s:s + chunk_rows]
        logits = hc @ w.t()
        _ce_rows_kernel[(hc.shape[0],)](logits, tc, losses[s:s + chunk_rows], V, logits.stride(0), ignore_index,
                                        WRITE_GRAD=grad, BV=BV, num_warps=8)
        if need_dh:
            torch.mm(logits, w, out=dh[s:s + chunk_rows])
        if need_dw:
            dw.addmm_(logits.t(), hc) if logits.dtype == torch.float32 else dw.add_(logits.t() @ hc)
    count = (t != ignore_index).sum()
    return losses.sum(), count, dh, dw
