"""Triton kernels against the torch reference: outputs and gradients, fresh random inputs.

Runs natively on a CUDA machine (real shapes) and on the CPU through Triton's interpreter at
tiny shapes. The interpreter must be switched on before triton is imported, so on a CPU-only
machine ``test_kernels_interpret.py`` runs this file in a subprocess with
``TRITON_INTERPRET=1``; in the parent pytest process (no CUDA, no interpreter) it is skipped.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CUDA = torch.cuda.is_available() and not INTERPRET
if not (CUDA or INTERPRET):
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 (test_kernels_interpret.py runs this file that way)",
                allow_module_level=True)
pytest.importorskip("triton")

from biomamba.kernels import get_kernels, reference as R  # noqa: E402

K = get_kernels("triton")
DEV = "cuda" if CUDA else "cpu"
# (batch, heads, headdim, state, chunk, lengths): one length divides the chunk, one does not
SSD_SHAPE = dict(b=2, h=24, p=64, n=128, T=256, lengths=(512, 777)) if CUDA else \
    dict(b=2, h=4, p=8, n=16, T=16, lengths=(32, 37))
CONV_SHAPE = dict(b=2, d=1792, lengths=(1024, 1000)) if CUDA else dict(b=2, d=24, lengths=(16, 21))
NORM_SHAPE = dict(rows=(4, 512), d=1536) if CUDA else dict(rows=(3, 5), d=24)
TOL = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel's result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def seq_ids(b: int, l: int, gen: torch.Generator) -> torch.Tensor:
    """Random document boundaries, a few per row (some rows with one long document)."""
    seq = torch.zeros(b, l, dtype=torch.int32)
    for i in range(b):
        cuts = torch.randint(1, l, (i + 1,), generator=gen)
        for c in cuts.tolist():
            seq[i, c:] += 1
    return seq.to(DEV)


def leaves(*ts: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    return [t.detach().to(DEV, dtype or t.dtype).requires_grad_(t.is_floating_point()) for t in ts]


def check_grads(got: list[torch.Tensor], ref: list[torch.Tensor], tol: float, names: list[str],
                wider: dict[str, float] | None = None) -> None:
    for g, r, name in zip(got, ref, names):
        t = tol * (wider or {}).get(name, 1.0)
        if r.grad is None:
            assert g.grad is None, name
            continue
        assert g.grad is not None, f"no gradient for {name}"
        e = rel(g.grad, r.grad)
        assert e < t, f"d{name}: relative error {e:.2e} ≥ {t:.0e}"


@pytest.mark.parametrize("tiles", [None, "narrow-inner", "head-split", "register-cap", "pw-tiles"])
def test_ssd_scan_without_optionals(tiles, monkeypatch):
    """No D, no dt_bias, no initial state, no clamp, final state unused (its gradient is None);
    also with the forward output and backward kernels' inner block half their row block (the
    GPU defaults' shape for the output and dx kernels, 64/32), with a group's heads in one
    dC/dB program or split over two (their partial sums added afterwards), with the backward
    kernels' registers capped (on the GPU they spill; the interpreter only takes the option), and
    with four dC/dB row blocks a chunk (so ten PW tile pairs, the row parts summed over four s-tiles:
    elsewhere on the CPU a chunk is one block), both with the PW kernel's heads split in two."""
    from biomamba.kernels.triton import ssd

    if tiles == "register-cap":
        monkeypatch.setitem(ssd.BWD_TILES, "dx_maxnreg", 168)
        monkeypatch.setitem(ssd.BWD_TILES, "dcdb_maxnreg", 168)
        monkeypatch.setitem(ssd.BWD_TILES, "pw_maxnreg", 168)

    # (elsewhere the default splits the heads: the interpreter's grids are small)
    for key in ("dcdb_heads", "pw_heads"):
        monkeypatch.setitem(ssd.BWD_TILES, key, SSD_SHAPE["h"] // (2 if tiles in ("head-split", "pw-tiles") else 1))

    if tiles == "pw-tiles":
        rows = SSD_SHAPE["T"] // 4
        monkeypatch.setitem(ssd.BWD_TILES, "dcdb_BM", rows)
        monkeypatch.setitem(ssd.BWD_TILES, "dcdb_BK", rows // 2)
    if tiles == "narrow-inner":
        half = min(SSD_SHAPE["T"], 64)
        for table, rows, inner in ((ssd.BWD_TILES, "BM", "BK"), (ssd.BWD_TILES, "dcdb_BM", "dcdb_BK"),
                                   (ssd.FWD_TILES, "out_BM", "out_BK")):
            monkeypatch.setitem(table, rows, half)
            monkeypatch.setitem(table, inner, half // 2)
    s = SSD_SHAPE
    b, h, p, n, T, l = s["b"], s["h"], s["p"], s["n"], s["T"], s["lengths"][1]
    x, dt, B, C = torch.randn(b, l, h, p), torch.rand(b, l, h) * 0.2, torch.randn(b, l, 1, n), torch.randn(b, l, 1, n)
    A = -torch.rand(h) - 0.5
    got, ref = leaves(x, dt, A, B, C), leaves(x, dt, A, B, C)
    y, _ = K.ssd_scan(*got, chunk_size=T, dt_softplus=False)
    y_r, _ = R.ssd_scan(*ref, chunk_size=T, dt_softplus=False)
    assert rel(y, y_r) < 1e-4
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (y_r * dy).sum().backward()
    check_grads(got, ref, 2e-4, ["x", "dt", "A", "B", "C"])


@pytest.mark.parametrize("softplus", [True, False])
def test_ssd_scan_clamped_dt(softplus):
    """Δ clamped into [lo, hi] with steps on both sides of it (their dt gets no gradient), with and
    without softplus: the chain rule through clamp, softplus and bias in the backward's tail."""
    s = SSD_SHAPE
    b, h, p, n, T, l = s["b"], s["h"], s["p"], s["n"], s["T"], s["lengths"][1]
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    x, B, C = torch.randn(b, l, h, p, generator=gen), torch.randn(b, l, 1, n, generator=gen), torch.randn(b, l, 1, n, generator=gen)
    dt = torch.randn(b, l, h, generator=gen) * 2 + (0.0 if softplus else 0.8)
    A, bias = -torch.rand(h, generator=gen) - 0.5, torch.randn(h, generator=gen) * 0.3
    lo, hi = 0.05, 1.5
    got, ref = leaves(x, dt, A, B, C, bias), leaves(x, dt, A, B, C, bias)
    kw = dict(chunk_size=T, dt_softplus=softplus, dt_limit=(lo, hi))
    y, _ = K.ssd_scan(*got[:5], dt_bias=got[5], **kw)
    y_r, _ = R.ssd_scan(*ref[:5], dt_bias=ref[5], **kw)
    v = dt + bias
    step = torch.nn.functional.softplus(v) if softplus else v
    assert (step < lo).any() and (step > hi).any(), "the draw should clamp on both sides"
    assert rel(y, y_r) < 1e-4
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (y_r * dy).sum().backward()
    check_grads(got, ref, 2e-4, ["x", "dt", "A", "B", "C", "dt_bias"])


def test_ssd_state_passes_in_tiles(monkeypatch):
    """The chunk-state passes with the state split over programs (2 × 2 tiles of p × n, so the
    decay gradient's per-tile partials are summed by the tail kernel) and the positions of a
    chunk in two blocks, with documents, an initial state and a final-state gradient (fp32)."""
    from biomamba.kernels.triton import ssd

    s = SSD_SHAPE
    b, h, p, n, T, l = s["b"], s["h"], s["p"], s["n"], s["T"], s["lengths"][1]
    for key, size in (("BP", p // 2), ("BN", n // 2), ("BK", T // 2)):
        monkeypatch.setitem(ssd.STATE_TILES, key, size)
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    x, dt, B, C, init = r(b, l, h, p), r(b, l, h) * 0.5 - 1.0, r(b, l, 1, n), r(b, l, 1, n), r(b, h, p, n)
    A = -torch.rand(h, generator=gen) * 4 - 0.2
    seq = seq_ids(b, l, gen)
    got, ref = leaves(x, dt, A, B, C, init), leaves(x, dt, A, B, C, init)
    y, fin = K.ssd_scan(*got[:5], chunk_size=T, seq_idx=seq, initial_state=got[5])
    y_r, fin_r = R.ssd_scan(*ref[:5], chunk_size=T, seq_idx=seq, initial_state=ref[5])
    assert rel(y, y_r) < 1e-4 and rel(fin, fin_r) < 1e-4
    dy, dfin = torch.randn_like(y_r), torch.randn_like(fin_r)
    ((y * dy).sum() + (fin * dfin).sum()).backward()
    ((y_r * dy).sum() + (fin_r * dfin).sum()).backward()
    check_grads(got, ref, 2e-4, ["x", "dt", "A", "B", "C", "initial_state"])


def test_ssd_scan_chains_through_initial_state():
    """Two halves chained through the final/initial state equal one scan over the whole."""
    s = SSD_SHAPE
    b, h, p, n, T = s["b"], s["h"], s["p"], s["n"], s["T"]
    l = 2 * T + 3
    x, dt, B, C = (torch.randn(b, l, h, p, device=DEV), torch.randn(b, l, h, device=DEV),
                   torch.randn(b, l, 1, n, device=DEV), torch.randn(b, l, 1, n, device=DEV))
    A = -torch.rand(h, device=DEV) - 0.5
    y, fin = K.ssd_scan(x, dt, A, B, C, chunk_size=T)
    cut = T + 5
    y1, f1 = K.ssd_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], chunk_size=T)
    y2, f2 = K.ssd_scan(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], chunk_size=T, initial_state=f1)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5 and rel(f2, fin) < 1e-5


@pytest.mark.parametrize("dtype,kernel", [(torch.float32, "width4"), (torch.bfloat16, "width4"),
                                          (torch.bfloat16, "generic"), (torch.bfloat16, "width3")])
@pytest.mark.parametrize("form", ["bias+silu", "no-bias", "no-silu"])
@pytest.mark.parametrize("with_seq", [False, True])
@pytest.mark.parametrize("li", [0, 1])
def test_causal_conv1d(dtype, form, with_seq, li, kernel, monkeypatch):
    """Width 4 runs the BWD_KERNEL backward named; "width3" runs the generic one at width 3."""
    from biomamba.kernels.triton import conv

    monkeypatch.setattr(conv, "BWD_KERNEL", "width4" if kernel == "width3" else kernel)
    if not CUDA:  # several time and channel blocks: halos across blocks, a partial last block
        for kind in ("bwd", "bwd4"):
            monkeypatch.setitem(conv.BLOCKS, kind, (8, 16, 4))
    b, d, l = CONV_SHAPE["b"], CONV_SHAPE["d"], CONV_SHAPE["lengths"][li]
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    wide = torch.randn(b, l, d + 8, generator=gen)  # a strided view, as the mixer passes it
    width = 3 if kernel == "width3" else 4
    w, bias = torch.randn(d, width, generator=gen) * 0.5, torch.randn(d, generator=gen)
    seq = seq_ids(b, l, gen) if with_seq else None
    got = leaves(wide, dtype=dtype) + leaves(w, bias)
    ref = leaves(wide.to(dtype).float()) + leaves(w, bias)
    kw = dict(seq_idx=seq, activation=None if form == "no-silu" else "silu")
    use_bias = form != "no-bias"
    y = K.causal_conv1d(got[0][..., 3:3 + d], got[1], got[2] if use_bias else None, **kw)
    y_r = R.causal_conv1d(ref[0][..., 3:3 + d], ref[1], ref[2] if use_bias else None, **kw)
    tol = TOL[dtype]
    assert y.dtype == dtype and rel(y, y_r) < tol
    dy = torch.randn_like(y_r)
    (y.float() * dy).sum().backward()
    (y_r * dy).sum().backward()
    check_grads(got, ref, 2 * tol, ["x", "weight", "bias"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ngroups", [1, 4])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("launch", [{}, {"programs": 2}, {"programs": 2, "prefetch": True}],
                         ids=["default", "two-programs", "two-programs-prefetch"])
def test_gated_rmsnorm(dtype, ngroups, gated, launch, monkeypatch):
    """Forward and backward against the reference; the backward also with two programs walking
    several row blocks each (a partial one last), loading as they go or one block ahead."""
    from biomamba.kernels.triton import norm

    monkeypatch.setattr(norm, "BWD_LAUNCH", {**norm.BWD_LAUNCH, **launch})
    rows, d = NORM_SHAPE["rows"], NORM_SHAPE["d"]
    if launch and not CUDA:  # 75 rows at d = 24: blocks of 16, two programs of 48 and 27 rows
        rows = (3, 25)
    x, z, w = torch.randn(*rows, d), torch.randn(*rows, d), 1 + 0.2 * torch.randn(d)
    got = leaves(x, z, dtype=dtype) + leaves(w)
    ref = leaves(x.to(dtype).float(), z.to(dtype).float()) + leaves(w)
    if not gated:
        got[1], ref[1] = None, None
    y = K.gated_rmsnorm(got[0], got[1], got[2], 1e-5, d // ngroups)
    y_r = R.gated_rmsnorm(ref[0], ref[1], ref[2], 1e-5, d // ngroups)
    tol = TOL[dtype]
    assert y.dtype == torch.promote_types(dtype, w.dtype) and rel(y, y_r) < tol
    dy = torch.randn_like(y_r)
    (y * dy).sum().backward()
    (y_r * dy).sum().backward()
    pairs = [(a, b_, nm) for a, b_, nm in zip(got, ref, ["x", "z", "weight"]) if a is not None]
    check_grads([a for a, _, _ in pairs], [b_ for _, b_, _ in pairs], 2 * tol, [nm for *_, nm in pairs])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm(dtype):
    rows, d = NORM_SHAPE["rows"], NORM_SHAPE["d"] // 2
    x, w = torch.randn(*rows, d), 1 + 0.2 * torch.randn(d)
    got, ref = leaves(x, dtype=dtype) + leaves(w), leaves(x.to(dtype).float()) + leaves(w)
    y, y_r = K.rmsnorm(got[0], got[1], 1e-5), R.rmsnorm(ref[0], ref[1], 1e-5)
    assert rel(y, y_r) < TOL[dtype]
    dy = torch.randn_like(y_r)
    (y * dy).sum().backward()
    (y_r * dy).sum().backward()
    check_grads(got, ref, 2 * TOL[dtype], ["x", "weight"])


@pytest.mark.parametrize("gated", [True, False])
def test_norms_store_the_autocast_dtype_their_matmul_reads(gated):
    """Under bf16 autocast the norms return bf16 (the reference returns fp32, which the next
    matmul casts to bf16): a Linear after either sees the same values, and the gradients agree."""
    rows, d = NORM_SHAPE["rows"], NORM_SHAPE["d"]
    x, z, w = torch.randn(*rows, d), torch.randn(*rows, d), 1 + 0.2 * torch.randn(d)
    lin = torch.nn.Linear(d, 7).to(DEV)
    got, ref = leaves(x, z, dtype=torch.bfloat16) + leaves(w), leaves(x, z, dtype=torch.bfloat16) + leaves(w)
    outs = []
    for ks, (xx, zz, ww) in ((K, got), (R, ref)):
        with torch.autocast(DEV, dtype=torch.bfloat16):
            y = ks.gated_rmsnorm(xx, zz if gated else None, ww, 1e-5, d)
            out = lin(y)
        outs.append((y, out))
        out.float().square().sum().backward()
    (y, out), (y_r, out_r) = outs
    assert y.dtype == torch.bfloat16 and y_r.dtype == torch.float32
    assert rel(y, y_r.to(torch.bfloat16)) < TOL[torch.bfloat16] and rel(out, out_r) < TOL[torch.bfloat16]
    names = ["x", "z", "weight"]
    keep = [i for i in range(3) if gated or i != 1]
    check_grads([got[i] for i in keep], [ref[i] for i in keep], 2 * TOL[torch.bfloat16], [names[i] for i in keep])


@pytest.mark.parametrize("res_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_add_rmsnorm(res_dtype, w_dtype):
    """The decode step's fused residual add + norm: the sum bit-equal to torch's, the norm close."""
    rows, d = NORM_SHAPE["rows"], NORM_SHAPE["d"] // 2
    x = torch.randn(*rows, d, device=DEV).to(torch.bfloat16)
    res = (3 * torch.randn(*rows, d, device=DEV)).to(res_dtype)
    w = (1 + 0.2 * torch.randn(d, device=DEV)).to(w_dtype)
    with torch.no_grad():
        y, total = K.add_rmsnorm(x, res, w, 1e-5)
        y_r, total_r = R.add_rmsnorm(x, res, w, 1e-5)
    assert total.dtype == total_r.dtype
    if CUDA or res_dtype == torch.float32:
        assert torch.equal(total, total_r)
    else:  # Triton's interpreter truncates fp32 → bf16 (the GPU rounds to nearest even): one ulp
        assert ((total.float() - total_r.float()).abs() <= total_r.float().abs() * 2**-7).all()
    tol = TOL[torch.bfloat16 if torch.bfloat16 in (res_dtype, w_dtype) else torch.float32]
    assert y.dtype == y_r.dtype == w_dtype and rel(y, y_r) < tol


@pytest.mark.parametrize("shape", [(37, 70), (5, 3, 33), (64, 4096 + 1)])
def test_sum_rows(shape):
    """The partial-row sum of the weight gradients, at row and column counts that its blocks do
    not divide, against torch's sum (fp32 and stored in bf16)."""
    from biomamba.kernels.triton.common import sum_rows

    part = torch.randn(*shape, device=DEV)
    for dtype in (torch.float32, torch.bfloat16):
        got = sum_rows(part, dtype)
        assert got.shape == shape[1:] and got.dtype == dtype
        assert rel(got, part.sum(0).to(dtype)) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_add_rmsnorm_gradients(w_dtype):
    """The training join (bf16 block output + fp32 residual stream, under autocast): the normed sum
    and the sum against the reference, and the gradients of x, the residual and the weight, with a
    gradient arriving through the sum (a later block's residual) and without one (the last join)."""
    rows, d = NORM_SHAPE["rows"], NORM_SHAPE["d"] // 2
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = torch.randn(*rows, d, generator=gen).to(torch.bfloat16)
    res = 3 * torch.randn(*rows, d, generator=gen)
    w = (1 + 0.2 * torch.randn(d, generator=gen)).to(w_dtype)
    dy = torch.randn(*rows, d, generator=gen)
    dtotal = torch.randn(*rows, d, generator=gen)
    for with_dtotal in (True, False):
        outs = []
        for fn in (K.add_rmsnorm, R.add_rmsnorm):
            ins = leaves(x, res, w)
            with torch.autocast(DEV, dtype=torch.bfloat16):
                y, total = fn(*ins, 1e-5)
            grads = [dy.to(DEV, y.dtype)] + ([dtotal.to(DEV)] if with_dtotal else [])
            torch.autograd.backward([y, total][:len(grads)], grads)
            outs.append((y, total, ins))
        (y, total, got), (y_r, total_r, ref) = outs
        assert y.dtype == torch.bfloat16 and total.dtype == total_r.dtype == torch.float32
        assert torch.equal(total, total_r) and rel(y, y_r.to(torch.bfloat16)) < TOL[torch.bfloat16]
        assert got[0].grad.dtype == torch.bfloat16 and got[1].grad.dtype == torch.float32
        check_grads(got, ref, 2 * TOL[torch.bfloat16], ["x", "residual", "weight"])


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_decode_steps(state_dtype, ngroups):
    """ssd_step / conv_step: outputs and the in-place state updates, over several steps."""
    s = SSD_SHAPE
    b, h, p, n = 3, s["h"], s["p"], s["n"]
    d = CONV_SHAPE["d"]
    A, D, dt_bias = -torch.rand(h, device=DEV) - 0.1, torch.randn(h, device=DEV), torch.randn(h, device=DEV)
    w, bias = torch.randn(d, 4, device=DEV), torch.randn(d, device=DEV)
    ssm = torch.randn(b, h, p, n, device=DEV)  # the SSM state stays fp32 in the model
    ssm_r = ssm.clone()
    conv = torch.randn(b, d, 4, device=DEV).to(state_dtype)
    conv_r = conv.clone()
    for _ in range(3):
        xx = torch.randn(b, h, p, device=DEV)
        dt = torch.randn(b, h, device=DEV)
        B, C = torch.randn(b, ngroups, n, device=DEV), torch.randn(b, ngroups, n, device=DEV)
        kw = dict(D=D, dt_bias=dt_bias, dt_limit=(0.001, 2.0))
        y, y_r = K.ssd_step(ssm, xx, dt, A, B, C, **kw), R.ssd_step(ssm_r, xx, dt, A, B, C, **kw)
        assert rel(y, y_r) < 1e-5 and rel(ssm, ssm_r) < 1e-5
        xc = torch.randn(b, d + 5, device=DEV)[:, 2:2 + d].to(state_dtype)
        yc, yc_r = K.conv_step(conv, xc, w, bias), R.conv_step(conv_r, xc, w, bias)
        assert rel(yc, yc_r) < TOL[state_dtype] and torch.equal(conv, conv_r)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_fused_conv_ssd_step(state_dtype, ngroups, monkeypatch):
    """The fused decode step (conv + SiLU, then the SSM step, one kernel) against conv_step then
    ssd_step of the reference, over several steps: outputs and both states. Several programs
    share each group's B/C windows; the last one in writes them, and the counters are back to 0."""
    import biomamba.kernels.triton as T
    from biomamba.kernels.triton import ssd

    monkeypatch.setattr(T, "FUSED_DECODE_STEP", True)
    s = SSD_SHAPE
    b, h, p, n = 3, s["h"], s["p"], s["n"]
    width = h * p + 2 * ngroups * n
    A, D, dt_bias = -torch.rand(h, device=DEV) - 0.1, torch.randn(h, device=DEV), torch.randn(h, device=DEV)
    w, cbias = torch.randn(width, 4, device=DEV) * 0.5, torch.randn(width, device=DEV)
    ssm = torch.randn(b, h, p, n, device=DEV)
    conv = torch.randn(b, width, 4, device=DEV).to(state_dtype)
    ssm_r, conv_r = ssm.clone(), conv.clone()
    for _ in range(3):
        wide = torch.randn(b, width + 7, device=DEV).to(state_dtype)
        xBC, dt = wide[:, 3:3 + width], torch.randn(b, h, device=DEV)  # a strided view, as the mixer's
        kw = dict(D=D, dt_bias=dt_bias, dt_limit=(0.001, 2.0))
        y = K.conv_ssd_step(conv, ssm, xBC, dt, w, cbias, A, **kw)
        y_r = R.conv_ssd_step(conv_r, ssm_r, xBC, dt, w, cbias, A, **kw)
        assert y.shape == (b, h, p) and y.dtype == xBC.dtype
        # bf16: x, B and C are each rounded to bf16 before the SSM step, and the interpreter
        # truncates where torch rounds, so the errors compound (seen up to 1.7e-2)
        tol = 1e-5 if state_dtype == torch.float32 else 4e-2
        assert rel(y, y_r) < tol and rel(ssm, ssm_r) < tol
        assert torch.equal(conv, conv_r)
    assert all(int(c.abs().sum()) == 0 for c in ssd._GROUP_COUNTERS.values())
    torch.library.opcheck(torch.ops.biomamba.conv_ssd_step.default,
                          (conv, ssm, xBC, dt, w, cbias, A, D, dt_bias, True, 0.001, 2.0),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("product", ["blocked", "one-block"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_linear_and_gated_norm_linear(dtype, product, monkeypatch):
    """The fused norm + GEMV kernels against the reference (norm, then F.linear): 1, 3 and 16
    rows, features and K not multiples of the tiles, with and without bias; the residual sum
    bit-equal; no residual (the first block); grouped gated norms. Where they must not run (17
    rows, gradients, switched off) the composed path runs, and still trains."""
    import biomamba.kernels.triton as T
    from biomamba.kernels.triton import gemv

    monkeypatch.setattr(T, "GEMV_ROWS", 16)
    monkeypatch.setattr(T, "GEMV_MAX_WEIGHT", 1 << 26)  # the 1.3B projections below too
    monkeypatch.setitem(gemv.TILES, "one_block_k", 4096 if product == "one-block" else 0)  # all K at once
    assert K.describe()["norm_linear"] == "triton (norm + GEMV as one kernel up to 16 rows and 67108864 weight elements)"  # `biomamba env`
    N, Kd = (3352, 768) if CUDA else (37, 24)
    if not CUDA:
        monkeypatch.setitem(gemv.TILES, "BK", 8)  # several K blocks, the last one partial
    # bf16: three roundings (the normalised row, times the weight, the output); the interpreter
    # truncates each (the GPU rounds to nearest even), all toward zero, so its bound is wider
    tol = 1e-5 if dtype == torch.float32 else 8e-3 if CUDA else 1.5e-2
    w, b = (torch.randn(N, Kd, device=DEV) * 0.05).to(dtype), torch.randn(N, device=DEV).to(dtype)
    nw = (1 + 0.2 * torch.randn(Kd, device=DEV)).to(dtype)
    with torch.no_grad():
        for rows in (1, 3, 16):
            x = (2 * torch.randn(rows, Kd, device=DEV)).to(dtype)
            z = torch.randn(rows, Kd, device=DEV).to(dtype)
            for bias in (None, b):
                for residual in (None, torch.randn(rows, Kd, device=DEV), torch.randn(rows, Kd, device=DEV).to(dtype)):
                    got, total = K.norm_linear(x, residual, nw, 1e-5, w, bias)
                    ref, total_r = R.norm_linear(x, residual, nw, 1e-5, w, bias)
                    assert got.dtype == ref.dtype and got.shape == (rows, N) and total.dtype == total_r.dtype
                    assert rel(got, ref) < tol
                    if residual is None:
                        assert total is x
                    elif CUDA or total.dtype == torch.float32:
                        assert torch.equal(total, total_r)
                    else:  # the interpreter truncates fp32 → bf16 (the GPU rounds to nearest even): one ulp
                        assert ((total.float() - total_r.float()).abs() <= total_r.float().abs() * 2**-7).all()
                for group in (Kd, Kd // 2):
                    got = K.gated_norm_linear(x, z, nw, 1e-5, group, w, bias)
                    ref = R.gated_norm_linear(x, z, nw, 1e-5, group, w, bias)
                    assert got.dtype == ref.dtype and rel(got, ref) < tol, group
            assert rel(gemv.gemv(x, w, b), torch.nn.functional.linear(x.float(), w.float(), b.float())) < tol
        if CUDA:  # the 1.3B projections too (a 1.3B GEMV sweep met a Triton compile error on the GPU)
            for n_out, k_in in ((8512, 2048), (2048, 4096)):
                w2, nw2 = (torch.randn(n_out, k_in, device=DEV) * 0.03).to(dtype), torch.ones(k_in, device=DEV).to(dtype)
                x2 = torch.randn(1, k_in, device=DEV).to(dtype)
                assert rel(K.norm_linear(x2, x2.float(), nw2, 1e-5, w2)[0],
                           R.norm_linear(x2, x2.float(), nw2, 1e-5, w2)[0]) < tol
                assert rel(K.gated_norm_linear(x2, x2, nw2, 1e-5, k_in, w2),
                           R.gated_norm_linear(x2, x2, nw2, 1e-5, k_in, w2)) < tol
        x = torch.randn(2, 1, Kd, device=DEV).to(dtype)  # leading dims are flattened and restored
        assert K.norm_linear(x, x, nw, 1e-5, w)[0].shape == (2, 1, N)
        assert K.gated_norm_linear(x, x, nw, 1e-5, Kd, w).shape == (2, 1, N)
        x17 = torch.randn(17, Kd, device=DEV).to(dtype)
        assert T._gemv_applies(x, w, b) and not T._gemv_applies(x17, w, b)
        monkeypatch.setattr(T, "GEMV_MAX_WEIGHT", N * Kd - 1)  # a large weight's route: norm kernel + cuBLAS
        assert not T._gemv_applies(x, w, b)
        assert rel(K.norm_linear(x, x, nw, 1e-5, w, b)[0], R.norm_linear(x, x, nw, 1e-5, w, b)[0]) < tol
        monkeypatch.setattr(T, "GEMV_MAX_WEIGHT", N * Kd)
        assert rel(K.norm_linear(x17, x17, nw, 1e-5, w, b)[0], R.norm_linear(x17, x17, nw, 1e-5, w, b)[0]) < tol
        ops = torch.ops.biomamba
        plain = ("test_schema", "test_faketensor")
        x = torch.randn(2, Kd, device=DEV).to(dtype)
        torch.library.opcheck(ops.norm_gemv.default, (x, nw, 1e-5, w, b), test_utils=plain)
        torch.library.opcheck(ops.add_norm_gemv.default, (x, x.float(), nw, 1e-5, w, None), test_utils=plain)
        torch.library.opcheck(ops.gated_norm_gemv.default, (x, x + 1, nw, 1e-5, Kd // 2, w, b), test_utils=plain)
    xg = torch.randn(2, Kd, device=DEV, dtype=dtype, requires_grad=True)
    K.gated_norm_linear(xg, xg.detach(), nw, 1e-5, Kd, w).sum().backward()  # the composed path trains
    xr = xg.detach().clone().requires_grad_()
    R.gated_norm_linear(xr, xr.detach(), nw, 1e-5, Kd, w).sum().backward()
    assert rel(xg.grad, xr.grad) < 20 * tol
    monkeypatch.setattr(T, "GEMV_ROWS", 0)
    assert K.describe()["gated_norm_linear"] == "triton (norm kernel + cuBLAS)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy(dtype):
    rows, d, V, chunk = ((4, 1000), 256, 50288, 1024) if CUDA else ((2, 9), 16, 50, 7)
    h, w = torch.randn(*rows, d) * 0.5, torch.randn(V, d) * 0.1
    t = torch.randint(0, V, rows)
    t[0, :3] = -100
    got, ref = leaves(h, w, dtype=dtype), leaves(h, w, dtype=dtype)
    t = t.to(DEV)
    loss, count = K.linear_cross_entropy(got[0], got[1], t, chunk_rows=chunk)
    loss_r, count_r = R.linear_cross_entropy(ref[0], ref[1], t, chunk_rows=chunk)
    assert count.item() == count_r.item() == (t != -100).sum().item()
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-3}[dtype]
    assert rel(loss, loss_r) < tol, (loss.item(), loss_r.item())
    (loss * 0.37).backward()
    (loss_r * 0.37).backward()
    check_grads(got, ref, 20 * tol, ["hidden", "weight"])
    with torch.no_grad():  # evaluation path: loss only
        loss_eval, _ = K.linear_cross_entropy(got[0], got[1], t, chunk_rows=chunk)
    assert rel(loss_eval, loss_r) < tol


def test_custom_ops_are_traceable():
    """Fake implementations and autograd registrations hold up (torch.library.opcheck), and a
    function of the ops compiles into one graph (no graph breaks)."""
    b, l, h, p, n, T = 1, SSD_SHAPE["T"] + 3, 2, SSD_SHAPE["p"], SSD_SHAPE["n"], SSD_SHAPE["T"]
    x = torch.randn(b, l, h, p, device=DEV, requires_grad=True)
    dt, A = torch.randn(b, l, h, device=DEV, requires_grad=True), -torch.rand(h, device=DEV) - 0.5
    B, C = torch.randn(b, l, 1, n, device=DEV, requires_grad=True), torch.randn(b, l, 1, n, device=DEV, requires_grad=True)
    seq = torch.zeros(b, l, dtype=torch.int32, device=DEV)
    seq[:, l // 2:] = 1
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    ops = torch.ops.biomamba
    torch.library.opcheck(ops.ssd_scan_fwd.default, (x, dt, A, B, C, T, None, None, True, 0.0, float("inf"), seq, None),
                          test_utils=utils)
    xc = torch.randn(b, l, 8, device=DEV, requires_grad=True)
    w = torch.randn(8, 4, device=DEV, requires_grad=True)
    torch.library.opcheck(ops.causal_conv1d_fwd.default, (xc, w, None, seq, True), test_utils=utils)
    for out_dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(ops.rmsnorm_fwd.default,
                              (xc, xc.detach() + 1, torch.ones(8, device=DEV), 1e-5, 4, out_dtype), test_utils=utils)
    for out_dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(ops.add_rmsnorm_fwd.default,
                              (xc, xc.detach() + 1, torch.ones(8, device=DEV, requires_grad=True), 1e-5, out_dtype),
                              test_utils=utils)
    # the backward ops too: Inductor asserts that each real output has the strides its fake promised
    # (a transposed conv weight gradient failed torch.compile's Inductor backend on the GPU)
    plain = ("test_schema", "test_faketensor")
    d = lambda t: t.detach()  # noqa: E731
    dyc = torch.randn_like(xc)
    for bias in (None, torch.randn(8, device=DEV)):
        torch.library.opcheck(ops.causal_conv1d_bwd.default, (dyc, d(xc), d(w), bias, seq, True), test_utils=plain)
    z, nw = d(xc) + 1, torch.ones(8, device=DEV)
    _, rstd = ops.rmsnorm_fwd(d(xc), z, nw, 1e-5, 4, torch.float32)
    torch.library.opcheck(ops.rmsnorm_bwd.default, (dyc, d(xc), z, nw, rstd, 4), test_utils=plain)
    _, total, rstd1 = ops.add_rmsnorm_fwd(d(xc).bfloat16(), z, nw, 1e-5, torch.bfloat16)
    for dtotal in (None, torch.randn_like(total)):
        torch.library.opcheck(ops.add_rmsnorm_bwd.default, (dyc.bfloat16(), dtotal, total, nw, rstd1, torch.bfloat16,
                                                            torch.float32), test_utils=plain)
    D, bias_h = torch.randn(h, device=DEV), torch.randn(h, device=DEV)
    init = torch.randn(b, h, p, n, device=DEV)
    y, final = ops.ssd_scan_fwd(d(x), d(dt), A, d(B), d(C), T, D, bias_h, True, 0.0, float("inf"), seq, init)
    torch.library.opcheck(ops.ssd_scan_bwd.default, (torch.randn_like(y), torch.randn_like(final), d(x), d(dt), A,
                                                     d(B), d(C), T, D, bias_h, True, 0.0, float("inf"), seq, init),
                          test_utils=plain)
    # the mixer's one op: in_proj's output of d_inner 2·p, one group of n, 2 heads; conv over x, B, C
    cdim = 2 * p + 2 * n
    zx = torch.randn(b, l, 2 * p + cdim + h, device=DEV, requires_grad=True)
    cw, cbias = torch.randn(cdim, 4, device=DEV, requires_grad=True), torch.randn(cdim, device=DEV)
    core = (zx, cw, cbias, A, D, bias_h, torch.ones(2 * p, device=DEV), seq, 2 * p, 1, n, p, T, 0.0, float("inf"), 1e-5)
    torch.library.opcheck(ops.mamba2_core_fwd.default, core + (torch.float32,), test_utils=utils)
    yn, fin_c, *kept = ops.mamba2_core_fwd(*(d(t) if isinstance(t, torch.Tensor) else t for t in core), torch.float32)
    torch.library.opcheck(ops.mamba2_core_bwd.default,
                          (torch.randn_like(yn), torch.randn_like(fin_c), d(zx), *kept, d(cw), cbias, A, D,
                           bias_h, torch.ones(2 * p, device=DEV), seq, 2 * p, 1, n, p, T, 0.0, float("inf")),
                          test_utils=plain)
    hid, head = torch.randn(2 * l, 8, device=DEV), torch.randn(40, 8, device=DEV)
    tgt = torch.randint(0, 40, (2 * l,), device=DEV)
    torch.library.opcheck(ops.linear_cross_entropy_fwd.default, (hid, head, tgt, -100, 16, True, True),
                          test_utils=plain)

    def mixer_like(x, dt, B, C, xc, w):
        y, _ = K.ssd_scan(x, dt, A, B, C, chunk_size=T, seq_idx=seq)
        u = K.causal_conv1d(xc, w, None, seq_idx=seq)
        return y.sum() + K.gated_rmsnorm(u, u, torch.ones(8, device=DEV), 1e-5, 4).sum()

    compiled = torch.compile(mixer_like, backend="aot_eager", fullgraph=True)
    out = compiled(x, dt, B, C, xc, w)
    out.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("fast", ["none", "gemv", "fused-step"])
def test_model_decode_steps_triton_vs_torch(fast, monkeypatch):
    """Prefill, then decode steps (conv and SSM steps apart or as one kernel; each norm and the
    projection after it as one fused GEMV, or the norm kernel then F.linear): the Triton model's
    logits and states follow the reference's."""
    import biomamba.kernels.triton as T
    from biomamba.model import MambaLM
    from biomamba.model.config import ModelConfig

    monkeypatch.setattr(T, "GEMV_ROWS", 16 if fast == "gemv" else 0)
    monkeypatch.setattr(T, "FUSED_DECODE_STEP", fast == "fused-step")
    cfg = ModelConfig(d_model=32 if INTERPRET else 256, n_layer=2, vocab_size=96, d_state=16 if INTERPRET else 64,
                      headdim=16 if INTERPRET else 64, chunk_size=16 if INTERPRET else 64)
    torch.manual_seed(0)
    ref_model = MambaLM(cfg, backend="torch").to(DEV).eval()
    tri_model = MambaLM(cfg, backend="torch").to(DEV).eval()
    tri_model.load_state_dict(ref_model.state_dict())
    tri_model.set_backend("triton")
    ids = torch.randint(0, cfg.vocab_size, (3, 20), device=DEV)
    with torch.no_grad():
        caches = [m.allocate_cache(3) for m in (ref_model, tri_model)]
        for m, c in zip((ref_model, tri_model), caches):
            m(ids, cache=c)
        tokens = ids[:, -1]
        for _ in range(4):
            ref_logits, tri_logits = ref_model.step(tokens, caches[0]), tri_model.step(tokens, caches[1])
            assert rel(tri_logits, ref_logits) < 1e-4
            tokens = ref_logits[:, :cfg.vocab_size].argmax(-1)
        for a, b in zip(caches[0].layers, caches[1].layers):
            assert rel(b.ssm, a.ssm) < 1e-4 and rel(b.conv, a.conv) < 1e-4


def test_model_parity_triton_vs_torch(monkeypatch):
    """The whole LM through the seam: loss and every parameter gradient match the reference,
    with packed documents; the Triton mixers run at the backend's chunk cap (half the model's
    chunk here), which changes nothing but the rounding."""
    import biomamba.kernels.triton as triton_backend
    from biomamba.model import MambaLM
    from biomamba.model.config import ModelConfig

    cfg = ModelConfig(d_model=32 if INTERPRET else 256, n_layer=2, vocab_size=96, d_state=16 if INTERPRET else 64,
                      headdim=16 if INTERPRET else 64, ngroups=2, chunk_size=16 if INTERPRET else 64)
    torch.manual_seed(0)
    ref_model = MambaLM(cfg, backend="torch").to(DEV)
    tri_model = MambaLM(cfg, backend="torch").to(DEV)
    tri_model.load_state_dict(ref_model.state_dict())
    tri_model.set_backend("triton")
    assert tri_model.kernels.describe()["ssd_scan"] == "triton"
    monkeypatch.setattr(triton_backend, "SSD_MAX_CHUNK", cfg.chunk_size // 2)
    chunks = []
    core = tri_model.kernels.impl["mamba2_core"]

    def recording_core(*args, **kw):
        chunks.append(kw["chunk_size"])
        return core(*args, **kw)
    monkeypatch.setitem(tri_model.kernels.impl, "mamba2_core", recording_core)
    l = 24 if INTERPRET else 300
    ids = torch.randint(0, cfg.vocab_size, (2, l), device=DEV)
    seq = torch.zeros(2, l, dtype=torch.int32, device=DEV)
    seq[0, l // 3:] = 1
    labels = torch.roll(ids, -1, 1)
    losses = []
    for m in (ref_model, tri_model):
        loss, count = m.loss(ids, labels, seq_idx=seq)
        (loss / count).backward()
        losses.append(loss)
    assert chunks == [cfg.chunk_size // 2] * cfg.n_layer
    assert rel(losses[1], losses[0]) < 1e-4
    for (name, p1), p2 in zip(ref_model.named_parameters(), tri_model.parameters()):
        assert rel(p2.grad, p1.grad) < 1e-3, name
    with torch.no_grad():  # causality: changing one token moves no earlier position
        ids2 = ids.clone()
        ids2[:, l // 2] = (ids2[:, l // 2] + 1) % cfg.vocab_size
        h1, h2 = tri_model.hidden(ids, seq_idx=seq), tri_model.hidden(ids2, seq_idx=seq)
    assert torch.equal(h1[:, : l // 2], h2[:, : l // 2]) and not torch.equal(h1, h2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("with_seq", [False, True])
@pytest.mark.parametrize("li", [0, 1])
def test_ssd_scan(dtype, ngroups, with_seq, li):
    # Each case compiles its own kernel variants: the interpreter sweeps fp32 (bf16 at one shape),
    # the GPU sweeps bf16, the training dtype (fp32 at one shape), to keep each run short.
    full = torch.float32 if INTERPRET else torch.bfloat16
    if dtype != full and (li, ngroups) != (1, 2):
        pytest.skip("one shape only for this dtype here (time budget); the other dtype sweeps all")
    s = SSD_SHAPE
    b, h, p, n, T, l, g = s["b"], s["h"], s["p"], s["n"], s["T"], s["lengths"][li], ngroups
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    x, B, C = r(b, l, h, p), r(b, l, g, n), r(b, l, g, n)
    dt = r(b, l, h) * 0.5 - 1.0
    A = -torch.rand(h, generator=gen) * 4 - 0.2
    D, dt_bias, init = r(h), r(h) * 0.3, r(b, h, p, n)
    seq = seq_ids(b, l, gen) if with_seq else None
    low = [x, dt, B, C]  # the activations arrive in the compute dtype; parameters stay fp32
    got = leaves(*low, dtype=dtype) + leaves(A, D, dt_bias, init)
    ref = leaves(*[t.to(dtype).float() for t in low]) + leaves(A, D, dt_bias, init)
    kw = dict(chunk_size=T, dt_limit=(0.0, 4.0), seq_idx=seq)
    y, fin = K.ssd_scan(got[0], got[1], got[4], got[2], got[3], D=got[5], dt_bias=got[6], initial_state=got[7], **kw)
    y_r, fin_r = R.ssd_scan(ref[0], ref[1], ref[4], ref[2], ref[3], D=ref[5], dt_bias=ref[6], initial_state=ref[7],
                            **kw)
    assert y.dtype == dtype and y.shape == (b, l, h, p) and fin.shape == (b, h, p, n)
    tol = TOL[dtype]
    assert rel(y, y_r) < tol and rel(fin, fin_r) < tol, (rel(y, y_r), rel(fin, fin_r))
    dy, dfin = torch.randn_like(y_r), torch.randn_like(fin_r)
    ((y.float() * dy).sum() + (fin * dfin).sum()).backward()
    ((y_r.float() * dy).sum() + (fin_r * dfin).sum()).backward()
    # dA is one number per head summing ddA·Δ over every position, with cancellation: in bf16 its
    # relative error has a heavy tail (12 seeds on the interpreter: median 3e-3, max 2e-2, once 3.2e-2)
    # while every other gradient stays under 7e-3.
    wider = {"A": 4.0} if dtype == torch.bfloat16 else None
    check_grads(got, ref, 2 * tol, ["x", "dt", "B", "C", "A", "D", "dt_bias", "initial_state"], wider)


# every pairing on the GPU; on the interpreter (16 s a case) fp32 with one group and bf16 with two
CORE_CASES = [(dt, g) for dt in (torch.float32, torch.bfloat16) for g in (1, 2)] if CUDA else \
    [(torch.float32, 1), (torch.bfloat16, 2)]


class _SeenOps(TorchDispatchMode):
    """Records the aten ops that run inside it (what a backward launched)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _core_inputs(ngroups: int, l: int, gen: torch.Generator) -> tuple[torch.Tensor, list, dict]:
    """The mixer op's inputs at SSD_SHAPE: in_proj's output, [conv weight, conv bias, A, D,
    dt_bias, norm weight], and its keyword arguments."""
    s = SSD_SHAPE
    b, h, p, n, T = s["b"], s["h"], s["p"], s["n"], s["T"]
    di, gn = h * p, ngroups * n
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    zxbcdt = torch.cat([r(b, l, 2 * di + 2 * gn), r(b, l, h) * 0.5 - 1.0], -1)
    params = [r(di + 2 * gn, 4) * 0.5, r(di + 2 * gn) * 0.1, -torch.rand(h, generator=gen) * 4 - 0.2, r(h),
              r(h) * 0.3, 1 + 0.1 * r(di)]
    kw = dict(d_inner=di, ngroups=ngroups, d_state=n, headdim=p, chunk_size=T, dt_limit=(0.0, 4.0), eps=1e-5)
    return zxbcdt, params, kw


@pytest.mark.parametrize("dtype,ngroups", CORE_CASES)
def test_mamba2_core_one_op_matches_the_composed_ops(dtype, ngroups):
    """The mixer between its projections as one op (conv → SSD → gated norm, from in_proj's output)
    against the same three ops composed: output, final state and every gradient, with documents
    and a final-state gradient. Its backward writes in_proj's output gradient into one buffer: no
    concatenation runs (the composed ops' backward has two); and it reads the SSD's Δ, CB and chunk
    states that its forward kept, where the composed SSD backward recomputes them."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    l = SSD_SHAPE["lengths"][1]
    zxbcdt, params, kw = _core_inputs(ngroups, l, gen)
    kw["seq_idx"] = seq_ids(SSD_SHAPE["b"], l, gen)
    composed = R.compose_mamba2_core(K.causal_conv1d, K.ssd_scan, K.gated_rmsnorm)
    results = []
    for fn in (K.mamba2_core, composed):
        ins = leaves(zxbcdt, dtype=dtype) + leaves(*params)
        out, final = fn(*ins, **kw)
        gen.manual_seed(1234)  # both calls draw the same output gradients
        dout = torch.randn(out.shape, generator=gen).to(DEV, out.dtype)
        dfinal = torch.randn(final.shape, generator=gen).to(DEV)
        with _SeenOps() as ops:
            torch.autograd.backward([out, final], [dout, dfinal])
        results.append((out, final, ins, [op for op in ops.seen if "cat" in op]))
    (out, final, ins, cats), (out_r, final_r, ins_r, cats_r) = results
    assert cats == [] and len(cats_r) == 2, (cats, cats_r)
    assert out.dtype == out_r.dtype and rel(out, out_r) < 1e-5 and rel(final, final_r) < 1e-5
    for name, g, g_r in zip(("zxbcdt", "conv weight", "conv bias", "A", "D", "dt_bias", "norm weight"), ins, ins_r):
        assert rel(g.grad, g_r.grad) < 1e-5, name


def test_mamba2_core_backward_makes_no_zero_gradients():
    """The mixer op's outputs kept for its backward (and an unused final state) get no gradient
    tensor: autograd used to fill one with zeros for each, 2.8 ms of a 1.3B training step. The
    backward without a final-state gradient equals the one given an explicit zero gradient."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    zxbcdt, params, kw = _core_inputs(1, SSD_SHAPE["lengths"][0], gen)
    dout = torch.randn(*zxbcdt.shape[:2], kw["d_inner"], generator=gen).to(DEV)
    grads = []
    for explicit_zero in (False, True):
        ins = leaves(zxbcdt, *params)
        out, final = K.mamba2_core(*ins, **kw)
        with _SeenOps() as ops:
            if explicit_zero:
                torch.autograd.backward([out, final], [dout, torch.zeros_like(final)])
            else:
                out.backward(dout)
        if not explicit_zero:
            fills = [op for op in ops.seen if "fill" in op or "zero" in op]
            assert fills == [], fills
        grads.append([t.grad for t in ins])
    for g, g0 in zip(*grads):
        assert rel(g, g0) < 1e-6


def test_ssd_scan_bf16_log_decay_gradient_at_a_wide_chunk():
    """dA in bf16 at a 64-wide chunk and 64 channels a head, the median over three fresh draws:
    the log-decay gradient's column and row parts nearly cancel, so taking the column part from
    the dx kernel's product with bf16-rounded weights put dA off by 12-30 % here (and 25 % on the
    GPU at the test shape), where both parts summed from the same fp32 products (the PW kernel,
    since session 10; before, a second bf16 product of the weights' rounding error) give 0.1-3 %
    (12 seeds: 0.08-3.3 %, two above 2 %; hence the bound of 5 %). The tiny shapes above cannot
    see it: their sums are too short."""
    b, h, p, n, T, l = 1, 2, 64, 32, 64, 128
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    errors = []
    for _ in range(3):
        x, B, C = (torch.randn(b, l, *shape, generator=gen) for shape in ((h, p), (1, n), (1, n)))
        dt = torch.randn(b, l, h, generator=gen) * 0.5 - 1.0
        A, D = -torch.rand(h, generator=gen) * 4 - 0.2, torch.randn(h, generator=gen)
        bias = torch.randn(h, generator=gen) * 0.3
        low = [x, dt, B, C]
        got = leaves(*low, dtype=torch.bfloat16) + leaves(A, D, bias)
        ref = leaves(*[t.to(torch.bfloat16).float() for t in low]) + leaves(A, D, bias)
        kw = dict(chunk_size=T, dt_limit=(0.0, 4.0))
        y, _ = K.ssd_scan(got[0], got[1], got[4], got[2], got[3], D=got[5], dt_bias=got[6], **kw)
        y_r, _ = R.ssd_scan(ref[0], ref[1], ref[4], ref[2], ref[3], D=ref[5], dt_bias=ref[6], **kw)
        dy = torch.randn_like(y_r)
        (y.float() * dy).sum().backward()
        (y_r * dy).sum().backward()
        errors.append(rel(got[4].grad, ref[4].grad))
    assert sorted(errors)[1] < 5e-2, errors


def test_model_compiles_in_one_graph():
    """torch.compile(fullgraph=True) over the LM's loss on the Triton backend: no graph breaks, same value."""
    from biomamba.model import MambaLM, model_preset

    torch.manual_seed(0)
    model = MambaLM(model_preset("tiny", vocab_size=128, d_model=32, n_layer=2)).to(DEV).set_backend("triton")
    ids = torch.randint(0, 128, (2, 24), device=DEV)
    labels = torch.roll(ids, -1, 1)
    seq = torch.zeros(2, 24, dtype=torch.int32, device=DEV)
    seq[:, 10:] = 1

    def mean_loss(ids, labels, seq):
        loss, count = model.loss(ids, labels, seq_idx=seq)
        return loss / count

    compiled = torch.compile(mean_loss, backend="aot_eager", fullgraph=True)(ids, labels, seq)
    compiled.backward()
    assert rel(compiled, mean_loss(ids, labels, seq)) < 1e-6


def test_fsdp2_over_the_custom_ops():
    """FSDP2 (fully_shard, one process) over the model on the Triton backend: same loss and gradients
    as the unsharded reference. FSDP2 hooks run on forward(), so the loss is called through one."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from biomamba.model import MambaLM, model_preset

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl" if CUDA else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = model_preset("tiny", vocab_size=128, d_model=32, n_layer=2)
        torch.manual_seed(0)
        ref = MambaLM(cfg, backend="torch").to(DEV)  # the reference (a bare MambaLM picks Triton on a GPU)
        model = MambaLM(cfg, backend="torch").to(DEV)
        model.load_state_dict(ref.state_dict())
        model.set_backend("triton")

        class LossOf(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, labels):
                return self.m.loss(ids, labels)

        for layer in model.backbone.layers:
            fully_shard(layer)
        sharded = fully_shard(LossOf(model))
        ids = torch.randint(0, 128, (2, 24), device=DEV)
        labels = torch.roll(ids, -1, 1)
        loss_r, count = ref.loss(ids, labels)
        (loss_r / count).backward()
        loss, count = sharded(ids, labels)
        (loss / count).backward()
        assert rel(loss, loss_r) < 1e-5
        grads = dict(ref.named_parameters())
        for name, p in model.named_parameters():
            assert rel(p.grad.full_tensor(), grads[name].grad) < 1e-4, name
    finally:
        dist.destroy_process_group()
