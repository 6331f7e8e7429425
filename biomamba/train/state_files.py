"""Training state as safetensors + JSON: sharded by rank, readable at any world size, no pickle.

torch.distributed.checkpoint reads its ``.metadata`` with plain ``pickle`` (and non-tensor
items with ``torch.load(weights_only=False)``), so a planted file would run code on
``--resume``. This module stores the same state with nothing that executes on reading:

    tree.json                          the state's structure: dicts, lists, tuples, numbers,
                                       strings, and for each tensor its name, global shape, dtype
    <section>-rank00000.safetensors    one rank's pieces of the tensors of one top-level
                                       section (model / optim / ema); the header's metadata
                                       gives each piece's offset in its global tensor

Each rank writes the pieces it holds: its shard of every DTensor (FSDP2), and rank 0 the
plain (replicated) tensors. A reader at any world size fills each of its own tensors, or its
own shard, from every stored piece that overlaps it, and checks every element was covered.
A section per file bounds the host memory a save stages at once.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from biomamba.utils.io import read_json, write_json

TREE_FILE = "tree.json"
FORMAT = "biomamba-state/1"
_OFFSETS_KEY = "biomamba.offsets"
_SECTION = re.compile(r"^[A-Za-z0-9_.-]+$")


class StateFileError(RuntimeError):
    pass


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "__create_chunk_list__") and hasattr(t, "to_local")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- structure <-> JSON -----------------------------------------------------------------
def _encode(obj: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON node for ``obj``; tensors are collected into ``tensors`` under their path name."""
    where = "/".join(path) or "<root>"
    if isinstance(obj, torch.Tensor):
        name = "/".join(path)
        if name in tensors:
            raise StateFileError(f"two tensors share the name {name!r}")
        tensors[name] = obj
        return {"tensor": name, "shape": list(obj.shape), "dtype": _dtype_name(obj.dtype)}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise StateFileError(f"{where}: key {k!r} is neither a string nor an integer")
            items.append([k, _encode(v, path + (str(k),), tensors)])
        return {"dict": items}
    if isinstance(obj, (list, tuple)):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return {kind: [_encode(v, path + (str(i),), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, float):  # repr round-trips every float, inf and nan included
        return {"float": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, str)):
        return {"value": obj}
    raise StateFileError(f"{where}: cannot store a {type(obj).__name__} (only tensors, numbers, strings, "
                         f"None, dicts, lists and tuples)")


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 3):
        raise StateFileError(f"{where}: malformed node {str(node)[:80]}")
    if "tensor" in node:
        return tensors[node["tensor"]]
    (kind, value), = node.items()
    if kind == "dict":
        return {k: _decode(v, tensors, where) for k, v in value}
    if kind == "list":
        return [_decode(v, tensors, where) for v in value]
    if kind == "tuple":
        return tuple(_decode(v, tensors, where) for v in value)
    if kind == "float":
        return float(value)
    if kind == "value":
        return value
    raise StateFileError(f"{where}: unknown node kind {kind!r}")


