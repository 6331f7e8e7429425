"""The training loop shared by continued pretraining and SFT.

One optimizer step: take the next ``global_batch_size`` sequences of the epoch's global
order (each rank its share, ``per_device_train_batch_size`` at a time), let the objective
turn them into inputs and targets, count the scored tokens of the whole step over all
ranks, run forward/backward per micro-batch scaling each loss sum by that count (so the
gradient is the token-weighted mean over the global batch), clip, and update. A step whose
loss or gradient norm is not finite is skipped (no update; the data and the schedule move
on) and counted; too many in a row stop the run with a message.

The loop knows nothing about what is predicted (see ``objective.py``), nor about the
files the data came from: it gets a dataset (``len`` and ``ds[i] -> dict of arrays``), a
``collate`` function and held-out datasets by name.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from biomamba.config import to_dict
from biomamba.train.checkpoint import (CheckpointError, CheckpointManager, TrainingState, resolve_resume,
                                       seed_everything, set_rng_state)
from biomamba.train.config import TrainRecipe
from biomamba.train.cuda_graph import MicroStepGraphs
from biomamba.train.distributed import DistInfo, apply_activation_checkpointing, grad_sync, wrap_model
from biomamba.train.ema import EMA
from biomamba.train.metrics import MetricsLogger, flops_per_token, format_duration, peak_flops, progress_line
from biomamba.train.objective import LossModule
from biomamba.train.optim import build_optimizer, set_lr
from biomamba.train.schedule import Schedule
from biomamba.utils.io import write_json


class NonFiniteLossError(RuntimeError):
    pass


def collate_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Equal-length rows (packed sequences) → stacked tensors."""
    return {key: torch.from_numpy(np.stack([np.asarray(r[key]) for r in rows])) for key in rows[0]}


