"""Process-group setup and model wrapping: one process, DDP, or FSDP2 (``fully_shard``).

The same command runs on 1 or N processes: under ``torchrun`` (``WORLD_SIZE`` > 1) the
process group is created here (NCCL on GPUs, gloo on CPUs) and each rank uses its local GPU.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; create the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but no GPU is visible")
        dev = torch.device("cuda", local if device == "cuda" else torch.device(device).index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    created = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        created = True
    if world > 1 and dist.get_world_size() != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, created_group=created)


def apply_activation_checkpointing(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in the backward (parameter names are unchanged)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def wrap_model(module: nn.Module, blocks: nn.ModuleList, strategy: str, info: DistInfo,
               param_dtype: torch.dtype | None = None) -> nn.Module:
    """``module`` (the LossModule, already on the device) wrapped for ``strategy``.

    FSDP2 shards every block on its own and the rest (embedding, final norm, tied head) at the
    root; with ``param_dtype`` (bf16 on GPUs) the gathered weights and the computation use it
    while the sharded fp32 master weights and gradient reduction stay in fp32."""
    if strategy == "single" or not info.distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # a block's inputs are not cast to param_dtype: one of them is the residual stream, which
        # stays fp32 (model.residual_in_fp32); the block computes in param_dtype all the same
        mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
              if param_dtype else None)
        kwargs = {"mp_policy": mp} if mp is not None else {}
        # a block returns out_proj's output, a view of its 2D GEMM's; FSDP2 warns that an in-place
        # op on a view would skip its hook, and none is done on it (the next join reads it)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(module, **kwargs)
        return module
    raise ValueError(f"unknown strategy {strategy!r}; choose from auto, single, ddp, fsdp")


@contextmanager
def grad_sync(wrapped: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if strategy == "ddp" and not sync:
        with wrapped.no_sync():
            yield
        return
    if strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
        with nullcontext():
            yield
        return
    yield
