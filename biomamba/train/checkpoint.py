"""Resumable training checkpoints: sharded, atomic, loadable at another world size, no pickle.

Layout of ``RUN/checkpoints/``::

    step_00001000/
        state/               model, optimizer and EMA tensors: safetensors + JSON
                             (``state_files``: each rank writes its shards; any world size reads them)
        rng/rank00000.safetensors   per-rank RNG states (torch CPU/CUDA, numpy; python's in its header)
        trainer_state.json   step, data position, schedule, best metric, counters, config
    best.json                which step holds the best validation metric

Nothing in a checkpoint is read with pickle: torch.distributed.checkpoint (which older
versions wrote under ``dcp/``) unpickles its metadata, so a planted file could run code on
``--resume``; such checkpoints are refused with the reason.

A checkpoint is written into ``.tmp-step_…`` and renamed into place once every rank has
finished, so a crash during a save leaves the earlier checkpoints untouched (and the
temporary directory is cleared at the next start). Old checkpoints are pruned after the
new one is in place: the newest ``keep_last`` are kept, and the best one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomamba.train.distributed import DistInfo
from biomamba.train.state_files import StateFileError, load_state_into, save_state
from biomamba.utils.io import read_json, write_json

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    pass


# ---- RNG --------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(state: dict[str, Any], path: Path) -> None:
    """The RNG states as safetensors: the generator tensors as tensors, the rest in the header."""
    from safetensors.torch import save_file

    tensors = {"torch": state["torch"], "numpy_keys": state["numpy"]["keys"]}
    tensors.update({f"cuda.{i}": t for i, t in enumerate(state.get("cuda", []))})
    plain = {"python": state["python"], "numpy": {k: v for k, v in state["numpy"].items() if k != "keys"}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"plain": json.dumps(plain)})


def load_rng(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        plain = json.loads(f.metadata()["plain"])
        n_cuda = sum(1 for k in f.keys() if k.startswith("cuda."))
        state = {"python": plain["python"], "numpy": {**plain["numpy"], "keys": f.get_tensor("numpy_keys")},
                 "torch": f.get_tensor("torch")}
        if n_cuda:
            state["cuda"] = [f.get_tensor(f"cuda.{i}") for i in range(n_cuda)]
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- model / optimizer / EMA state for DCP ----------------------------------------------
class TrainingState:
    """What a checkpoint saves and loads in place: model, optimizer and EMA tensors."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, ema=None):
        self.module, self.optimizer, self.ema = module, optimizer, ema

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.module, self.optimizer)
        out = {"model": msd, "optim": osd}
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    def __init__(self, root: str | Path, info: DistInfo, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.info = info
        self.keep_last = keep_last

    # -- discovery ------------------------------------------------------------------------
    def steps(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self) -> Path | None:
        steps = self.steps()
        return steps[-1][1] if steps else None

    def best(self) -> dict[str, Any] | None:
        path = self.root / "best.json"
        return read_json(path) if path.is_file() else None

    def clear_temporaries(self) -> None:
        """Remove what an interrupted save or prune left behind (main rank, before training)."""
        if self.info.is_main and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
        self.info.barrier()

    # -- save -----------------------------------------------------------------------------
    def save(self, step: int, state: TrainingState, trainer_state: dict[str, Any],
             protect: set[int] | None = None) -> Path:
        name = f"step_{step:08d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
        self.info.barrier()
        try:
            save_state(state.state_dict(), tmp / "state", self.info.rank)
            save_rng(rng_state(), tmp / "rng" / f"rank{self.info.rank:05d}.safetensors")
        except OSError as exc:
            raise CheckpointError(_os_reason(exc, f"writing checkpoint {tmp}")) from exc
        self.info.barrier()
        if self.info.is_main:
            write_json(tmp / STATE_FILE, trainer_state)
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (e.g. after a resume): swap
                old = self.root / f".trash-{name}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.root)
            self.prune(protect or set())
        self.info.barrier()
        return final

    def mark_best(self, step: int, metric: str, value: float, weights: str) -> None:
        if self.info.is_main:
            write_json(self.root / "best.json", {"step": step, "metric": metric, "value": value, "weights": weights,
                                                 "path": f"step_{step:08d}"})

    def prune(self, protect: set[int]) -> None:
        steps = self.steps()
        keep = {s for s, _ in steps[-self.keep_last:]} | set(protect)
        best = self.best()
        if best is not None:
            keep.add(int(best["step"]))
        for s, path in steps:
            if s not in keep:
                trash = self.root / f".trash-{path.name}"
                os.replace(path, trash)  # atomic: a half-deleted checkpoint never looks complete
                shutil.rmtree(trash, ignore_errors=True)

    # -- load -----------------------------------------------------------------------------
    def load(self, path: str | Path, state: TrainingState) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load tensors into ``state`` in place; returns (trainer_state, this rank's RNG state or None)."""
        path = Path(path)
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE})")
        if not (path / "state").is_dir():
            if (path / "dcp").is_dir():
                raise CheckpointError(f"{path}: written in torch.distributed.checkpoint format by an older biomamba; "
                                      f"its metadata is a pickle, which can run code, so it is not read. Start "
                                      f"a new run from exported weights instead (model.init_from=RUN/final)")
            raise CheckpointError(f"{path}: no state/ directory (model, optimizer and EMA tensors)")
        try:
            trainer_state = read_json(path / STATE_FILE)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path / STATE_FILE}: cannot read JSON ({exc})") from exc
        try:
            state.load_state_dict(load_state_into(state.state_dict(), path / "state"))
        except StateFileError as exc:
            raise CheckpointError(f"{exc}; was it written by a run with a different model or optimizer "
                                  f"configuration?") from exc
        rng_file = path / "rng" / f"rank{self.info.rank:05d}.safetensors"
        try:
            rng = load_rng(rng_file) if rng_file.is_file() else None
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types; name the file
            raise CheckpointError(f"{rng_file}: cannot read the RNG state ({type(exc).__name__}: {exc})") from exc
        return trainer_state, rng


def _os_reason(exc: OSError, doing: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{doing}: no space left on the device ({exc.filename or 'disk full'})"
    return f"{doing}: {exc.strerror or exc} ({exc.filename or ''})"


def resolve_resume(resume: bool | str, manager: CheckpointManager) -> Path | None:
    """``resume`` (false | true | auto | PATH) → the checkpoint directory to load, or None.

    false refuses to start over a run directory that already holds checkpoints (say what to
    do instead) rather than silently overwrite them."""
    latest = manager.latest()
    if resume is False or (isinstance(resume, str) and resume.lower() in ("false", "no", "0")):
        if latest is not None:
            raise CheckpointError(f"{manager.root} already holds checkpoints (latest: {latest.name}); pass --resume "
                                  f"(or resume: auto) to continue that run, or choose a new --out")
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "yes", "1")):
        if latest is None:
            raise CheckpointError(f"--resume: no checkpoint in {manager.root} (use resume: auto to start fresh "
                                  f"when there is none)")
        return latest
    if isinstance(resume, str) and resume.lower() == "auto":
        return latest
    path = Path(str(resume)).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    other = CheckpointManager(path / "checkpoints" if (path / "checkpoints").is_dir() else path, manager.info)
    found = other.latest()
    if found is None:
        raise CheckpointError(f"resume: {path} is neither a checkpoint directory nor a run with checkpoints")
    return found
