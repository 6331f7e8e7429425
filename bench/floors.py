"""Lower bounds ("floors") for the kernels of one Mamba2 training step, against a profiled step.

A kernel's floor is the larger of (a) the bytes it must move, each tensor it takes read or written
once, in the dtype the bf16-autocast step keeps it in (bf16 activations and chunk states, fp32
residual stream, per-position vectors and CB), at the HBM's peak bandwidth, and (b) its FLOPs at
the dense bf16 peak. It is a bound for the step's design as it is (what each kernel takes and
gives), not for any design: e.g. a kernel that re-reads a tile from L2 is not charged for it, and
fusing two kernels would remove the traffic between them. With a `profile train-graphed` row of
bench/gpu_bench.py (its bench.jsonl), each row gets the measured time and the ratio; kernels that
match no row (torch's reductions and elementwise glue, memsets, the CE rows) are summed as "other".

    python bench/floors.py --preset 1.3b --batch 8 --seqlen 1024 [--chunk 128] [--profile FILE [--case TEXT]]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BF16, FP32 = 2, 4


def floors(preset: str, batch: int, seqlen: int, chunk: int) -> list[dict]:
    """One row per kernel (or kernel family) of a training step: name prefixes it matches in a
    profile, what it moves, bytes and FLOPs a step."""
    from biomamba.model.config import model_preset

    cfg = model_preset(preset)
    d, di, nl, G, N, P, H = cfg.d_model, cfg.d_inner, cfg.n_layer, cfg.ngroups, cfg.d_state, cfg.headdim, cfg.nheads
    V = math.ceil(cfg.vocab_size / cfg.pad_vocab_size_multiple) * cfg.pad_vocab_size_multiple
    M, T = batch * seqlen, chunk
    NC = math.ceil(seqlen / T)
    d_in = 2 * di + 2 * G * N + H  # in_proj's output: z, x, B, C, dt
    conv = di + 2 * G * N  # the conv's channels: x, B, C
    proj = nl * (d * d_in + di * d)  # projection weights
    params = proj + V * d + nl * (conv * cfg.d_conv + conv + 3 * H + di + d) + d  # tied head
    X = M * di * BF16  # x, y, z, dy, dx of a layer
    S = batch * NC * H * P * N * BF16  # the chunks' starting states (and dZ)
    BC = M * G * N * BF16  # B or C
    CB = batch * NC * G * T * T * FP32
    vec = batch * H * NC * T * FP32  # a per-position fp32 vector (Δ, the log-decay cumsum, ...)
    R = M * d * FP32  # the fp32 residual stream
    Hd = M * d * BF16  # a block's bf16 input / output
    states = 2 * batch * NC * H * P * N * T  # Σ_t x_t ⊗ B_t (or dy ⊗ C) over every chunk
    with_states = 2 * M * H * P * (N + T // 2)  # C·S and the causal within-chunk product
    rows = [
        ("GEMMs", ("nvjet", "gemm", "cutlass", "sm90_xmma"), "projections + LM head, fwd + bwd", 0,
         6 * M * (proj + d * V)),
        ("AdamW (fused) + zeroing", ("multi_tensor_apply",), "p, g, m, v in; p, m, v out (fp32)", 28 * params, 0),
        ("weight casts fp32 → bf16", ("vectorized_elementwise_kernel<8",), "every weight in fp32, out in bf16",
         6 * params, 0),
        ("_add_norm_fwd_kernel", ("_add_norm_fwd_kernel",), "residual in/out fp32, block in/out bf16",
         nl * (2 * R + 2 * Hd), 0),
        ("_conv_fwd_kernel", ("_conv_fwd_kernel",), "xBC in, out", nl * 2 * M * conv * BF16, 0),
        ("_dt_kernel", ("_dt_kernel",), "dt in; Δ, cumsum out", nl * (M * H * BF16 + 2 * vec), 0),
        ("_cb_kernel", ("_cb_kernel",), "B, C in; CB out", nl * (2 * BC + CB), 2 * nl * batch * NC * G * T * T * N),
        ("_states_fwd_kernel", ("_states_fwd_kernel",), "x, B, Δ, cumsum in; states out", nl * (X + BC + 2 * vec + S),
         nl * states),
        ("_out_kernel", ("_out_kernel",), "x, C, CB, Δ, cumsum, states in; y out", nl * (2 * X + BC + CB + 2 * vec + S),
         nl * with_states),
        ("_norm_fwd_kernel", ("_norm_fwd_kernel",), "gated: y, z in, out; + the final norm",
         nl * 3 * X + R + Hd, 0),
        ("_norm_bwd_kernel", ("_norm_bwd_kernel",),
         "gated: y, z, dout in, dy, dz out; block: x, dy, dres (fp32) in, dx (bf16), dres (fp32) out",
         nl * (5 * X + 2 * R + 2 * Hd + R) + 2 * R + Hd, 0),
        ("_states_bwd_kernel", ("_states_bwd_kernel",), "dy, C, cumsum, states in; dZ out",
         nl * (X + BC + vec + 2 * S), nl * states),
        ("_bwd_dx_kernel", ("_bwd_dx_kernel",), "x, dy, B, CB, dZ, Δ, cumsum in; dx, 3 vectors out",
         nl * (3 * X + BC + CB + S + 5 * vec), nl * with_states),
        ("_bwd_pw_kernel", ("_bwd_pw_kernel",), "x, dy, CB, Δ, cumsum in; PW, row/column parts out",
         nl * (2 * X + 2 * CB + 4 * vec), nl * batch * NC * H * T * T * P),
        ("_bwd_dc_kernel", ("_bwd_dc_kernel",), "C, dy, states, B, PW, cumsum, parts in; dC, a vector out",
         nl * (X + S + 3 * BC + CB + 4 * vec), nl * (2 * M * H * P * N + batch * NC * G * T * T * N)),
        ("_bwd_db_kernel", ("_bwd_db_kernel",), "x, C, Δ, cumsum, dZ, PW in; dB out",
         nl * (X + S + 2 * BC + CB + 2 * vec), nl * (2 * M * H * P * N + batch * NC * G * T * T * N)),
        ("_bwd_tail_kernel", ("_bwd_tail_kernel",), "6 vectors, dt in; ddt out", nl * (6 * vec + 2 * M * H * BF16), 0),
        ("_conv4_bwd_kernel", ("_conv4_bwd_kernel",), "xBC, d(conv out) in; d(xBC) out", nl * 3 * M * conv * BF16, 0),
    ]
    return [dict(name=n, match=m, moves=w, bytes=b, flops=f) for n, m, w, b, f in rows]


def _matches(kernel: str, patterns: tuple[str, ...]) -> bool:
    """Our Triton kernels by their exact name (``_norm_fwd_kernel`` is inside ``_add_norm_fwd_kernel``),
    library kernels by a part of theirs (the profile cuts names at 60 characters)."""
    return any(kernel == m if m.startswith("_") else m in kernel for m in patterns)


def _measured(path: Path, case: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    picked = [r for r in rows if "kernels" in r and case in r["case"]]
    if not picked:
        raise SystemExit(f"{path}: no row with kernels whose case contains {case!r}")
    return picked[-1]["kernels"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=128, help="the SSD chunk the mixers run at")
    ap.add_argument("--hbm", type=float, default=4.8e12, help="peak bytes/s (H200: 4.8 TB/s)")
    ap.add_argument("--peak", type=float, default=989e12, help="dense bf16 FLOP/s (H100/H200: 989 T)")
    ap.add_argument("--profile", type=Path, help="bench.jsonl with a profile row")
    ap.add_argument("--case", default="profile train-graphed", help="text the profile row's case contains")
    a = ap.parse_args(argv)
    table = floors(a.preset, a.batch, a.seqlen, a.chunk)
    kernels = _measured(a.profile, a.case) if a.profile else []
    used = set()
    print(f"{a.preset}, {a.batch} × {a.seqlen}, chunk {a.chunk}; floors at {a.hbm / 1e12:g} TB/s and "
          f"{a.peak / 1e12:g} TFLOP/s\n")
    print("| kernel | what it moves | GB | GFLOP | floor ms | measured ms | × floor |\n|---|---|---|---|---|---|---|")
    total_floor = total_meas = 0.0
    for row in table:
        floor_ms = max(row["bytes"] / a.hbm, row["flops"] / a.peak) * 1e3
        hits = [i for i, k in enumerate(kernels) if i not in used and _matches(k["kernel"], row["match"])]
        used.update(hits)
        meas = sum(kernels[i]["us_per_call"] for i in hits) / 1e3 if hits else None
        total_floor += floor_ms
        total_meas += meas or 0.0
        cells = [row["name"], row["moves"], f"{row['bytes'] / 1e9:.2f}", f"{row['flops'] / 1e9:,.0f}",
                 f"{floor_ms:.2f}", "–" if meas is None else f"{meas:.2f}",
                 "–" if meas is None else f"{meas / floor_ms:.1f}"]
        print("| " + " | ".join(cells) + " |")
    if kernels:
        rest = sum(k["us_per_call"] for i, k in enumerate(kernels) if i not in used) / 1e3
        print(f"| other (glue, memsets, CE rows) | – | – | – | – | {rest:.2f} | – |")
        print(f"| **sum** | | | | **{total_floor:.1f}** | **{total_meas + rest:.1f}** | "
              f"{(total_meas + rest) / total_floor:.2f} |")
    else:
        print(f"| **sum** | | | | **{total_floor:.1f}** | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
