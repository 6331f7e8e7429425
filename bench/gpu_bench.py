"""Our kernels and model against the peer stack (transformers Mamba2 + mamba_ssm + causal-conv1d),
measured in the same run on the same GPU.

    python bench/gpu_bench.py [CASE_SUBSTRING ...]      # all cases, or those whose label matches

Each case runs in its own subprocess (an OOM or crash loses only that case) and prints one
JSON line per measurement (also appended to $OUT/bench.jsonl), then a summary table.
Timings: CUDA events through triton.testing.do_bench (median) for kernels; wall clock around
synchronised steps for training / forward / decoding, after warm-up. MFU = 6·N·tokens/s over
989 TFLOP/s (H100 SXM dense bf16), as ../shared/gpu/peer_bench.py computes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

VOCAB = 50288
SIZES = {"130m": (768, 24), "1.3b": (2048, 48)}
PEAK_FLOPS = 989e12


def emit(case: str, **row) -> None:
    line = json.dumps({"case": case, **row})
    print("RESULT " + line, flush=True)


def _bench(fn, warmup=10, rep=50) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _time_fwd_fwdbwd(row: dict, fns: dict, dy) -> dict:
    """Median ms of each fn's forward (no grad) and forward + backward(dy), into row."""
    import torch

    for name, f in fns.items():
        with torch.no_grad():
            row[f"{name}_fwd_ms"] = round(_bench(f), 3)
        row[f"{name}_fwdbwd_ms"] = round(_bench(lambda: f().backward(dy)), 3)
    return row


def _rel(a, b) -> float:
    a, b = a.float(), b.float()
    return round(((a - b).norm() / b.norm()).item(), 5)


# ---- kernels -----------------------------------------------------------------------------------

def _mixer_chunk() -> int:
    """The SSD chunk length the mixers of a checkpoint (chunk 256) run at on the Triton backend."""
    import biomamba.kernels.triton as ours

    return min(256, ours.SSD_MAX_CHUNK)


def _each_variant(table: dict, variants: list[dict]):
    """Yield each of ``variants`` with a module's tile table set to the defaults updated by it;
    the defaults are back afterwards (also when a case fails halfway)."""
    default = dict(table)
    try:
        for variant in variants:
            table.update(default)
            table.update(variant)
            yield variant
    finally:
        table.update(default)


