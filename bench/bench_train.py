"""The pretraining recipe on random init: tokens/s, MFU and peak memory of the real trainer.

    python bench/bench_train.py                                   # 130M recipe, 1 GPU, 200 steps
    python bench/bench_train.py --size 1.3b --micro 8 --steps 100
    torchrun --nproc_per_node 2 bench/bench_train.py --strategy fsdp   # or ddp

It runs ``configs/pretrain/mamba2-<size>.yaml`` through ``biomamba.train.Trainer`` (the
same loop as ``biomamba pretrain``: LLRD groups, WSD schedule, EMA, grad clipping, bf16
autocast, token-weighted accumulation) with the model randomly initialised from the preset
and synthetic packed data (random ids, documents of random length ending in EOS, so
``seq_idx`` boundaries are exercised). Only the global batch is smaller by default (64
sequences instead of the recipe's 256) to fit a few hundred steps into minutes; tokens/s
does not depend on the accumulation count. Steps before ``--warmup`` are excluded from
tokens/s (kernel autotuning, allocator growth). One checkpoint is saved at the end and its
time reported.

Prints one ``RESULT {json}`` line and a row for bench/RESULTS.md; ``--json PATH`` (default
``$OUT/bench_train.json`` when $OUT is set) writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class SyntheticPacked:
    """Deterministic random packed rows: ``ds[i]`` → input_ids (seq_len,) int64, seq_idx int32."""

    def __init__(self, n: int, seq_len: int, vocab: int, eos: int = 0, mean_doc: int = 300, seed: int = 0):
        self.n, self.seq_len, self.vocab, self.eos, self.mean_doc, self.seed = n, seq_len, vocab, eos, mean_doc, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, i])
        ids = rng.integers(1, self.vocab, self.seq_len, dtype=np.int64)
        ends = np.cumsum(rng.geometric(1.0 / self.mean_doc, size=self.seq_len // 8 + 2))
        ids[ends[ends < self.seq_len]] = self.eos
        seq_idx = np.zeros(self.seq_len, dtype=np.int32)
        np.cumsum(ids[:-1] == self.eos, out=seq_idx[1:])
        return {"input_ids": ids, "seq_idx": seq_idx}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="130m", choices=["130m", "370m", "780m", "1.3b", "2.7b"])
    p.add_argument("--preset", default=None, help="model preset instead of the size's (e.g. tiny, for a CPU smoke run)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20, help="steps excluded from tokens/s")
    p.add_argument("--global-batch", type=int, default=64, help="sequences per optimizer step (recipe: 256)")
    p.add_argument("--micro", type=int, default=None, help="per-device micro-batch (default: the recipe's)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--strategy", default="auto", choices=["auto", "single", "ddp", "fsdp"])
    p.add_argument("--backend", default="auto", help="kernel backend: auto | torch | triton | mamba_ssm")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra --key=value recipe overrides (after --)")
    args = p.parse_args()

    import torch

    from biomamba.config import load_config
    from biomamba.train.config import PretrainConfig
    from biomamba.train.distributed import setup_distributed
    from biomamba.train.objective import CausalLMObjective
    from biomamba.train.pretrain import build_model
    from biomamba.train.trainer import Trainer

    recipe = REPO / "configs" / "pretrain" / f"mamba2-{args.size}.yaml"
    overrides = [
        "--data=synthetic", "--model.init_from=null", f"--model.preset={args.preset or args.size}", f"--model.backend={args.backend}",
        f"--train.max_steps={args.steps}", f"--train.global_batch_size={args.global_batch}",
        f"--train.strategy={args.strategy}", "--train.log_every=10", "--train.tensorboard=false",
        f"--train.activation_checkpointing={str(args.activation_checkpointing).lower()}",
        "--eval.every=0", "--eval.at_start=false", "--checkpoint.every=0", "--checkpoint.export=[]",
        "--resume=false", f"--ema.enabled={str(not args.no_ema).lower()}",
    ]
    if args.micro:
        overrides.append(f"--train.per_device_train_batch_size={args.micro}")
    cfg = load_config(PretrainConfig, recipe, overrides + list(args.overrides))
    info = setup_distributed(cfg.train.device)
    if args.out:
        out = Path(args.out)
    else:  # one temporary run directory, shared by all ranks
        out = Path(info.broadcast_object(tempfile.mkdtemp(prefix="bench-train-") if info.is_main else None))
    model = build_model(cfg.model, None, seed=cfg.train.seed)
    data = SyntheticPacked(n=max(args.global_batch * 8, 1024), seq_len=args.seq_len, vocab=model.config.vocab_size)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    t0 = time.time()
    trainer = Trainer(cfg, model, CausalLMObjective(), data, {}, out, info, backend=cfg.model.backend)
    summary = trainer.fit()
    wall = time.time() - t0

    result: dict = {}
    if info.is_main:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "loss" in r]
        start = [r for r in train if r["step"] <= args.warmup]
        steady = [r for r in train if r["step"] > args.warmup]
        # tokens/s over the steady window: tokens and training seconds after the warm-up steps
        t_tok, t_s = (start[-1]["tokens"], start[-1]["train_s"]) if start else (0, 0.0)
        tps = ((steady[-1]["tokens"] - t_tok) / (steady[-1]["train_s"] - t_s)) if steady else None
        mfu = None
        if steady and steady[-1].get("mfu") is not None and steady[-1].get("tokens_per_s"):
            mfu = steady[-1]["mfu"] * (tps / steady[-1]["tokens_per_s"])
        ckpt = sorted((out / "checkpoints").glob("step_*"))
        result = {
            "case": f"train recipe mamba2-{args.size} random-init" + (f" preset {args.preset}" if args.preset else ""), "device": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else "cpu", "world_size": info.world_size, "strategy": trainer.strategy,
            "backend": trainer.model.backend_name, "precision": trainer.precision, "steps": args.steps,
            "cuda_graph": summary.get("cuda_graph"), "eager_micro_steps": summary.get("eager_micro_steps"),
            "global_batch": args.global_batch, "micro_batch": trainer.micro, "accumulation": trainer.accum,
            "seq_len": args.seq_len, "parameters": trainer.n_params, "tokens_per_s": tps,
            # host time a step spent preparing batches (overlapped with the device since de339ec)
            "data_s_per_step": (sum(r.get("data_s", 0.0) for r in steady) / len(steady)) if steady else None,
            "tokens_per_s_per_device": tps / info.world_size if tps else None, "mfu": mfu,
            "peak_memory_gb": summary.get("peak_memory_gb"), "loss_first": train[0]["loss"] if train else None,
            "loss_last": steady[-1]["loss"] if steady else None, "wall_s": round(wall, 1),
            "checkpoint_dir_gb": round(sum(f.stat().st_size for f in ckpt[-1].rglob("*") if f.is_file()) / 1e9, 3)
            if ckpt else None, "torch": torch.__version__,
        }
        line = json.dumps(result)
        print("RESULT " + line, flush=True)
        target = args.json or (os.path.join(os.environ["OUT"], "bench_train.json") if os.environ.get("OUT") else None)
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(line + "\n")
        tp = f"{tps / 1e3:.1f} k tok/s" if tps else "n/a"
        mf = f", MFU {100 * mfu:.1f} %" if mfu else ""
        mem = f", peak {result['peak_memory_gb']:.1f} GB" if result["peak_memory_gb"] else ""
        print(f"| {time.strftime('%Y-%m-%d')} | {result['device']} ×{info.world_size} | `python bench/bench_train.py "
              f"{' '.join(sys.argv[1:])}` | {tp}{mf}{mem}; {trainer.strategy}, {trainer.micro}×{trainer.accum}"
              f"×{info.world_size} seqs of {args.seq_len}, backend {result['backend']}"
              f"{', CUDA-graph micro-steps' if result['cuda_graph'] else ', eager'} | see ../shared/gpu/README.md |")
    info.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
