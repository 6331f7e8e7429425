"""bench/floors.py: its parameter and FLOP counts against the model itself, and how it assigns a
profile's kernels to its rows."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import torch

from biomamba.model.config import model_preset
from biomamba.model.lm import MambaLM

_PATH = Path(__file__).resolve().parents[1] / "bench" / "floors.py"
_spec = importlib.util.spec_from_file_location("bench_floors", _PATH)
floors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floors)


def _rows(preset: str, batch: int = 2, seqlen: int = 256) -> dict[str, dict]:
    return {r["name"]: r for r in floors.floors(preset, batch, seqlen, 128)}


def test_adamw_and_gemm_counts_match_the_model():
    """AdamW's floor is 28 B per trained parameter and the GEMMs' 6 · tokens · (projection + head
    weights): both counted from the model built on the meta device."""
    for preset in ("130m", "1.3b"):
        with torch.device("meta"):
            model = MambaLM(model_preset(preset))
        params = {id(p): p for p in model.parameters()}.values()
        n = sum(p.numel() for p in params)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        rows = _rows(preset)
        assert rows["AdamW (fused) + zeroing"]["bytes"] == 28 * n, preset
        # the tied head is the embedding's matrix: counted once among the parameters, used as a GEMM
        head = model.backbone.embedding.weight.numel()
        gemm_weights = linear if any(m.weight is model.backbone.embedding.weight for m in model.modules()
                                     if isinstance(m, torch.nn.Linear)) else linear + head
        assert rows["GEMMs"]["flops"] == 6 * 2 * 256 * gemm_weights, preset


def test_state_bytes_follow_the_chunk_count():
    """The chunk states are b · chunks · heads · p · n in bf16; a length that does not divide the
    chunk still has its last, partial chunk's state."""
    cfg = model_preset("130m")
    a, b = _rows("130m", 2, 256), _rows("130m", 2, 257)
    state = 2 * cfg.nheads * cfg.headdim * cfg.d_state * 2 * cfg.n_layer
    fwd = "_states_fwd_kernel"
    x_more = 2 * 1 * cfg.d_inner * 2 * cfg.n_layer + 2 * 1 * cfg.d_state * 2 * cfg.n_layer  # one more position
    vec_more = 2 * cfg.nheads * 128 * 4 * 2 * cfg.n_layer  # Δ and the cumsum of one more chunk
    assert b[fwd]["bytes"] - a[fwd]["bytes"] == state + x_more + vec_more


def test_profile_kernels_go_to_their_rows(tmp_path):
    """Our kernels match by exact name (``_norm_fwd_kernel`` is inside ``_add_norm_fwd_kernel``),
    library kernels by part of theirs; what matches nothing is summed as other."""
    kernels = [{"kernel": "_add_norm_fwd_kernel", "us_per_call": 2000.0, "launches": 48},
               {"kernel": "_norm_fwd_kernel", "us_per_call": 1000.0, "launches": 49},
               {"kernel": "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "us_per_call": 50000.0, "launches": 98},
               {"kernel": "void at::native::(anonymous namespace)::multi_tensor_apply_k", "us_per_call": 9000.0,
                "launches": 66},
               {"kernel": "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<", "us_per_call": 700.0,
                "launches": 240}]
    assert not floors._matches("_add_norm_fwd_kernel", ("_norm_fwd_kernel",))
    assert floors._matches(kernels[3]["kernel"], ("multi_tensor_apply",))
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"case": "profile train-graphed 1.3b b8x1024", "kernels": kernels}) + "\n")
    out = tmp_path / "out.md"
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        assert floors.main(["--preset", "1.3b", "--profile", str(path)]) == 0
    lines = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ")
             for ln in out.read_text().splitlines() if ln.startswith("| ")}
    assert lines["_add_norm_fwd_kernel"][5] == "2.00" and lines["_norm_fwd_kernel"][5] == "1.00"
    assert lines["GEMMs"][5] == "50.00" and lines["AdamW (fused) + zeroing"][5] == "9.00"
    assert lines["other (glue, memsets, CE rows)"][5] == "0.70"
    assert lines["_bwd_dx_kernel"][5] == "–"