def _ssd_inputs(b: int, l: int, h: int, p: int, n: int, g: int = 1):
    """Random bf16 SSD inputs as the mixer passes them (x, dt, A, B, C, D, dt_bias) and a dy."""
    import torch
    dev = "cuda"
    x = torch.randn(b, l, h, p, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dt = (torch.randn(b, l, h, device=dev) * 0.5 - 2).to(torch.bfloat16).requires_grad_()
    A = (-torch.rand(h, device=dev) * 4 - 0.5).requires_grad_()
    B = torch.randn(b, l, g, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
    C = torch.randn(b, l, g, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
    D = torch.randn(h, device=dev, requires_grad=True)
    bias = (torch.randn(h, device=dev) * 0.3).requires_grad_()
    dy = torch.randn(b, l, h, p, device=dev, dtype=torch.bfloat16)
    return x, dt, A, B, C, D, bias, dy


def case_kernels_ssd() -> None:
    import torch
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    import biomamba.kernels.triton as ours

    chunk = _mixer_chunk()  # ours at the mixers' chunk, the peer at its model's (256)
    for label, (b, l, h, p, n, g) in {"130m b16x1024": (16, 1024, 24, 64, 128, 1),
                                      "1.3b b8x1024": (8, 1024, 64, 64, 128, 1),
                                      "130m b16x1024 seq_idx": (16, 1024, 24, 64, 128, 1),
                                      "130m b1x65536": (1, 65536, 24, 64, 128, 1)}.items():
        torch.manual_seed(0)
        dev = "cuda"
        x, dt, A, B, C, D, bias, dy = _ssd_inputs(b, l, h, p, n, g)
        seq = None
        if "seq_idx" in label:
            seq = (torch.arange(l, device=dev) // 300).to(torch.int32)[None].expand(b, l).contiguous()
        fns = {
            "ours": lambda: ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias, seq_idx=seq)[0],
            "mamba_ssm": lambda: mamba_chunk_scan_combined(x, dt, A, B, C, 256, D=D, dt_bias=bias, seq_idx=seq,
                                                           dt_softplus=True),
        }
        outs, grads = {}, {}
        for name, f in fns.items():
            for t in (x, dt, A, B, C, D, bias):
                t.grad = None
            y = f()
            y.backward(dy)
            outs[name] = y.detach()
            grads[name] = [t.grad.detach().clone() for t in (x, dt, A, B, C, D, bias)]
        err = {"y": _rel(outs["ours"], outs["mamba_ssm"])}
        for i, nm in enumerate(("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias")):
            err[nm] = _rel(grads["ours"][i], grads["mamba_ssm"][i])
        emit(f"kernel ssd {label}", ours_chunk=chunk, **_time_fwd_fwdbwd({"rel_err_vs_mamba_ssm": err}, fns, dy))


def case_kernels_other() -> None:
    import torch
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    import biomamba.kernels.triton as ours
    from biomamba.kernels import reference as ref

    dev = "cuda"
    torch.manual_seed(0)
    # causal conv1d + SiLU, channels last, as the mixer calls it (a strided view of in_proj's output)
    b, l, d = 16, 1024, 1792
    wide = torch.randn(b, l, 2 * 1536 + 256 + 24, device=dev, dtype=torch.bfloat16)
    xv = wide[..., 1536:1536 + d].detach().requires_grad_()
    w = torch.randn(d, 4, device=dev, requires_grad=True)
    bias = torch.randn(d, device=dev, requires_grad=True)
    seq = (torch.arange(l, device=dev) // 300).to(torch.int32)[None].expand(b, l).contiguous()
    dy = torch.randn(b, l, d, device=dev, dtype=torch.bfloat16)
    xc = xv.detach().contiguous().requires_grad_()
    fns = {"ours": lambda: ours.causal_conv1d(xv, w, bias, seq_idx=seq),
           "causal_conv1d": lambda: causal_conv1d_fn(xc.transpose(1, 2), w, bias, seq_idx=seq,
                                                     activation="silu").transpose(1, 2)}
    row = {"rel_err_y": _rel(fns["ours"](), fns["causal_conv1d"]())}
    emit("kernel conv1d b16x1024x1792 seq_idx", **_time_fwd_fwdbwd(row, fns, dy))

    # gated RMSNorm (norm after gate), 130M mixer width
    rows, d = 16 * 1024, 1536
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    wn = torch.ones(d, device=dev, requires_grad=True)
    dy = torch.randn(rows, d, device=dev, dtype=torch.float32)
    fns = {"ours": lambda: ours.gated_rmsnorm(x, z, wn, 1e-5, d),
           "mamba_ssm": lambda: rmsnorm_fn(x, wn, None, z=z, eps=1e-5, group_size=d, norm_before_gate=False).float(),
           "torch_ref": lambda: ref.gated_rmsnorm(x, z, wn, 1e-5, d)}
    row = {"rel_err_y": _rel(fns["ours"](), fns["mamba_ssm"]())}
    emit("kernel gated_rmsnorm 16384x1536", **_time_fwd_fwdbwd(row, fns, dy))

    # fused linear + cross-entropy, 130M head, 16×1024 rows
    rows, d, V = 16 * 1024, 768, VOCAB
    h = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    W = (torch.randn(V, d, device=dev) * 0.02).requires_grad_()
    t = torch.randint(0, V, (rows,), device=dev)

    def run(kind):
        def f():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if kind == "ours":
                    loss, cnt = ours.linear_cross_entropy(h, W, t)
                elif kind == "torch_ref":
                    loss, cnt = ref.linear_cross_entropy(h, W, t)
                else:  # plain: full logits, upcast, F.cross_entropy (what the peers' LM heads do)
                    logits = (h @ W.t()).float()
                    loss = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
            loss.backward()
            return loss
        return f
    row = {}
    for kind in ("ours", "torch_ref", "plain_logits"):
        f = run(kind)
        f()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        f()
        torch.cuda.synchronize()
        row[f"{kind}_peak_extra_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        row[f"{kind}_fwdbwd_ms"] = round(_bench(f, warmup=3, rep=20), 2)
    emit("kernel linear_cross_entropy 16384x768x50288", **row)

    # decode step (conv + SSM state update), 130M mixer shapes
    for bsz in (1, 64):
        h_, p, n = 24, 64, 128
        st = torch.randn(bsz, h_, p, n, device=dev)
        st2 = st.clone()
        xs = torch.randn(bsz, h_, p, device=dev, dtype=torch.bfloat16)
        dts = torch.randn(bsz, h_, device=dev, dtype=torch.bfloat16)
        A = -torch.rand(h_, device=dev) - 0.5
        Bs = torch.randn(bsz, 1, n, device=dev, dtype=torch.bfloat16)
        Cs = torch.randn(bsz, 1, n, device=dev, dtype=torch.bfloat16)
        Dp, db = torch.randn(h_, device=dev), torch.randn(h_, device=dev)
        row = {
            "ours_us": round(1e3 * _bench(lambda: ours.ssd_step(st, xs, dts, A, Bs, Cs, D=Dp, dt_bias=db)), 2),
            "mamba_ssm_us": round(1e3 * _bench(lambda: selective_state_update(
                st2, xs, dts[..., None].expand(bsz, h_, p), A[:, None, None].expand(h_, p, n), Bs, Cs,
                D=Dp[:, None].expand(h_, p), dt_bias=db[:, None].expand(h_, p), dt_softplus=True)), 2),
        }
        emit(f"kernel ssd_step b{bsz}", **row)


def _profile_top(fn, steps: int = 3, top: int = 14, totals: dict | None = None) -> list:
    """CUDA time per kernel name over ``steps`` calls of fn (after one warm-up), largest first.
    With ``totals``, it also gets the kernels' summed time and the synchronised wall time per
    call (without the profiler): their ratio is the GPU's busy share, which says whether the
    call is bound by the GPU or by the host issuing it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t:
            rows.append((ev.key[:60], round(t / steps, 1), ev.count // steps))
    rows.sort(key=lambda r: -r[1])
    if totals is not None:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e3
        busy = sum(t for _, t, _ in rows) / 1e3
        totals.update(wall_ms=round(wall, 2), kernel_ms=round(busy, 2), gpu_busy=round(busy / wall, 3))
    return [{"kernel": k, "us_per_call": t, "launches": c} for k, t, c in rows[:top]]


def _profile_ops(fn, steps: int = 2, top: int = 15) -> list:
    """GPU time per (aten op, input shapes) over ``steps`` calls of fn, largest first: which torch
    call launched the generic reduce / elementwise kernels that ``_profile_top`` lists by kernel
    name alone. (The CPU-side profiling slows the step; only the GPU times are used.)"""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages(group_by_input_shape=True):
        t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if t and ev.key.startswith("aten::"):
            rows.append({"op": ev.key, "shapes": str(ev.input_shapes)[:120], "us_per_call": round(t / steps, 1),
                         "calls": ev.count // steps})
    rows.sort(key=lambda r: -r["us_per_call"])
    return rows[:top]


def case_profile_ssd() -> None:
    """Where the SSD fwd+bwd time goes, kernel by kernel (130M shape)."""
    import biomamba.kernels.triton as ours

    x, dt, A, B, C, D, bias, dy = _ssd_inputs(16, 1024, 24, 64, 128)
    chunk = _mixer_chunk()

    def f():
        ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias)[0].backward(dy)
    emit("profile ssd 130m", chunk=chunk,
         fwdbwd_ms=round(_bench(f), 3), kernels=_profile_top(f))


def case_profile_gen(size: str = "130m", bsz: int = 1, gemv_rows: int | None = None,
                     fused_step: bool = False) -> None:
    """One decode step, kernel by kernel (run eagerly under the profiler: a kernel's time does not
    depend on how it was launched), against the CUDA-graph step's wall time: what the graph
    leaves between kernels is the rest. ``gemv_rows`` None: the module's default."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.generate import StepRunner
    ours.FUSED_DECODE_STEP = fused_step
    if gemv_rows is not None:
        ours.GEMV_ROWS = gemv_rows
    torch.manual_seed(0)
    model = build("ours", size, "triton").to(torch.bfloat16).eval()
    prompts = torch.randint(0, VOCAB - 16, (bsz, 256)).tolist()
    with torch.no_grad():
        eager = StepRunner(model, bsz, greedy=True, cuda_graph=False)
        tokens = eager.prefill(prompts).argmax(-1)
        kernels = _profile_top(lambda: eager(tokens), steps=10, top=1000)
        graphed = StepRunner(model, bsz, greedy=True, cuda_graph=True)
        graphed.load(eager.cache)
        for _ in range(3):
            graphed(tokens)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            graphed(tokens)
        torch.cuda.synchronize()
        step_us = (time.perf_counter() - t) / 200 * 1e6
    emit(f"profile gen ours-triton {size} b{bsz}" + (" nogemv" if gemv_rows == 0 else "") + (" fused" if fused_step else ""),
         graph_step_us=round(step_us, 1),
         kernel_us=round(sum(k["us_per_call"] for k in kernels), 1), launches=sum(k["launches"] for k in kernels),
         kernels=kernels[:12])


def case_profile_train(size: str = "130m", bsz: int = 16, seqlen: int = 1024, kind: str = "ours") -> None:
    """Top CUDA kernels of one training step: ours (Triton backend) or the peer (``hf-mamba2``)."""
    import torch
    torch.manual_seed(0)
    model = build(kind, size, "triton")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, VOCAB - 16, (bsz, seqlen), device="cuda")
    labels = torch.roll(x, -1, 1)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "ours":
                loss, count = model.loss(x, labels)
                loss = loss / count
            else:
                logits = model(x).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                                         x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    totals: dict = {}
    kernels = _profile_top(step, steps=2, top=30, totals=totals)
    label = "ours-triton" if kind == "ours" else kind
    emit(f"profile train {label} {size} b{bsz}x{seqlen}", **totals, kernels=kernels,
         torch_ops=_profile_ops(step, top=25))


# ---- models ---------------------------------------------------------------------------------------

def build(kind: str, size: str, backend: str = "torch", chunk_size: int | None = None):
    """The model of ``kind`` at ``size``, random init; ours with its SSD chunk length set to
    ``chunk_size`` when given, and the Triton backend's cap (``SSD_MAX_CHUNK``) with it (the same
    function of the inputs: only the kernels' blocking changes)."""
    import torch
    d, n = SIZES[size]
    if kind == "ours":
        import dataclasses

        from biomamba.model import MambaLM, model_preset
        cfg = model_preset(size)
        if chunk_size is not None:
            import biomamba.kernels.triton as triton_backend
            cfg = dataclasses.replace(cfg, chunk_size=chunk_size)
            triton_backend.SSD_MAX_CHUNK = chunk_size  # (each case runs in a process of its own)
        return MambaLM(cfg, backend="torch").cuda().set_backend(backend)
    if kind == "hf-mamba2":
        from transformers import Mamba2Config, Mamba2ForCausalLM
        cfg = Mamba2Config(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, state_size=128, head_dim=64,
                           num_heads=2 * d // 64, n_groups=1, expand=2, conv_kernel=4, chunk_size=256,
                           tie_word_embeddings=True, residual_in_fp32=True)
        return Mamba2ForCausalLM(cfg).cuda()
    if kind == "ssm-mamba2":
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        cfg = MambaConfig(d_model=d, n_layer=n, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba2"}, rms_norm=True,
                          residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=16)
        return MambaLMHeadModel(cfg, device="cuda", dtype=torch.float32)
    raise ValueError(kind)


def case_train(kind: str, size: str, bsz: int, seqlen: int, backend: str = "torch", compile_: bool = False,
               steps: int = 8, compile_mode: str | None = None, graphed: bool = False, profile: bool = False,
               grad_into_params: bool = True, chunk_size: int | None = None, bwd_tiles: dict | None = None,
               accum: int = 1) -> dict:
    """Training steps on random tokens. ``compile_`` wraps the loss in torch.compile (``compile_mode``
    e.g. "reduce-overhead" for its CUDA graphs); ``graphed`` (ours) replays forward + backward from
    the trainer's CUDA graph (the optimizer step stays eager). Peak memory is the steady state's;
    for ``graphed`` it counts from the capture, where the graph's memory is allocated.
    ``chunk_size``: ours with that SSD chunk length (``build``); ``bwd_tiles``: entries of
    ``ssd.BWD_TILES`` to override; ``accum`` (graphed only): micro-batches an optimizer step (their
    first replays the first-of-step graph, the rest the adding one), tokens/s counts them all."""
    import torch
    if bwd_tiles:
        from biomamba.kernels.triton import ssd
        ssd.BWD_TILES.update(bwd_tiles)  # (each case runs in a process of its own)
    torch.manual_seed(0)
    model = build(kind, size, backend, chunk_size)
    nparams = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, VOCAB - 16, (bsz, seqlen), device="cuda")
    labels = torch.roll(x, -1, 1)
    labels[:, -1] = -100

    def fwd_loss():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "ours":
                loss, count = model.loss(x, labels)
                return loss / count
            out = model(x)
            logits = out.logits if hasattr(out, "logits") else out[0]
            return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                                     x[:, 1:].reshape(-1))
    loss_fn = torch.compile(fwd_loss, mode=compile_mode) if compile_ else fwd_loss
    if graphed:  # the trainer's CUDA-graph micro-step (biomamba.train.cuda_graph)
        from biomamba.train.cuda_graph import MicroStepGraphs
        from biomamba.train.objective import CausalLMObjective, LossModule

        model.set_grad_into_params(grad_into_params)  # as the single-device trainer does

        graphs = MicroStepGraphs(LossModule(model, CausalLMObjective()), list(model.parameters()),
                                 torch.device("cuda"), torch.bfloat16)
        batches = [{"input_ids": x, "seq_idx": None, "targets": labels}]
        for _ in range(accum - 1):
            xk = torch.randint(0, VOCAB - 16, (bsz, seqlen), device="cuda")
            batches.append({"input_ids": xk, "seq_idx": None, "targets": torch.roll(xk, -1, 1)})
            batches[-1]["targets"][:, -1] = -100
        inv_count = 1.0 / (accum * int((labels != -100).sum()))
        torch.cuda.reset_peak_memory_stats()  # the capture allocates the graphs' activations: count them
        graphs.prepare(batches)
    elif accum != 1:
        raise ValueError("accum > 1 is measured with graphed=True only")

    def step():
        if graphed:
            loss = sum(graphs.run(b, inv_count) * inv_count for b in batches)
        else:
            loss = loss_fn()
            loss.backward()
        opt.step()
        if graphed:
            graphs.zero_grads()
        else:
            opt.zero_grad(set_to_none=True)
        return loss
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    if not graphed:  # steady state; a graph's memory was allocated (and counted) at capture
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    tok_s = accum * bsz * seqlen / dt
    out = dict(tok_s=round(tok_s), step_ms=round(dt * 1e3, 1), mfu_6N=round(6 * nparams * tok_s / PEAK_FLOPS, 3),
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1), params_m=round(nparams / 1e6, 1),
               loss=round(float(loss), 3))
    if profile:
        totals: dict = {}
        out["kernels"] = _profile_top(step, steps=2, top=40, totals=totals)
        out.update(totals)
    return out


def case_recipe(size: str, steps: int, global_batch: int, cuda_graph: str) -> dict:
    """The real trainer (bench/bench_train.py: the size's recipe on random init, packed documents),
    with the micro-step replayed from CUDA graphs or eager (``cuda_graph`` true / false)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "result.json")
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "bench_train.py"), "--size", size,
                        "--steps", str(steps), "--global-batch", str(global_batch), "--warmup", "10",
                        "--json", target, "--", f"--train.cuda_graph={cuda_graph}"], check=True,
                       stdout=subprocess.DEVNULL)
        with open(target) as f:
            r = json.load(f)
    return {k: r[k] for k in ("tokens_per_s", "mfu", "peak_memory_gb", "cuda_graph", "eager_micro_steps", "data_s_per_step",
                              "micro_batch", "accumulation", "loss_first", "loss_last", "wall_s")}


def case_fwd(kind: str, size: str, bsz: int, seqlen: int, backend: str = "torch", steps: int = 5) -> dict:
    """Perplexity-evaluation forward: ours returns Σ loss without logits; the peer returns logits."""
    import torch
    torch.manual_seed(0)
    model = build(kind, size, backend).to(torch.bfloat16).eval()
    x = torch.randint(0, VOCAB - 16, (bsz, seqlen), device="cuda")
    labels = torch.roll(x, -1, 1)

    def run():
        if kind == "ours":
            return model.loss(x, labels)[0]
        out = model(x)
        return out.logits if hasattr(out, "logits") else out[0]
    with torch.no_grad():
        for _ in range(2):
            run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    return dict(tok_s=round(bsz * seqlen / dt), ms=round(dt * 1e3, 1),
                peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))


def case_gen(kind: str, size: str, bsz: int, prompt: int, new: int, backend: str = "torch",
             cuda_graph: bool = True, gemv_rows: int | None = None, fused_step: bool = False,
             prefill_graph: bool = True, gemv_tiles: dict | None = None, state_dtype: str = "float32") -> dict:
    """Greedy decoding, end to end as a user calls it (prefill + ``new`` tokens), ms per new token,
    and the prefill alone (the same call with one new token).
    Ours: ``biomamba.generate.generate_ids`` (CUDA-graph step and prefill unless ``cuda_graph`` /
    ``prefill_graph`` is off; each norm + projection as one fused GEMV for batches up to
    ``gemv_rows``, the module's default when None, tiled as the defaults updated by ``gemv_tiles``;
    conv + SSM step as one kernel with ``fused_step``; SSM states kept in ``state_dtype``, and when
    that is not fp32, how many of the greedy tokens equal those decoded with fp32 states);
    the peer: mamba_ssm's ``generate(cg=True)``, timed the same way (as peer_bench.py does)."""
    import torch
    if kind == "ours":
        import biomamba.generate as generate
        import biomamba.kernels.triton as ours
        ours.FUSED_DECODE_STEP = fused_step
        if gemv_rows is not None:
            ours.GEMV_ROWS = gemv_rows
        if not prefill_graph:
            generate.PREFILL_GRAPH_TOKENS = 0
        from biomamba.kernels.triton import gemv
        gemv.TILES.update(gemv_tiles or {})
    torch.manual_seed(0)
    model = build(kind, size, backend).to(torch.bfloat16).eval()
    if kind == "ours":
        model.ssm_state_dtype = getattr(torch, state_dtype)
    x = torch.randint(0, VOCAB - 16, (bsz, prompt), device="cuda")
    if kind == "ssm-mamba2":
        def run(n):
            return model.generate(x, max_length=prompt + n, cg=True, top_k=1)
    else:
        from biomamba.generate import SamplingConfig, generate_ids
        prompts = x.tolist()

        def run(n):
            return generate_ids(model, prompts, SamplingConfig(max_new_tokens=n), eos_id=None, cuda_graph=cuda_graph)

    def median_s(n):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run(n)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return sorted(times)[1]

    with torch.no_grad():
        run(new)
        run(new)  # ours captures the step and the prefill on the second call
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        dt = median_s(new)
        first = median_s(1)
        row = dict(ms_per_tok=round(dt / new * 1e3, 3), tok_s=round(bsz * new / dt, 1),
                   prefill_and_one_ms=round(first * 1e3, 2),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        if kind == "ours" and state_dtype != "float32":
            got = run(new)
            model.ssm_state_dtype = torch.float32
            want = run(new)
            same = [next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), len(w)) for g, w in zip(got, want)]
            row["tokens_before_divergence_vs_fp32_state"] = dict(min=min(same), median=sorted(same)[len(same) // 2],
                                                                 of=new)
    return row


# ---- sweeps: tile / warp variants of our kernels, each checked, then timed --------------------

# (backward kernel, its blocks): the width-4 default first (positions a program walks, channels, warps)
CONV_BWD_VARIANTS = [("width4", (64, 256, 2)), ("width4", (64, 512, 4)), ("width4", (128, 512, 4)),
                     ("width4", (128, 256, 2)), ("width4", (64, 1024, 8)), ("generic", (64, 32, 4))]
# the mixer's conv input: (batch, channels, in_proj width, the channels' offset in it) at 130M and 1.3B
CONV_SHAPES = {"130m": (16, 1792, 3352, 1536), "1.3b": (8, 4352, 8512, 4096)}


def case_sweep_conv(size: str = "130m") -> None:
    """causal conv1d + SiLU backward with seq_idx (documents of 300 tokens) at a mixer's shape, x
    a strided view of in_proj's output: for every backward kernel and blocking, y, dx, dw, db
    against the torch reference and the backward kernels' CUDA time (µs a call, the weight
    gradient's partial-sum reduction included)."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.kernels import reference as ref
    from biomamba.kernels.triton import conv

    torch.manual_seed(0)
    b, d, width, offset = CONV_SHAPES[size]
    l = 1024
    wide = torch.randn(b, l, width, device="cuda", dtype=torch.bfloat16)
    xv = wide[..., offset:offset + d].detach().requires_grad_()
    w = torch.randn(d, 4, device="cuda", requires_grad=True)
    bias = torch.randn(d, device="cuda", requires_grad=True)
    seq = (torch.arange(l, device="cuda") // 300).to(torch.int32)[None].expand(b, l).contiguous()
    dy = torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16)
    xr = xv.detach().float().requires_grad_()
    wr, br = w.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    yr = ref.causal_conv1d(xr, wr, br, seq_idx=seq)
    yr.backward(dy.float())
    default, default_kernel = dict(conv.BLOCKS), conv.BWD_KERNEL
    for kernel, blocks in CONV_BWD_VARIANTS:
        conv.BLOCKS.update(default)
        conv.BLOCKS["bwd4" if kernel == "width4" else "bwd"] = blocks
        conv.BWD_KERNEL = kernel
        for t in (xv, w, bias):
            t.grad = None
        y = ours.causal_conv1d(xv, w, bias, seq_idx=seq)
        y.backward(dy)
        err = {"y": _rel(y, yr), "dx": _rel(xv.grad, xr.grad), "dw": _rel(w.grad, wr.grad), "db": _rel(bias.grad, br.grad)}
        y = ours.causal_conv1d(xv, w, bias, seq_idx=seq)
        kern = _profile_top(lambda: torch.autograd.grad(y, (xv, w, bias), dy, retain_graph=True), steps=5, top=8)
        emit(f"sweep conv {size} {kernel} BL{blocks[0]} BD{blocks[1]} w{blocks[2]}", rel_err_vs_torch=err,
             bwd_us=round(sum(k["us_per_call"] for k in kern), 1), kernels={k["kernel"]: k["us_per_call"] for k in kern})
    conv.BLOCKS.update(default)
    conv.BWD_KERNEL = default_kernel


GEMV_VARIANTS = [dict(BN=8, BK=512, warps=8, one_block_k=2048),  # the first: gemv.TILES
                 dict(BN=8, BK=1024, warps=8),
                 dict(BN=8, BK=512, warps=4, one_block_k=2048), dict(BN=16, BK=512, warps=8, one_block_k=2048),
                 dict(BN=4, BK=512, warps=4, one_block_k=2048)]
GEMV_SWEEP_ROWS = (1, 2, 4, 8, 16)  # the batches timed at the default tiling (the variants: at 1)


def _graph_us(fn, replays: int = 50) -> float:
    """µs per replay of ``fn`` captured as one CUDA graph (launch gaps included, as in decoding)."""
    import torch

    from biomamba.generate import _on_side_stream
    _on_side_stream(fn)  # the warm-up capture wants
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays * 1e3


def case_sweep_gemv() -> None:
    """A decode step's two norm + projection pairs, bf16, for every layer of the model (distinct
    weights, so they stream from HBM as in decoding, not from L2), and the final norm + LM head,
    each captured as a CUDA graph: µs a layer (the head: µs) for the norm kernel + cuBLAS
    (``composed``) and for the fused norm + GEMV (the head too, whatever GEMV_MAX_WEIGHT says), at
    each tiling for one row and at the default tiling for GEMV_SWEEP_ROWS; the fused result's error
    against the reference."""
    import torch

    import biomamba.kernels.triton as T
    from biomamba.kernels import reference as R
    from biomamba.kernels.triton import gemv

    torch.manual_seed(0)
    default, default_rows, default_weight = dict(gemv.TILES), T.GEMV_ROWS, T.GEMV_MAX_WEIGHT
    T.GEMV_MAX_WEIGHT = VOCAB * 2048  # every weight below fused, the 1.3B head included
    bf = dict(device="cuda", dtype=torch.bfloat16)

    def tiled(variant: dict) -> str:
        gemv.TILES.update(default)
        gemv.TILES.update(BN_wide=variant["BN"], BN_narrow=variant["BN"], BK=variant["BK"],
                          warps=variant["warps"], one_block_k=variant.get("one_block_k", 0))
        return "BN{BN} BK{BK} w{warps}".format(**variant) + (
            f" one-block≤{variant['one_block_k']}" if variant.get("one_block_k") else "")

    for size, (layers, d, di, n_in) in {"130m": (24, 768, 1536, 3352), "1.3b": (48, 2048, 4096, 8512)}.items():
        w_in = [torch.randn(n_in, d, **bf) * 0.03 for _ in range(layers)]
        w_out = [torch.randn(d, di, **bf) * 0.03 for _ in range(layers)]
        w_head = torch.randn(VOCAB, d, **bf) * 0.03  # 50,288: already a multiple of 16
        nw_in, nw_out = torch.ones(d, **bf), torch.ones(di, **bf)
        for rows in GEMV_SWEEP_ROWS:
            x, r = torch.randn(rows, d, **bf), torch.randn(rows, d, device="cuda")
            y, z = torch.randn(rows, di, **bf), torch.randn(rows, di, **bf)
            chains = {"in_us": (layers, lambda: [T.norm_linear(x, r, nw_in, 1e-5, w, None) for w in w_in]),
                      "out_us": (layers, lambda: [T.gated_norm_linear(y, z, nw_out, 1e-5, di, w, None)
                                                  for w in w_out]),
                      "head_us": (1, lambda: T.norm_linear(x, r, nw_in, 1e-5, w_head, None))}
            with torch.no_grad():
                refs = (R.norm_linear(x, r, nw_in, 1e-5, w_in[0], None)[0],
                        R.gated_norm_linear(y, z, nw_out, 1e-5, di, w_out[0], None))
                T.GEMV_ROWS = 0
                row = {"composed": {k: round(_graph_us(fn) / n, 2) for k, (n, fn) in chains.items()}}
                T.GEMV_ROWS = gemv.MAX_ROWS
                for variant in GEMV_VARIANTS if rows == 1 else GEMV_VARIANTS[:1]:
                    name = tiled(variant)
                    try:
                        got = (T.norm_linear(x, r, nw_in, 1e-5, w_in[0], None)[0],
                               T.gated_norm_linear(y, z, nw_out, 1e-5, di, w_out[0], None))
                        row[name] = {k: round(_graph_us(fn) / n, 2) for k, (n, fn) in chains.items()}
                        row[name]["rel_err"] = max(_rel(a, b) for a, b in zip(got, refs))
                    except Exception as exc:  # a tiling the compiler rejects: say which, go on
                        row[name] = {"error": str(exc).strip().splitlines()[-1][:160]}
            emit(f"sweep gemv {size} b{rows}", **row)
            gemv.TILES.update(default)
    T.GEMV_ROWS, T.GEMV_MAX_WEIGHT = default_rows, default_weight


# the SSD backward's tiles (ssd.BWD_TILES), the first the default and the gradients' reference. Swept
# before: the dC/dB head split (session 5), the dx tilings (session 6: BK 16 / 64, 8 warps, BM 128:
# none faster), the register caps (session 7 call 1: dx at 168 faster, dC / dB at 168 or 128 slower)
# the PW kernel's options (session 7 call 2: 8 warps slower, dcdb_BK 32 faster) and the dC / dB split
# apart from PW's (session 8 call 1: 256 programs faster than 512 and 128). These: the PW split (1,024
# programs faster at 1.3B in session 8 call 2, not measured at 130M with 256 dC/dB programs), the PW
# kernel's register cap, and the defaults before session 8. Session 9: PW capped at 168, at most 24
# heads a program, dx at 168 (160 and 184 slower). These: the dx kernel with one product a step
# (session 10: the log-decay gradient's column part moved to PW) uncapped, capped lower, wider,
# with 8 warps; PW (one more reduction) at a higher cap.
SSD_BWD_VARIANTS = [dict(), dict(dx_maxnreg=None), dict(dx_maxnreg=128), dict(BK=64), dict(dx_warps=8),
                    dict(pw_maxnreg=192)]


def case_sweep_ssd_bwd(size: str = "130m") -> None:
    """SSD backward variants at the 130M or 1.3B shape: gradients against the first variant,
    median fwd+bwd ms and each backward kernel's CUDA time."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.kernels.triton import ssd

    b, l, heads = (16, 1024, 24) if size == "130m" else (8, 1024, 64)
    variants = SSD_BWD_VARIANTS
    torch.manual_seed(0)
    x, dt, A, B, C, D, bias, dy = _ssd_inputs(b, l, heads, 64, 128)
    seq = (torch.arange(l, device="cuda") // 300).to(torch.int32)[None].expand(b, l).contiguous()
    leaves = (x, dt, A, B, C, D, bias)
    chunk = _mixer_chunk()
    base = None
    for variant in _each_variant(ssd.BWD_TILES, variants):
        for with_seq in (False, True):
            s_ = seq if with_seq else None
            for t in leaves:
                t.grad = None
            ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias, seq_idx=s_)[0].backward(dy)
            grads = [t.grad.clone() for t in leaves]
            if base is None or (with_seq and len(base) == 1):
                base = (base or []) + [grads]
            ref_grads = base[int(with_seq)]
            err = {nm: _rel(g, r) for nm, g, r in zip(("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias"), grads, ref_grads)}

            def f():
                ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias, seq_idx=s_)[0].backward(dy)
            kern = [k for k in _profile_top(f, steps=2, top=20) if k["kernel"].startswith("_bwd_")]
            label = (f"sweep ssd_bwd {size} " + (" ".join(f"{k}{v}" for k, v in variant.items()) or "default")
                     + (" seq_idx" if with_seq else ""))
            emit(label, chunk=chunk, rel_err_vs_first=err, fwdbwd_ms=round(_bench(f), 3),
                 bwd_kernels_us={k["kernel"]: k["us_per_call"] for k in kern})