def _tensor_nodes(node: Any, out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if isinstance(node, dict):
        if "tensor" in node:
            out[node["tensor"]] = node
        else:
            for value in node.values():
                _tensor_nodes(value, out)
    elif isinstance(node, list):
        for v in node:
            _tensor_nodes(v, out)
    return out


# ---- save ---------------------------------------------------------------------------------
def save_state(state: Mapping[str, Any], directory: str | Path, rank: int) -> None:
    """Write this rank's part of ``state`` (a dict of sections) into ``directory``."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, (), tensors)
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    offsets: dict[str, dict[str, list[int]]] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        section = name.split("/", 1)[0]
        if not _SECTION.match(section):
            raise StateFileError(f"section name {section!r} is not a plain file name")
        if _is_dtensor(t):
            chunks = t.__create_chunk_list__()
            if len(chunks) != 1:
                raise StateFileError(f"{name}: a DTensor with {len(chunks)} local pieces is not supported")
            local, at = t.to_local(), [int(o) for o in chunks[0].offsets]
            if local.numel() == 0 and t.numel() > 0:
                continue  # more ranks than rows: this rank holds nothing of it
        elif rank == 0:
            local, at = t, [0] * t.dim()
        else:
            continue
        local = local.detach().to("cpu").contiguous()
        ptr = local.untyped_storage().data_ptr()
        if ptr in storages and local.numel() > 0:  # tied weights, views: safetensors wants one tensor a storage
            local = local.clone()
        storages.add(local.untyped_storage().data_ptr())
        pieces.setdefault(section, {})[name] = local
        offsets.setdefault(section, {})[name] = at
    directory.mkdir(parents=True, exist_ok=True)
    for section, group in pieces.items():
        save_file(group, str(directory / f"{section}-rank{rank:05d}.safetensors"),
                  metadata={_OFFSETS_KEY: json.dumps(offsets[section])})
    if rank == 0:
        write_json(directory / TREE_FILE, {"format": FORMAT, "tree": tree})


# ---- load ---------------------------------------------------------------------------------
_Piece = tuple[Path, Any, list[int], list[int]]  # (file, open handle, offsets, sizes)


def _stored_pieces(directory: Path, stack: ExitStack) -> dict[str, list[_Piece]]:
    """name -> its pieces over every rank's files."""
    out: dict[str, list[_Piece]] = {}
    for path in sorted(directory.glob("*-rank*.safetensors")):
        try:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            index = json.loads((handle.metadata() or {})[_OFFSETS_KEY])
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types; name the file
            raise StateFileError(f"{path}: not a readable state file ({type(exc).__name__}: {exc})") from exc
        for name, at in index.items():
            sizes = list(handle.get_slice(name).get_shape())
            out.setdefault(name, []).append((path, handle, [int(o) for o in at], sizes))
    return out


def _fill(name: str, dst: torch.Tensor, dst_at: list[int], pieces: list[_Piece]) -> None:
    covered, seen = 0, set()
    for path, handle, at, sizes in pieces:
        if tuple(at) in seen:  # a replica of a piece already read
            continue
        seen.add(tuple(at))
        lo = [max(a, b) for a, b in zip(at, dst_at)]
        hi = [min(a + s, b + d) for a, s, b, d in zip(at, sizes, dst_at, dst.shape)]
        if any(l >= h for l, h in zip(lo, hi)):
            continue
        try:
            if dst.dim() == 0:
                piece = handle.get_tensor(name)
            else:
                piece = handle.get_slice(name)[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, at))]
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types; name the file
            raise StateFileError(f"{path}: cannot read {name} ({type(exc).__name__}: {exc})") from exc
        dst[tuple(slice(l - b, h - b) for l, h, b in zip(lo, hi, dst_at))].copy_(piece)
        covered += math.prod(h - l for l, h in zip(lo, hi))
    if covered != dst.numel():
        raise StateFileError(f"{name}: the stored pieces cover {covered} of this rank's {dst.numel()} elements "
                             f"(a rank's file is missing or damaged)")


def load_state_into(target: Mapping[str, Any], directory: str | Path) -> Any:
    """Fill the tensors of ``target`` (same structure as the saved state, any world size) in place
    from ``directory``; return the saved structure with those tensors and the saved plain values."""
    directory = Path(directory)
    tree_file = directory / TREE_FILE
    if not tree_file.is_file():
        raise StateFileError(f"{directory}: no {TREE_FILE}")
    try:
        doc = read_json(tree_file)
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{tree_file}: cannot read JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateFileError(f"{tree_file}: format {doc.get('format') if isinstance(doc, dict) else doc!r}, "
                             f"expected {FORMAT}")
    saved = _tensor_nodes(doc["tree"], {})
    wanted: dict[str, torch.Tensor] = {}
    _encode(target, (), wanted)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    if missing or unexpected:
        raise StateFileError(f"{directory}: the checkpoint does not match this model/optimizer: "
                             + "; ".join(f"{what} {len(names)} tensors, e.g. {', '.join(names[:3])}"
                                         for what, names in (("lacks", missing), ("has another", unexpected))
                                         if names))
    for name, t in wanted.items():
        node = saved[name]
        if list(t.shape) != node["shape"] or _dtype_name(t.dtype) != node["dtype"]:
            raise StateFileError(f"{directory}: {name} is stored as {node['dtype']} {node['shape']}, this run has "
                                 f"{_dtype_name(t.dtype)} {list(t.shape)}")
    with ExitStack() as stack:
        stored = _stored_pieces(directory, stack)
        with torch.no_grad():
            for name, t in wanted.items():
                if _is_dtensor(t):
                    local, at = t.to_local(), [int(o) for o in t.__create_chunk_list__()[0].offsets]
                else:
                    local, at = t, [0] * t.dim()
                _fill(name, local, at, stored.get(name, []))
    return _decode(doc["tree"], wanted, str(tree_file))
