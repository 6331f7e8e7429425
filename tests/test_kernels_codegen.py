"""What the compiler makes of our kernels for an H100/H200 (sm_90), checked on the CPU: Triton
compiles to PTX without a GPU. The x tiles of the conv and the z rows of the gated norm are views
of in_proj's output, whose row stride at 130M (3,352) Triton cannot prove 16-byte aligned; the
kernels pass the divisor the host knows (common.py). Without it every bf16 is a load of its own
(ld.global.b16); with it the loads are 128-bit (ld.global.v4.b32). Speed is measured in bench/."""

from __future__ import annotations

import inspect
import os
import re

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("compiles real kernels: not under the interpreter", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
# compiling to the end needs the CUDA backend's ptxas, which Triton's wheel bundles
if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
    pytest.skip("this Triton has no bundled ptxas to compile for sm_90 with", allow_module_level=True)


def ptx_loads(kernel, types: dict[str, str], consts: dict, divisible: list[str], warps: int = 4) -> dict[str, int]:
    """Count the global loads by width in ``kernel``'s PTX. Arguments not in ``types`` are i32;
    ``divisible`` are the integer and pointer arguments Triton would see as multiples of 16."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in divisible})
    compiled = triton.compile(src, target=SM90, options={"num_warps": warps})
    counts: dict[str, int] = {}
    for op in re.findall(r"ld\.global[\.\w]*", compiled.asm["ptx"]):
        counts[op] = counts.get(op, 0) + 1
    return counts


CONV_PTRS = {"x_ptr": "*bf16", "dy_ptr": "*bf16", "dx_ptr": "*bf16", "y_ptr": "*bf16", "w_ptr": "*fp32",
             "bias_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32", "seq_ptr": "*i32"}


@pytest.mark.parametrize("which", ["fwd", "bwd width 4"])
def test_conv_loads_x_rows_as_vectors(which):
    from biomamba.kernels.triton import conv

    # the 130M call: x's row stride sxl = 3,352 is not among the arguments divisible by 16
    if which == "fwd":
        kernel, flags, hints = conv._conv_fwd_kernel, dict(K=4, BL=16, BD=128), {"XV": 8, "YV": 16}
        divisible = ["L", "D", "sxb", "syb", "syl", "ssb"]
    else:  # its default blocks: a row of 256 channels over 64 threads, 4 bf16 (64 bits) a thread
        kernel, flags, hints = conv._conv4_bwd_kernel, dict(BL=64, BD=256), {"XV": 8, "DV": 16}
        divisible = ["L", "D", "sxb", "sdyb", "sdyl", "sdxb", "sdxl", "ssb"]
    names = inspect.signature(kernel.fn).parameters
    ptrs = {k: v for k, v in CONV_PTRS.items() if k in names}
    consts = dict(HAS_BIAS=True, HAS_SEQ=True, SILU=True, **flags)
    warps = 4 if which == "fwd" else 2
    hinted = ptx_loads(kernel, ptrs, dict(consts, **hints), list(ptrs) + divisible, warps)
    unhinted = ptx_loads(kernel, ptrs, dict(consts, **{k: 1 for k in hints}), list(ptrs) + divisible, warps)
    vector = "ld.global.v4.b32" if which == "fwd" else "ld.global.v2.b32"
    assert "ld.global.b16" not in hinted and hinted.get(vector, 0) > 0, hinted
    assert unhinted.get("ld.global.b16", 0) > 0, unhinted  # the hint is what makes the difference


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_gated_norm_loads_z_rows_128_bits_at_a_time(which):
    from biomamba.kernels.triton import norm

    ptrs = {"x_ptr": "*bf16", "z_ptr": "*bf16", "w_ptr": "*fp32", "y_ptr": "*bf16", "rstd_ptr": "*fp32",
            "dy_ptr": "*bf16", "dr_ptr": "*bf16", "dx_ptr": "*bf16", "dz_ptr": "*bf16", "dw_ptr": "*fp32",
            "eps": "fp32"}
    if which == "fwd":
        kernel, ints = norm._norm_fwd_kernel, ["M", "G", "sxm", "sym"]
        hints = {"XV": 16, "ZV": 8}
    else:
        kernel, ints = norm._norm_bwd_kernel, ["M", "G", "sxm", "sdym", "sdxm", "sdzm", "rows_per_prog"]
        hints = {"XV": 16, "ZV": 8, "DV": 16, "PREFETCH": norm.BWD_LAUNCH["prefetch"], "JOIN": False, "HAS_DR": False,
                 "CAST_X": False}
    names = inspect.signature(kernel.fn).parameters
    ptrs = {k: v for k, v in ptrs.items() if k in names}
    consts = dict(HAS_Z=True, BM=2, BG=2048)  # the 130M gated norm: one group of 1,536 channels
    divisible = [k for k in ptrs if k != "eps"] + ints
    hinted = ptx_loads(kernel, ptrs, dict(consts, **hints), divisible, warps=8)
    unhinted = ptx_loads(kernel, ptrs, dict(consts, ZV=1, **{k: v for k, v in hints.items() if k != "ZV"}),
                         divisible, warps=8)
    assert "ld.global.b16" not in hinted, hinted
    assert unhinted.get("ld.global.b16", 0) > 0, unhinted


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_gated_norm_with_one_row_a_program_compiles(which):
    """The 1.3B gated norm (one 4,096-channel group: one row a program) with the row hints: a 2-D
    hint on its (1, 1) offset tile crashed Triton 3.6's coalescing pass on the GPU (every 1.3B
    case of call K); the hint now goes on the 1-D product."""
    from biomamba.kernels.triton import norm

    kernel = norm._norm_fwd_kernel if which == "fwd" else norm._norm_bwd_kernel
    ptrs = {n: "*bf16" for n in ("x_ptr", "z_ptr", "y_ptr", "dy_ptr", "dr_ptr", "dx_ptr", "dz_ptr")}
    bwd = ({"DV": 16, "PREFETCH": norm.BWD_LAUNCH["prefetch"], "JOIN": False, "HAS_DR": False, "CAST_X": False}
           if which == "bwd" else {})
    _compiles(kernel, ptrs, dict(HAS_Z=True, BM=1, BG=4096, XV=16, ZV=16, **bwd), warps=8)


def test_row_divisor():
    from biomamba.kernels.triton.common import row_divisor

    assert row_divisor(3352) == 8 and row_divisor(3352 * 1024, 3352) == 8
    assert row_divisor(1792, 1024 * 1792) == 16 and row_divisor(8512) == 16 and row_divisor(7) == 1


def _compiles(kernel, ptrs: dict[str, str], consts: dict, floats=("dt_lo", "dt_hi", "eps"), warps: int = 4) -> None:
    names = inspect.signature(kernel.fn).parameters
    types = {n: ("fp32" if n in floats else ptrs.get(n, "*fp32" if n.endswith("_ptr") else "i32")) for n in names}
    ptx_loads(kernel, types, consts, [n for n in names if n.endswith("_ptr")], warps=warps)


def test_decode_kernels_compile_for_sm90():
    """The decode kernels that only the interpreter runs on the CPU (the fused conv + SSM step with
    its atomic counter, the GEMV) also compile for the GPU, at the 130M shapes."""
    from biomamba.kernels.triton import gemv, ssd

    _compiles(ssd._conv_ssd_step_kernel, {"cs_ptr": "*bf16", "xin_ptr": "*bf16", "y_ptr": "*bf16", "count_ptr": "*i32"},
              dict(K=4, KP=4, HAS_CBIAS=True, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, CLAMP=False, BP=32, BN=128))
    import triton.language as tl

    ptrs = {"x_ptr": "*bf16", "r_ptr": "*fp32", "z_ptr": "*bf16", "nw_ptr": "*bf16", "w_ptr": "*bf16",
            "b_ptr": "*bf16", "y_ptr": "*bf16", "s_ptr": "*fp32"}
    for pro in (0, 1, 2):
        for one_block in (False, True):
            _compiles(gemv._norm_gemv_kernel, ptrs,
                      dict(PRO=pro, HAS_RES=pro == 1, HAS_BIAS=False, S_DT=tl.float32, N_DT=tl.bfloat16,
                           BM=1, BN=8, BK=1024 if one_block else 512, ONE_BLOCK=one_block), warps=8)


def test_head_split_backward_compiles_for_sm90():
    from biomamba.kernels.triton import ssd

    bf16 = {n: "*bf16" for n in ("x_ptr", "C_ptr", "B_ptr", "dy_ptr", "dc_ptr", "db_ptr")}
    bf16["seq_ptr"] = "*i32"
    for kernel in (ssd._bwd_dc_kernel, ssd._bwd_db_kernel):
        _compiles(kernel, bf16, dict(HAS_SEQ=True, HS=4, PWS=2, T=256, BM=64, BK=64, BP=64, BN=128, IP="tf32"))
    _compiles(ssd._bwd_pw_kernel, bf16, dict(HAS_SEQ=True, HS=2, T=256, BM=64, BP=64, IP="tf32"))


def test_every_kernel_a_model_launches_compiles_for_sm90():
    """bench/compile_check.py: each Triton kernel a training step and decoding launch at the 130M
    and 1.3B widths, specialised as Triton specialises it at run time, compiles for sm_90. (Run
    with ``--triton`` against the GPU machine's Triton version too: call L's 1.3B crash was in
    Triton 3.6 only.) In a subprocess: the check swaps Triton's launcher for the compiler."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "bench" / "compile_check.py"), "--presets", "130m,1.3b"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = re.search(r"(\d+) specialisations compiled, (\d+) failed", done.stdout)
    assert counts and int(counts[1]) >= 30 and int(counts[2]) == 0, done.stdout  # ~40 at 130M + 1.3B


def test_compile_check_names_a_tile_key_it_does_not_know():
    """``--bwd-tile KEY=INT`` sets an ssd.BWD_TILES entry before compiling; a misspelt key is an
    error that names it, before anything compiles (a silent no-op would report the default's registers)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "bench" / "compile_check.py"), "--bwd-tile", "pw_maxnrg=168"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no BWD_TILES entry 'pw_maxnrg'" in done.stderr, done.stderr[-2000:]