def data_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _export_step(directory: Path) -> int | None:
    """The training step recorded in an exported model directory (None if absent)."""
    from biomamba.model.checkpoint import NATIVE_CONFIG
    from biomamba.utils.io import read_json

    try:
        return int(read_json(directory / NATIVE_CONFIG)["trained"]["step"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


@dataclass
class _Interval:
    loss_sum: float = 0.0
    count: float = 0.0
    seconds: float = 0.0
    steps: int = 0
    tokens: int = 0
    grad_norm: float | None = None
    data_seconds: float = 0.0


class Trainer:
    def __init__(self, recipe: TrainRecipe, model: nn.Module, objective: Any, train_data: Any,
                 val_data: dict[str, Any], out: str | Path, info: DistInfo, *,
                 collate: Callable[[list[dict]], dict[str, torch.Tensor]] = collate_rows, backend: str = "auto",
                 fingerprint: str | None = None, tokenizer: Any = None, log: Callable[[str], None] = print):
        self.cfg = recipe
        self.loop = recipe.train
        self.info = info
        self.out = Path(out)
        self.objective = objective
        self.train_data = train_data
        self.val_data = val_data
        self.collate = collate
        self.fingerprint = fingerprint
        self.tokenizer = tokenizer
        self._print = log

        loop, world = self.loop, info.world_size
        strategy = loop.strategy
        if strategy == "auto":
            strategy = "ddp" if info.distributed else "single"
        elif strategy in ("ddp", "fsdp") and not info.distributed:
            strategy = "single"
        if strategy == "single" and info.distributed:
            raise ValueError(f"train.strategy single cannot run on {world} ranks: choose ddp or fsdp")
        self.strategy = strategy
        precision = loop.precision
        if precision == "auto":
            precision = "bf16" if info.device.type == "cuda" else "fp32"
        self.precision = precision
        self.micro = loop.per_device_train_batch_size
        per_pass = self.micro * world
        if loop.global_batch_size % per_pass:
            raise ValueError(f"train.global_batch_size {loop.global_batch_size} is not a multiple of "
                             f"per_device_train_batch_size {self.micro} × {world} rank(s) = {per_pass}")
        self.accum = loop.global_batch_size // per_pass
        self.global_batch = loop.global_batch_size
        self.steps_per_epoch = len(train_data) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training data holds {len(train_data)} sequences, fewer than one global batch "
                             f"({self.global_batch}); lower train.global_batch_size")
        self.total_steps = loop.max_steps or loop.epochs * self.steps_per_epoch

        # model, wrapped for the strategy
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(info.device)
        self.lora = recipe.lora if recipe.lora.enabled else None
        if self.lora is not None:
            from biomamba.train.lora import apply_lora, lora_summary

            wrapped = apply_lora(self.model, list(self.lora.targets), self.lora.rank, self.lora.alpha,
                                 self.lora.dropout)
            share = lora_summary(self.model)
            log(f"LoRA rank {self.lora.rank} on {len(wrapped)} modules: {share['trainable_parameters']:,} trainable "
                f"parameters ({100 * share['trainable_fraction']:.2f} %)")
        if hasattr(self.model, "set_backend"):
            self.model.set_backend(backend)
            if info.device.type == "cuda" and info.is_main:
                arch = getattr(self.model.config, "arch", "mamba2")
                used = (("ssd_scan", "gated_rmsnorm") if arch == "mamba2" else ("selective_scan",)) + (
                    "causal_conv1d", "rmsnorm", "linear_cross_entropy")  # the ops a training step calls
                slow = [op for op, src in self.model.kernels.describe().items() if src == "torch" and op in used]
                if slow:
                    log(f"WARNING: training on a GPU with the torch reference for {', '.join(slow)} "
                        f"(backend {self.model.backend_name!r}): this is the slow path; `biomamba env` shows why")
        self.n_params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        if loop.activation_checkpointing:
            apply_activation_checkpointing(self.model.backbone.layers)
        self.loss_module = LossModule(self.model, objective)
        param_dtype = torch.bfloat16 if (strategy == "fsdp" and precision == "bf16") else None
        self.wrapped = wrap_model(self.loss_module, self.model.backbone.layers, strategy, info, param_dtype)
        if self.wrapped is self.loss_module and hasattr(self.model, "set_grad_into_params"):
            self.model.set_grad_into_params(info.device.type == "cuda")  # no reducer to bypass

        o = recipe.optim
        mcfg = self.model.config
        self.optimizer = build_optimizer(self.loss_module, mcfg.n_layer, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                         weight_decay=o.weight_decay, llrd=o.llrd,
                                         tied_embedding_lr=o.tied_embedding_lr, anchor=o.lr_anchor)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.graphs = self._micro_step_graphs()
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # LoRA: the adapters
        self.ema = EMA(trainable, recipe.ema.decay) if recipe.ema.enabled else None
        s = recipe.schedule
        floor = s.min_lr if s.min_lr is not None else s.floor * o.lr
        self.schedule = Schedule(s.name, self.total_steps, o.lr, floor, s.warmup, s.stable, s.decay)

        from biomamba.data.shards import DistributedSequenceSampler

        self.sampler = DistributedSequenceSampler(len(train_data), seed=loop.seed, rank=info.rank, world_size=world,
                                                  shuffle=True)
        self.ckpt = CheckpointManager(self.out / "checkpoints", info, recipe.checkpoint.keep_last)
        self.metrics = MetricsLogger(self.out, info.is_main, loop.tensorboard, list(loop.trackers), loop.tracking_project,
                                     loop.tracking_uri, to_dict(recipe), log)
        self.peak = (loop.peak_tflops * 1e12 if loop.peak_tflops else
                     peak_flops(torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else None))
        if precision != "bf16":
            self.peak = None

        # run state (saved in checkpoints)
        self.step = 0
        self.tokens = 0
        self.best: dict[str, Any] | None = None
        self.skipped = 0
        self.nonfinite_in_a_row = 0
        self.elapsed = 0.0
        self.last_val: dict[str, float] = {}
        self._iter = None
        self._prefetched: list[dict[str, torch.Tensor | None]] | None = None  # the next step's batches
        self.data_seconds = 0.0  # host time spent preparing batches (reported per log interval)

    def _micro_step_graphs(self) -> MicroStepGraphs | None:
        """CUDA graphs for the micro-step where ``train.cuda_graph`` asks for them and they can run."""
        want = self.loop.cuda_graph
        if want is False:
            return None
        why_not = None
        if self.info.device.type != "cuda":
            why_not = f"the device is {self.info.device.type}, not CUDA"
        elif self.strategy != "single":
            why_not = f"strategy {self.strategy}: gradient sync hooks run outside a captured graph"
        elif self.loop.activation_checkpointing:
            why_not = "activation checkpointing is on"
        if why_not is None:
            dtype = torch.bfloat16 if self.precision == "bf16" else None
            return MicroStepGraphs(self.loss_module, self.params, self.info.device, dtype, log=self.log)
        if want is True:
            raise ValueError(f"train.cuda_graph is true but cannot be used: {why_not} (set it to auto or false)")
        return None

    # ---- helpers ------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.info.is_main:
            self._print(text)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _pinned(self, prepared: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
        """Host tensors in page-locked memory (so that copies to the GPU do not block the host)."""
        if self.info.device.type != "cuda":
            return prepared
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in prepared.items()}

    def _to_device(self, prepared: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
        return {k: v.to(self.info.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in self._pinned(prepared).items()}

    def _next_indices(self) -> list[int]:
        if self._iter is None:
            self._iter = iter(self.sampler)
        need = self.micro * self.accum
        indices = list(islice(self._iter, need))
        if len(indices) != need:  # cannot happen while steps_per_epoch × global batch ≤ dataset size
            raise RuntimeError(f"the sampler ran out of sequences at step {self.step}")
        return indices

    # ---- state --------------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.step // self.steps_per_epoch, "tokens": self.tokens,
            "sampler": self.sampler.state_dict(), "best": self.best, "skipped": self.skipped,
            "nonfinite_in_a_row": self.nonfinite_in_a_row, "elapsed_s": self.elapsed,
            "schedule": self.schedule.state_dict(), "world_size": self.info.world_size, "strategy": self.strategy,
            "global_batch_size": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
            "data_fingerprint": self.fingerprint, "objective": getattr(self.objective, "name", None),
            "last_val": self.last_val, "recipe": to_dict(self.cfg),
        }

    def _training_state(self) -> TrainingState:
        return TrainingState(self.loss_module, self.optimizer, self.ema)

    def save(self) -> Path:
        protect = {int(self.best["step"])} if self.best else set()
        if self.strategy == "fsdp":
            self.wrapped.reshard()
        path = self.ckpt.save(self.step, self._training_state(), self._trainer_state(), protect)
        self.log(f"saved checkpoint {path}")
        return path

    def load(self, path: Path) -> None:
        state, rng = self.ckpt.load(path, self._training_state())
        if state.get("global_batch_size") != self.global_batch:
            raise CheckpointError(f"{path} was written with global_batch_size {state.get('global_batch_size')}, this "
                                  f"run has {self.global_batch}: the data position and schedule would not match "
                                  f"(keep the global batch; micro-batch and world size may change)")
        if self.fingerprint and state.get("data_fingerprint") and state["data_fingerprint"] != self.fingerprint:
            raise CheckpointError(f"{path} was written for other training data (fingerprint "
                                  f"{state['data_fingerprint']}, now {self.fingerprint}): the data position would "
                                  f"be meaningless")
        self.sampler.load_state_dict(state["sampler"])
        self._prefetched = None
        self.step = int(state["step"])
        expected = (self.step // self.steps_per_epoch, (self.step % self.steps_per_epoch) * self.global_batch)
        if (self.sampler.epoch, self.sampler.consumed) != expected:
            raise CheckpointError(f"{path}: data position (epoch {self.sampler.epoch}, {self.sampler.consumed} "
                                  f"sequences) does not match step {self.step} (expected epoch {expected[0]}, "
                                  f"{expected[1]}); the dataset size changed")
        self._iter = None
        self.tokens = int(state["tokens"])
        self.best = state.get("best")
        self.skipped = int(state.get("skipped", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.last_val = state.get("last_val") or {}
        old_total = state.get("schedule", {}).get("total_steps")
        if old_total is not None and old_total != self.total_steps:
            self.log(f"note: the schedule now spans {self.total_steps} steps (the checkpoint's run: {old_total})")
        if rng is not None and state.get("world_size") == self.info.world_size:
            set_rng_state(rng)
        else:
            seed_everything(self.loop.seed + self.info.rank + self.step)
            self.log(f"note: the checkpoint was written by {state.get('world_size')} rank(s), this run has "
                     f"{self.info.world_size}: the data order is unchanged, RNG streams are re-seeded")
        self.metrics.truncate_after(self.step)
        self.log(f"resumed from {path} at step {self.step}/{self.total_steps}")
        if self.best is not None:
            # a stop between saving a new best checkpoint and recording it: finish the bookkeeping
            self.ckpt.mark_best(self.best["step"], self.best["metric"], self.best["value"], self.best["weights"])
            if (self.best["step"] == self.step and "best" in self.cfg.checkpoint.export
                    and _export_step(self.out / "best") != self.step):
                self.export("best", self.best["weights"])

    # ---- one optimizer step -------------------------------------------------------------
    def _prepare_step(self) -> list[dict[str, torch.Tensor | None]]:
        """The next optimizer step's micro-batches, collated and prepared on the host."""
        t0 = time.perf_counter()
        indices = self._next_indices()
        batches = [self.objective.prepare(self.collate([self.train_data[i] for i in
                                                        indices[k * self.micro:(k + 1) * self.micro]]))
                   for k in range(self.accum)]
        self.data_seconds += time.perf_counter() - t0
        return batches

    def train_step(self) -> tuple[float, float, int, int]:
        """(global loss, grad norm, scored tokens, input tokens) of one optimizer step."""
        micro_batches = self._prefetched if self._prefetched is not None else self._prepare_step()
        self._prefetched = None
        ignore = getattr(self.objective, "ignore_index", -100)
        local = [float(sum(int((b["targets"] != ignore).sum()) for b in micro_batches)),
                 float(sum(b["input_ids"].numel() for b in micro_batches))]
        if self.info.distributed:
            counts = self.info.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=self.info.device))
            n_scored, n_inputs = counts.tolist()
        else:  # no device round trip: it would wait for the previous step's update to finish
            n_scored, n_inputs = local
        scale = self.info.world_size / max(n_scored, 1.0)  # wrappers average over ranks; undo it
        self.wrapped.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.info.device)
        if self.graphs is not None:
            try:
                self.graphs.prepare(micro_batches)
            except Exception as err:  # noqa: BLE001 - auto means: use graphs where they work
                if self.loop.cuda_graph is True:
                    raise
                self.log(f"WARNING: capturing the micro-step as a CUDA graph failed ({type(err).__name__}: {err}); "
                         f"training eagerly (train.cuda_graph=false hides this)")
                self.graphs.zero_all_grads()
                self.graphs = None
        for k, batch in enumerate(micro_batches):
            ls = self.graphs.run(self._pinned(batch), scale) if self.graphs is not None else None
            if ls is None:
                batch = self._to_device(batch)
                with grad_sync(self.wrapped, self.strategy, sync=k == self.accum - 1):
                    with self._autocast():
                        ls, _ = self.wrapped(batch["input_ids"], batch["seq_idx"], batch["targets"])
                    (ls * scale).backward()
            loss_sum += ls.detach().double()
        # the GPU now has the step's forward and backward queued: prepare the next step's batches
        # meanwhile (same data order: the same iterator, pulled one step early), unless the epoch
        # ends here (a new epoch's order starts from a new iterator) or the run does
        nxt = self.step + 1
        if nxt % self.steps_per_epoch and nxt < self.total_steps:
            self._prefetched = self._prepare_step()
        loss = float(self.info.all_reduce_sum(loss_sum)) / max(n_scored, 1.0)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        grad_norm = float(norm)
        if math.isfinite(loss) and math.isfinite(grad_norm):
            set_lr(self.optimizer, self.schedule(self.step))
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            self.nonfinite_in_a_row = 0
        else:
            self.skipped += 1
            self.nonfinite_in_a_row += 1
            self.log(f"step {self.step + 1}: non-finite loss {loss} / grad norm {grad_norm}: update skipped "
                     f"({self.nonfinite_in_a_row} in a row, {self.skipped} in all)")
        if self.graphs is not None:
            self.graphs.zero_grads()  # in place (the captured backward adds into them), or left to be written
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.sampler.advance(self.global_batch)
        if self.step % self.steps_per_epoch == 0:  # the rest of the epoch (< one global batch) is not used
            self.sampler.set_epoch(self.step // self.steps_per_epoch)
            self._iter = None
        if self.nonfinite_in_a_row >= self.loop.max_nonfinite_in_a_row:
            latest = self.ckpt.latest()
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient norm (last: "
                f"step {self.step}, loss {loss}, grad norm {grad_norm}); stopping. No update was applied on those "
                f"steps; the last checkpoint is {latest or 'none'}. Lower optim.lr, check the data, or try "
                f"train.precision=fp32 (limit: train.max_nonfinite_in_a_row)")
        return loss, grad_norm, int(n_scored), int(n_inputs)

    # ---- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prefix: str = "val") -> dict[str, float]:
        ev = self.cfg.eval
        world, rank = self.info.world_size, self.info.rank
        ignore = getattr(self.objective, "ignore_index", -100)
        self.wrapped.eval()
        out: dict[str, float] = {}
        total = torch.zeros(2, dtype=torch.float64, device=self.info.device)
        for name, ds in self.val_data.items():
            n = len(ds) if ev.max_sequences <= 0 else min(len(ds), ev.max_sequences)
            per_rank = -(-n // world)
            mine = [rank + world * j for j in range(per_rank)]  # positions ≥ n are padding (not scored)
            acc = torch.zeros(2, dtype=torch.float64, device=self.info.device)
            for start in range(0, per_rank, ev.batch_size):
                chunk = mine[start:start + ev.batch_size]
                batch = self.objective.prepare(self.collate([ds[i if i < n else 0] for i in chunk]))
                pad = torch.tensor([i >= n for i in chunk])
                if pad.any():
                    batch["targets"] = batch["targets"].masked_fill(pad[:, None], ignore)
                batch = self._to_device(batch)
                with self._autocast():
                    ls, cnt = self.wrapped(batch["input_ids"], batch["seq_idx"], batch["targets"])
                acc += torch.stack([ls.detach().double(), cnt.double()])
            self.info.all_reduce_sum(acc)
            total += acc
            loss_sum, count = acc.tolist()
            out.update(self._loss_entries(f"{prefix}/{name}", loss_sum, count))
        out.update(self._loss_entries(f"{prefix}/all", *total.tolist()))
        if self.strategy == "fsdp":
            # FSDP2 keeps the root's gathered weights after a forward with no backward; drop them so
            # the next forward gathers what the shards hold now (e.g. after swapping the EMA in or out)
            self.wrapped.reshard()
        return out

    @staticmethod
    def _loss_entries(key: str, loss_sum: float, count: float) -> dict[str, float]:
        loss = loss_sum / count if count else float("nan")
        ppl = math.exp(loss) if math.isfinite(loss) and loss < 700 else float("inf")
        return {f"{key}/loss": loss, f"{key}/ppl": ppl, f"{key}/tokens": int(count)}

    def validate(self) -> bool:
        """Validate (raw and EMA weights) and log; True when the best metric improved."""
        t0 = time.time()
        record: dict[str, Any] = {"step": self.step}
        record.update(self.evaluate("val"))
        if self.ema is not None and self.cfg.eval.ema:
            with self.ema.swapped_in():
                record.update(self.evaluate("val_ema"))
        self.metrics.log(record)
        self.last_val = {k: v for k, v in record.items() if k != "step"}
        parts = [f"{k[4:-5]} {v:.4f}" for k, v in record.items() if k.startswith("val/") and k.endswith("/loss")]
        ema = record.get("val_ema/all/loss")
        self.log(f"validation at step {self.step}: loss " + ", ".join(parts)
                 + (f" | EMA all {ema:.4f}" if ema is not None else "") + f" ({time.time() - t0:.1f}s)")
        c = self.cfg.checkpoint
        value = record.get(c.best_metric)
        if value is None:
            raise KeyError(f"checkpoint.best_metric {c.best_metric!r} is not among the validation keys: "
                           f"{', '.join(k for k in record if k != 'step')}")
        if not math.isfinite(value):
            return False
        better = (self.best is None or (value < self.best["value"] if c.best_mode == "min" else
                                        value > self.best["value"]))
        if better and self.step > 0:
            self.best = {"step": self.step, "metric": c.best_metric, "value": value,
                         "weights": "ema" if c.best_metric.startswith("val_ema/") else "raw"}
        return bool(better and self.step > 0)

    # ---- exports ------------------------------------------------------------------------
    def _full_state(self) -> dict[str, torch.Tensor]:
        if self.strategy == "fsdp":
            self.wrapped.reshard()
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.loss_module, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
        else:
            sd = {f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {k.removeprefix("model."): v for k, v in sd.items()}

    def export(self, name: str, weights: str = "raw") -> Path | None:
        """Write the current raw or EMA weights to ``RUN/<name>`` (native layout + tokenizer)."""
        from biomamba.model.checkpoint import save_model

        if weights == "ema" and self.ema is None:
            return None
        path = self.out / name
        # written while the EMA weights are swapped in: on the CPU the state's tensors can be the
        # parameters themselves, which the swap-out would turn back into the raw weights
        with self.ema.swapped_in() if weights == "ema" else nullcontext():
            state = self._full_state()
            if self.info.is_main and self.lora is not None:
                from biomamba.train.lora import merged_state, save_adapter

                lo, base = self.lora, getattr(self.cfg, "model", None)
                base = base if isinstance(base, str) or base is None else base.init_from  # sft: a path; pretrain: a section
                save_adapter(state, self.out / f"{name}_adapter", rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout,
                             targets=list(lo.targets), base_model=base)
                state = merged_state(state, lo.alpha / lo.rank)  # the export is a plain checkpoint
            if self.info.is_main:
                with torch.device("meta"):
                    export = type(self.model)(self.model.config)
                export.load_state_dict(state, assign=True)
                if self.model.config.tie_embeddings:
                    export.lm_head.weight = export.backbone.embedding.weight
                save_model(export, path, tokenizer=self.tokenizer,
                           extra={"trained": {"step": self.step, "tokens": self.tokens, "weights": weights,
                                              "objective": getattr(self.objective, "name", None)}})
            self.info.barrier()
        return path

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        loop, ev, c = self.loop, self.cfg.eval, self.cfg.checkpoint
        self.ckpt.clear_temporaries()
        resume_from = resolve_resume(self.cfg.resume, self.ckpt)
        if resume_from is not None:
            self.load(resume_from)
        else:
            seed_everything(loop.seed + self.info.rank)
            if self.info.is_main and self.metrics.path.exists():
                self.metrics.path.unlink()
        graphs = ", CUDA-graph micro-steps" if self.graphs is not None else ""
        self.log(f"training {self.n_params / 1e6:.2f} M parameters | {self.strategy} on {self.info.world_size} "
                 f"rank(s), {self.info.device.type}, {self.precision}{graphs} | global batch {self.global_batch} = "
                 f"{self.micro} × {self.accum} accumulation × {self.info.world_size} | {self.steps_per_epoch} "
                 f"steps/epoch, {self.total_steps} steps | schedule {self.schedule.name} peak {self.schedule.peak:g} "
                 f"floor {self.schedule.floor:g} phases {self.schedule.phases}")
        if self.step == 0 and ev.at_start and self.val_data:
            self.validate()
        start_step, start_time = self.step, time.time()
        fpt = flops_per_token(self.n_params)
        iv = _Interval()
        while self.step < self.total_steps:
            t0, data0 = time.time(), self.data_seconds
            loss, grad_norm, n_scored, n_inputs = self.train_step()
            dt = time.time() - t0
            iv.data_seconds += self.data_seconds - data0
            self.elapsed += dt
            self.tokens += n_inputs
            iv.seconds += dt
            iv.steps += 1
            iv.tokens += n_inputs
            iv.grad_norm = grad_norm
            if math.isfinite(loss):
                iv.loss_sum += loss * n_scored
                iv.count += n_scored
            last = self.step == self.total_steps
            if self.step % loop.log_every == 0 or last:
                tps = iv.tokens / iv.seconds if iv.seconds > 0 else None
                rec: dict[str, Any] = {
                    "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                    "loss": iv.loss_sum / iv.count if iv.count else float("nan"),
                    "lr": self.schedule(self.step - 1), "grad_norm": iv.grad_norm, "tokens": self.tokens,
                    "tokens_per_s": tps, "step_s": iv.seconds / iv.steps, "train_s": round(self.elapsed, 3),
                    "data_s": iv.data_seconds / iv.steps,  # host time a step spent preparing batches
                    "mfu": (fpt * tps / (self.peak * self.info.world_size)) if (self.peak and tps) else None,
                    "skipped": self.skipped,
                }
                if self.info.device.type == "cuda":
                    rec["mem_gb"] = torch.cuda.max_memory_allocated(self.info.device) / 1e9
                self.metrics.log(rec)
                eta = iv.seconds / iv.steps * (self.total_steps - self.step)
                self.log(progress_line(rec, self.total_steps, eta))
                iv = _Interval()
            improved = False
            if self.val_data and (last or (ev.every and self.step % ev.every == 0)):
                improved = self.validate()
            saved = last or (c.every and self.step % c.every == 0) or (
                not c.every and ev.every and self.step % ev.every == 0) or improved
            if saved:
                self.save()
            if improved:
                self.ckpt.mark_best(self.step, self.best["metric"], self.best["value"], self.best["weights"])
            if improved and "best" in c.export:
                self.export("best", self.best["weights"])
        return self.finish(start_step, time.time() - start_time)

    def finish(self, start_step: int, wall: float) -> dict[str, Any]:
        c = self.cfg.checkpoint
        exports: dict[str, str] = {}
        if "final" in c.export:
            exports["final"] = str(self.export("final", "raw"))
        if "final_ema" in c.export and self.ema is not None:
            exports["final_ema"] = str(self.export("final_ema", "ema"))
        if "best" in c.export and self.best is not None and (self.out / "best").is_dir():
            exports["best"] = str(self.out / "best")
        steps_run = self.step - start_step
        summary = {
            "steps": self.step, "total_steps": self.total_steps, "tokens": self.tokens,
            "steps_this_session": steps_run, "wall_s_this_session": round(wall, 2),
            "train_seconds": round(self.elapsed, 2),
            "tokens_per_s": self.tokens / self.elapsed if self.elapsed else None,
            "skipped_nonfinite": self.skipped, "world_size": self.info.world_size, "strategy": self.strategy,
            "precision": self.precision, "global_batch_size": self.global_batch, "parameters": self.n_params,
            "cuda_graph": self.graphs is not None,
            "eager_micro_steps": self.graphs.eager_micro_steps if self.graphs is not None else None,
            "val": self.last_val, "best": self.best, "exports": exports,
            "model": exports.get("best") or exports.get("final"),
            "lora": {"rank": self.lora.rank, "alpha": self.lora.alpha, "targets": list(self.lora.targets),
                     "adapters": {k: f"{v}_adapter" for k, v in exports.items()}} if self.lora is not None else None,
        }
        if self.info.device.type == "cuda":
            summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.info.device) / 1e9
        if self.info.is_main:
            write_json(self.out / "summary.json", summary)
        self.metrics.close()
        self.log(f"done: {self.step} steps, {self.tokens / 1e6:.2f} M tokens in {format_duration(self.elapsed)} of "
                 f"training; summary in {self.out / 'summary.json'}")
        return summary