# the chunk-state passes' tiles (ssd.STATE_TILES): the first is the default
# (session 11 call 2 also ran BN 32, BP 32 + BN 32, BK 32, 8 warps, 2 and 4 stages: none faster at the
# training shapes; BK 32 was 4.6 % faster on the perplexity one)
SSD_STATE_VARIANTS = [dict(), dict(BN=64), dict(BN=128)]
# (batch, length, heads) of the state-pass sweep: the training micro-batches and the perplexity forward
SSD_STATE_SHAPES = {"130m": (16, 1024, 24), "1.3b": (8, 1024, 64), "130m-long": (8, 16384, 24)}


def case_sweep_ssd_states(size: str = "1.3b") -> None:
    """The chunk-state passes (forward and backward kernels) over STATE_TILES variants at the
    mixers' chunk, with documents: the states and gradients against the first variant and the two
    kernels' CUDA time (µs a call). "130m-long": the forward only (8 × 16,384, the perplexity case).
    What they must move at least (bf16): forward x, B in and the starting states out; backward dy,
    C and the starting states in, dZ out."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.kernels.triton import ssd

    b, l, heads = SSD_STATE_SHAPES[size]
    fwd_only = size.endswith("long")
    chunk = _mixer_chunk()
    torch.manual_seed(0)
    x, dt, A, B, C, D, bias, dy = _ssd_inputs(b, l, heads, 64, 128)
    seq = (torch.arange(l, device="cuda") // 300).to(torch.int32)[None].expand(b, l).contiguous()
    leaves = (x, dt, A, B, C, D, bias)
    states = b * (l // chunk) * heads * 64 * 128 * 2
    floor_fwd = (2 * x.numel() + 2 * B.numel() + states) / 4.8e6  # µs at 4.8 TB/s
    floor_bwd = (2 * dy.numel() + 2 * C.numel() + 2 * states) / 4.8e6
    first = None
    for variant in _each_variant(ssd.STATE_TILES, SSD_STATE_VARIANTS):
        def f():
            if fwd_only:
                with torch.no_grad():
                    return ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias, seq_idx=seq)
            y, fin = ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias, seq_idx=seq)
            torch.autograd.backward([y, fin], [dy, torch.ones_like(fin)])
            return y, fin
        for t in leaves:
            t.grad = None
        y, fin = f()
        got = [y, fin] + ([] if fwd_only else [t.grad.clone() for t in leaves])
        first = first or got
        names = ("y", "final") + (() if fwd_only else ("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias"))
        kern = [k for k in _profile_top(f, steps=3, top=30) if k["kernel"].startswith("_states")]
        emit(f"sweep ssd_states {size} " + (" ".join(f"{k}{v}" for k, v in variant.items()) or "default"),
             chunk=chunk, rel_err_vs_first={nm: _rel(a, r) for nm, a, r in zip(names, got, first)},
             kernels_us={k["kernel"]: k["us_per_call"] for k in kern},
             floor_us=dict(fwd=round(floor_fwd, 1), bwd=round(floor_bwd, 1)))


# the norm backward's launch (norm.BWD_LAUNCH): the first is the default
NORM_BWD_VARIANTS = [dict(), dict(prefetch=True), dict(tile=2048), dict(tile=2048, prefetch=True),
                     dict(tile=8192), dict(tile=2048, programs=1024), dict(tile=2048, warps=4),
                     dict(tile=2048, warps=16, prefetch=True), dict(programs=1024, prefetch=True)]
# (rows, d_model, d_inner) of a training micro-batch: 130M at 16 x 1,024, 1.3B at 8 x 1,024
NORM_SHAPES = {"130m": (16384, 768, 1536), "1.3b": (8192, 2048, 4096)}


def case_sweep_norm_bwd(size: str = "1.3b") -> None:
    """Norm backward launches at a training shape, as the model calls them under bf16 autocast:
    the gated RMSNorm (y bf16, z a view of in_proj's output, one group) and the block's RMSNorm
    (the fp32 residual); dx / dz / dw against the default and the backward kernel's CUDA time.
    Bytes each must move: gated 5 x rows x d_inner x 2 B, block 2 x rows x d_model x 4 B + 2 B."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.kernels.triton import norm

    rows, d, di = NORM_SHAPES[size]
    torch.manual_seed(0)
    wide = torch.randn(rows, 2 * di + 2 * 128 + di // 64 + di, device="cuda", dtype=torch.bfloat16)
    z = wide[:, :di].detach().requires_grad_()
    y = torch.randn(rows, di, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    wg = (1 + 0.1 * torch.randn(di, device="cuda")).requires_grad_()
    res = torch.randn(rows, d, device="cuda", requires_grad=True)
    wb = (1 + 0.1 * torch.randn(d, device="cuda")).requires_grad_()
    dy_g = torch.randn(rows, di, device="cuda", dtype=torch.bfloat16)
    dy_b = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    first = None
    for variant in _each_variant(norm.BWD_LAUNCH, NORM_BWD_VARIANTS):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_g = ours.gated_rmsnorm(y, z, wg, 1e-5, di)
            out_b = ours.rmsnorm(res, wb, 1e-5)
        grads = (torch.autograd.grad(out_g, (y, z, wg), dy_g, retain_graph=True)
                 + torch.autograd.grad(out_b, (res, wb), dy_b, retain_graph=True))
        first = first or grads
        err = {k: _rel(a, b) for k, a, b in zip(("dy", "dz", "dwg", "dres", "dwb"), grads, first)}
        kern_g = _profile_top(lambda: torch.autograd.grad(out_g, (y, z, wg), dy_g, retain_graph=True), steps=5, top=6)
        kern_b = _profile_top(lambda: torch.autograd.grad(out_b, (res, wb), dy_b, retain_graph=True), steps=5, top=6)
        emit(f"sweep norm_bwd {size} " + (" ".join(f"{k}{v}" for k, v in variant.items()) or "default"),
             rel_err_vs_first=err,
             gated_us={k["kernel"]: k["us_per_call"] for k in kern_g},
             block_us={k["kernel"]: k["us_per_call"] for k in kern_b},
             floor_us=dict(gated=round(5 * rows * di * 2 / 4.8e6, 1), block=round(rows * d * 10 / 4.8e6, 1)))


SSD_FWD_VARIANTS = [dict(out_BM=64, out_BK=64, out_warps=4),
                    dict(out_BM=64, out_BK=32, out_warps=4),
                    dict(out_BM=64, out_BK=64, out_warps=8),
                    dict(out_BM=128, out_BK=64, out_warps=8),
                    dict(out_BM=32, out_BK=32, out_warps=4),
                    dict(out_BM=64, out_BK=64, out_warps=4, stages=2),
                    dict(out_BM=64, out_BK=64, out_warps=4, stages=4)]


def case_sweep_ssd_fwd() -> None:
    """SSD forward tiles / warps at the 130M shape: y against the first variant, the forward
    kernels' CUDA time (µs) and the forward median."""
    import torch

    import biomamba.kernels.triton as ours
    from biomamba.kernels.triton import ssd

    torch.manual_seed(0)
    x, dt, A, B, C, D, bias, _ = _ssd_inputs(16, 1024, 24, 64, 128)
    chunk = _mixer_chunk()
    first = None
    for variant in _each_variant(ssd.FWD_TILES, SSD_FWD_VARIANTS):
        def f():
            with torch.no_grad():
                return ours.ssd_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=bias)[0]
        y = f()
        first = y if first is None else first
        kern = [k for k in _profile_top(f, steps=3, top=20) if k["kernel"].startswith("_")]
        emit("sweep ssd_fwd " + " ".join(f"{k}{v}" for k, v in variant.items()), chunk=chunk,
             rel_err_vs_first=_rel(y, first),
             fwd_ms=round(_bench(f), 3), kernels_us={k["kernel"]: k["us_per_call"] for k in kern})


CASES = [
    # (label, function, args, kwargs)
    ("profile ssd", "case_profile_ssd", [], {}),
    ("profile train 130m", "case_profile_train", [], {}),
    ("profile train 1.3b", "case_profile_train", ["1.3b", 8, 1024], {}),
    ("profile train hf-mamba2 1.3b", "case_profile_train", ["1.3b", 8, 1024, "hf-mamba2"], {}),
    ("profile gen 130m b1", "case_profile_gen", ["130m", 1], {}),
    ("profile gen 130m b1 nogemv", "case_profile_gen", ["130m", 1, 0], {}),
    ("profile gen 130m b1 fused", "case_profile_gen", ["130m", 1, None, True], {}),
    ("kernels ssd", "case_kernels_ssd", [], {}),
    ("kernels other", "case_kernels_other", [], {}),
    ("sweep conv 130m", "case_sweep_conv", ["130m"], {}),
    ("sweep conv 1.3b", "case_sweep_conv", ["1.3b"], {}),
    ("sweep ssd_bwd 130m", "case_sweep_ssd_bwd", [], {}),
    ("sweep ssd_bwd 1.3b", "case_sweep_ssd_bwd", ["1.3b"], {}),
    ("sweep ssd_fwd", "case_sweep_ssd_fwd", [], {}),
    ("sweep ssd_states 1.3b", "case_sweep_ssd_states", ["1.3b"], {}),
    ("sweep ssd_states 130m ", "case_sweep_ssd_states", ["130m"], {}),
    ("sweep ssd_states 130m-long", "case_sweep_ssd_states", ["130m-long"], {}),
    ("sweep norm_bwd 1.3b", "case_sweep_norm_bwd", ["1.3b"], {}),
    ("sweep norm_bwd 130m", "case_sweep_norm_bwd", ["130m"], {}),
    ("sweep gemv", "case_sweep_gemv", [], {}),
    ("train ours-triton 130m b16x1024", "case_train", ["ours", "130m", 16, 1024], {"backend": "triton"}),
    ("train ours-triton 130m b32x1024", "case_train", ["ours", "130m", 32, 1024], {"backend": "triton"}),
    ("train ours-torch 130m b16x1024", "case_train", ["ours", "130m", 16, 1024], {"backend": "torch"}),
    ("train hf-mamba2 130m b16x1024", "case_train", ["hf-mamba2", "130m", 16, 1024], {}),
    ("train ssm-mamba2 130m b16x1024", "case_train", ["ssm-mamba2", "130m", 16, 1024], {}),
    ("train ours-triton-compile 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "compile_": True}),
    ("train ours-triton-compile-ro 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "compile_": True, "compile_mode": "reduce-overhead"}),
    ("train ours-mamba_ssm 130m b16x1024", "case_train", ["ours", "130m", 16, 1024], {"backend": "mamba_ssm"}),
    ("train ours-triton-graphed 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True}),
    ("train ours-triton-graphed-autogradacc 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True, "grad_into_params": False}),
    ("train ours-triton-graphed-chunk256 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True, "chunk_size": 256}),
    ("train ours-triton-graphed-chunk64 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True, "chunk_size": 64}),
    ("train ours-triton-graphed-accum2 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True, "accum": 2}),
    ("recipe 130m graphs", "case_recipe", ["130m", 100, 32, "true"], {}),
    ("recipe 130m eager", "case_recipe", ["130m", 100, 32, "false"], {}),
    ("recipe 1.3b graphs", "case_recipe", ["1.3b", 30, 16, "true"], {}),
    ("recipe 1.3b eager", "case_recipe", ["1.3b", 30, 16, "false"], {}),
    ("fwd ours-triton 130m b8x16384", "case_fwd", ["ours", "130m", 8, 16384], {"backend": "triton"}),
    ("fwd hf-mamba2 130m b8x16384", "case_fwd", ["hf-mamba2", "130m", 8, 16384], {}),
    ("gen ours-triton 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256], {"backend": "triton"}),
    ("gen ours-triton-nogemv 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "gemv_rows": 0}),
    ("gen ours-triton-bk1024 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "gemv_tiles": {"BK": 1024}}),
    ("gen ours-triton-oneblock 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "gemv_tiles": {"one_block_k": 2048, "warps": 8}}),  # the default since call K
    ("gen ours-triton-noprefillgraph 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "prefill_graph": False}),
    ("gen ours-triton-fused 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "fused_step": True}),
    ("gen ours-triton 130m b1 p256+256 eager", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "cuda_graph": False}),
    ("gen ours-torch 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256], {"backend": "torch"}),
    ("gen ssm-mamba2 130m b1 p256+256 cg", "case_gen", ["ssm-mamba2", "130m", 1, 256, 256], {}),
    ("gen ours-triton 130m b64 p256+128 cg", "case_gen", ["ours", "130m", 64, 256, 128], {"backend": "triton"}),
    ("gen ssm-mamba2 130m b64 p256+128 cg", "case_gen", ["ssm-mamba2", "130m", 64, 256, 128], {}),
    ("train ours-triton 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024], {"backend": "triton"}),
    ("train hf-mamba2 1.3b b8x1024", "case_train", ["hf-mamba2", "1.3b", 8, 1024], {}),
    ("train ours-triton-graphed 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True}),
    ("train ours-triton-graphed-autogradacc 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "grad_into_params": False}),
    ("train ours-triton-graphed-dxcap128 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "bwd_tiles": {"dx_maxnreg": 128}}),
    ("train ours-triton-graphed-chunk256 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "chunk_size": 256}),
    ("train ours-triton-graphed-accum2 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "accum": 2}),
    ("train ours-triton-graphed-chunk64 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "chunk_size": 64}),
    ("profile train-graphed 1.3b b8x1024", "case_train", ["ours", "1.3b", 8, 1024],
     {"backend": "triton", "graphed": True, "profile": True}),
    ("profile train-graphed 130m b16x1024", "case_train", ["ours", "130m", 16, 1024],
     {"backend": "triton", "graphed": True, "profile": True}),
    ("gen ours-triton 1.3b b1 p256+256 cg", "case_gen", ["ours", "1.3b", 1, 256, 256], {"backend": "triton"}),
    ("gen ssm-mamba2 1.3b b1 p256+256 cg", "case_gen", ["ssm-mamba2", "1.3b", 1, 256, 256], {}),
    ("gen ours-triton-oneblock 1.3b b1 p256+256 cg", "case_gen", ["ours", "1.3b", 1, 256, 256],
     {"backend": "triton", "gemv_tiles": {"one_block_k": 2048, "warps": 8}}),  # the default since call K
    ("gen ours-triton-nogemv 1.3b b1 p256+256 cg", "case_gen", ["ours", "1.3b", 1, 256, 256],
     {"backend": "triton", "gemv_rows": 0}),
    ("gen ours-triton 1.3b b64 p256+128 cg", "case_gen", ["ours", "1.3b", 64, 256, 128], {"backend": "triton"}),
    ("gen ssm-mamba2 1.3b b64 p256+128 cg", "case_gen", ["ssm-mamba2", "1.3b", 64, 256, 128], {}),
    ("gen ours-triton-bf16state 1.3b b64 p256+128 cg", "case_gen", ["ours", "1.3b", 64, 256, 128],
     {"backend": "triton", "state_dtype": "bfloat16"}),
    ("gen ours-triton-bf16state 1.3b b1 p256+256 cg", "case_gen", ["ours", "1.3b", 1, 256, 256],
     {"backend": "triton", "state_dtype": "bfloat16"}),
    ("gen ours-triton-bf16state 130m b1 p256+256 cg", "case_gen", ["ours", "130m", 1, 256, 256],
     {"backend": "triton", "state_dtype": "bfloat16"}),
]


def main(argv: list[str]) -> int:
    if argv[:1] == ["one"]:
        fn, args, kwargs, label = argv[1], json.loads(argv[2]), json.loads(argv[3]), argv[4]
        res = globals()[fn](*args, **kwargs)
        if res is not None:
            emit(label, **res)
        return 0
    out = os.environ.get("OUT", "/tmp")
    timeout = int(os.environ.get("CASE_TIMEOUT", "300"))
    rows = []
    for label, fn, args, kwargs in CASES:
        if argv and not any(a in label for a in argv):
            continue
        t = time.time()
        try:
            p = subprocess.run([sys.executable, __file__, "one", fn, json.dumps(args), json.dumps(kwargs), label],
                               capture_output=True, text=True, timeout=timeout)
            got = [json.loads(ln[7:]) for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not got:
                got.append({"case": label, "error": (p.stderr or p.stdout)[-800:]})
        except subprocess.TimeoutExpired:
            got = [{"case": label, "error": f"timeout {timeout}s"}]
        for r in got:
            r["wall_s"] = round(time.time() - t, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
            with open(os.path.join(out, "bench.jsonl"), "a") as f:
                f.write(json.dumps(r) + "\n")
    print("\n=== summary")
    for r in rows:
        short = {k: v for k, v in r.items() if k not in ("case", "error")}
        err = ("ERR " + r["error"][-300:].replace("\n", " | ")) if "error" in r else ""
        print(f"{r['case']:44s} {json.dumps(short)} {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
