"""The ``mamba_ssm`` backend (adapters over mamba_ssm / causal_conv1d) against the torch reference.

Runs only where those packages import and CUDA is present (the GPU machine with the peer wheels).
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the mamba_ssm backend needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")
pytest.importorskip("causal_conv1d")

from biomamba.kernels import get_kernels, reference as R  # noqa: E402

M = get_kernels("mamba_ssm")
DEV = "cuda"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("with_seq", [False, True])
def test_ssd_scan_and_conv(with_seq):
    b, l, h, p, n, g = 2, 700, 8, 64, 128, 2
    x = torch.randn(b, l, h, p, device=DEV, dtype=torch.bfloat16)
    dt = torch.randn(b, l, h, device=DEV) * 0.5 - 1
    A, D, bias = -torch.rand(h, device=DEV) - 0.5, torch.randn(h, device=DEV), torch.randn(h, device=DEV) * 0.3
    B = torch.randn(b, l, g, n, device=DEV, dtype=torch.bfloat16)
    C = torch.randn(b, l, g, n, device=DEV, dtype=torch.bfloat16)
    seq = None
    if with_seq:
        seq = torch.zeros(b, l, dtype=torch.int32, device=DEV)
        seq[:, 300:] = 1
    kw = dict(chunk_size=256, D=D, dt_bias=bias, seq_idx=seq)
    y, fin = M.ssd_scan(x, dt, A, B, C, **kw)
    y_r, fin_r = R.ssd_scan(x.float(), dt, A, B.float(), C.float(), **kw)
    assert rel(y, y_r) < 1e-2 and rel(fin, fin_r) < 1e-2
    xc = torch.randn(b, l, 300, device=DEV, dtype=torch.bfloat16)[..., 20:276]
    w, cb = torch.randn(256, 4, device=DEV), torch.randn(256, device=DEV)
    assert rel(M.causal_conv1d(xc, w, cb, seq_idx=seq), R.causal_conv1d(xc.float(), w, cb, seq_idx=seq)) < 1e-2


def test_norms_and_steps():
    x, z = list(torch.randn(2, 64, 512, device=DEV, dtype=torch.bfloat16))
    w = 1 + 0.1 * torch.randn(512, device=DEV)
    assert rel(M.gated_rmsnorm(x, z, w, 1e-5, 128), R.gated_rmsnorm(x.float(), z.float(), w, 1e-5, 128)) < 1e-2
    assert rel(M.rmsnorm(x, w, 1e-5), R.rmsnorm(x.float(), w, 1e-5)) < 1e-2
    b, h, p, n = 3, 8, 64, 128
    st = torch.randn(b, h, p, n, device=DEV)
    st_r = st.clone()
    args = (torch.randn(b, h, p, device=DEV), torch.randn(b, h, device=DEV), -torch.rand(h, device=DEV) - 0.5,
            torch.randn(b, 2, n, device=DEV), torch.randn(b, 2, n, device=DEV))
    kw = dict(D=torch.randn(h, device=DEV), dt_bias=torch.randn(h, device=DEV))
    assert rel(M.ssd_step(st, *args, **kw), R.ssd_step(st_r, *args, **kw)) < 1e-4 and rel(st, st_r) < 1e-4
    cs = torch.randn(b, 256, 4, device=DEV)
    cs_r = cs.clone()
    xx, w4, b4 = torch.randn(b, 256, device=DEV), torch.randn(256, 4, device=DEV), torch.randn(256, device=DEV)
    assert rel(M.conv_step(cs, xx, w4, b4), R.conv_step(cs_r, xx, w4, b4)) < 1e-4 and torch.allclose(cs, cs_r)
