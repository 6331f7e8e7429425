"""Read a ``torch.save`` state dict (``pytorch_model.bin``) without unpickling it.

The state-spaces checkpoints exist only as ``pytorch_model.bin``: a zip archive whose
``data.pkl`` is a pickle program that rebuilds tensors from the raw storages beside it.
``torch.load`` runs that program (``weights_only=True`` restricts which functions it may call,
but it is still pickle executing a file). Here the program is only *parsed*
(``pickletools.genops``) and interpreted by a small stack machine that knows the opcodes a
plain state dict uses, and treats the few callables such a file names (``OrderedDict``,
``torch._utils._rebuild_tensor_v2``, the storage classes) as tags: nothing named in the file
is imported or called. Anything else (another callable, an unknown opcode) is refused with
the file and the name.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    pass


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_CALLABLES = {
    ("collections", "OrderedDict"): "dict",
    ("torch._utils", "_rebuild_tensor_v2"): "tensor",
    ("torch._utils", "_rebuild_tensor"): "tensor",
    ("torch._utils", "_rebuild_parameter"): "parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "parameter",
}


class _Tag:
    """What a GLOBAL in the file resolves to: a name we recognise, never the object itself."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name


class _Mark:
    pass


def _resolve_global(module: str, name: str, where: str) -> _Tag:
    if module == "torch" and name in _STORAGE_DTYPES:
        return _Tag("storage", name)
    kind = _CALLABLES.get((module, name))
    if kind is None:
        raise UnsafeFileError(f"{where}: names {module}.{name}, which a plain tensor state dict does not; "
                              f"refusing to read it")
    return _Tag(kind, f"{module}.{name}")


def _program(path: Path) -> tuple[bytes, dict[str, bytes], str]:
    """(data.pkl, {storage key: raw bytes}, archive prefix) of a zip-format torch file."""
    if not zipfile.is_zipfile(path):
        raise UnsafeFileError(f"{path}: not a zip-format torch file (torch < 1.6 wrote a bare pickle, "
                              f"which is not read); convert it with a trusted torch first")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise UnsafeFileError(f"{path}: expected one <archive>/data.pkl, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).decode().strip() != "little":
            raise UnsafeFileError(f"{path}: big-endian tensors are not supported")
        storages = {n[len(prefix) + len("data/"):]: zf.read(n) for n in names if n.startswith(prefix + "data/")}
        return zf.read(pkl[0]), storages, prefix


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict, rebuilt without executing the file."""
    path = Path(path)
    try:
        program, raw, _ = _program(path)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise UnsafeFileError(f"{path}: cannot read the archive ({exc})") from exc
    storages: dict[str, torch.Tensor] = {}

    def storage(pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Tag)
                and pid[1].kind == "storage"):
            raise UnsafeFileError(f"{path}: unexpected persistent id {pid!r}")
        key = str(pid[2])
        if key not in storages:
            if key not in raw:
                raise UnsafeFileError(f"{path}: storage {key} is missing from the archive")
            dtype = _STORAGE_DTYPES[pid[1].name]
            data = raw[key]
            storages[key] = (torch.frombuffer(bytearray(data), dtype=dtype) if data
                             else torch.empty(0, dtype=dtype))
        return storages[key]

    def call(func: Any, args: Any) -> Any:
        if not isinstance(func, _Tag) or not isinstance(args, tuple):
            raise UnsafeFileError(f"{path}: a call of {func!r}, which a plain tensor state dict does not make")
        if func.kind == "dict":
            return dict(*args)
        if func.kind == "tensor":
            base, offset, size, stride = args[:4]
            if not isinstance(base, torch.Tensor):
                raise UnsafeFileError(f"{path}: a tensor rebuilt from {type(base).__name__}, not a storage")
            return torch.as_strided(base, tuple(size), tuple(stride), int(offset))
        if func.kind == "parameter":
            return args[0]
        raise UnsafeFileError(f"{path}: {func.name} is not callable here")

    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        items, stack = stack, metastack.pop()
        return items

    try:
        for op, arg, _ in pickletools.genops(program):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                break
            if name == "MARK":
                metastack.append(stack)
                stack = []
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BININT", "BININT1", "BININT2",
                          "LONG1", "LONG4", "BINFLOAT"):
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name in ("TUPLE", "LIST"):
                items = pop_mark()  # before naming ``stack``: pop_mark rebinds it
                stack.append(tuple(items) if name == "TUPLE" else items)
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = pop_mark()
                target = stack[-1]
                if not isinstance(target, dict):
                    raise UnsafeFileError(f"{path}: items set on a {type(target).__name__}")
                for k, v in zip(items[::2], items[1::2]):
                    target[k] = v
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_resolve_global(module, attr, str(path)))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_resolve_global(str(module), str(attr), str(path)))
            elif name == "BINPERSID":
                stack.append(storage(stack.pop()))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(call(func, args))
            elif name == "BUILD":
                stack.pop()  # instance state (an OrderedDict's _metadata): not needed for the tensors
            else:
                raise UnsafeFileError(f"{path}: pickle opcode {name}, which a plain tensor state dict does not use")
    except UnsafeFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, RuntimeError) as exc:
        raise UnsafeFileError(f"{path}: malformed pickle program ({type(exc).__name__}: {exc})") from exc
    if len(stack) != 1 or not isinstance(stack[0], dict):
        raise UnsafeFileError(f"{path}: does not hold a dict of tensors")
    result = stack[0]
    bad = [k for k, v in result.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UnsafeFileError(f"{path}: entries that are not named tensors: {bad[:5]}")
    return result
