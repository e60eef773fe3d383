"""`.safetensors` files without the safetensors package: the header (u64 length + JSON) and raw bytes.

Format (huggingface/safetensors, docs "format"): 8 bytes little-endian u64 N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}, then the data; offsets are relative to the end of
the header, tensors are C-order little-endian.  Reading validates every field
before it allocates; nothing in the file is executed.
"""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict

import numpy as np
import torch

from .errors import CheckpointError, EncodeError

ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "F64": torch.float64, "I64": torch.int64, "U64": torch.uint64, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "C64": torch.complex64,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 << 20


def is_safetensors(path) -> bool:
    """The file starts like a safetensors file (a sane header length, then '{')."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 2 <= n <= min(MAX_HEADER, size - 8)


def read_safetensors(path) -> "OrderedDict[str, torch.Tensor]":
    """The tensors of a .safetensors file, in data order (state_dict order as written).

    Raises CheckpointError naming the file and the tensor or field at fault."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > min(MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: safetensors header of {n} bytes does not fit the {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not JSON: {e}") from None
        data = f.read()
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object")
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor '{name}'"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: entry must be an object")
        dt = ST_DTYPES.get(info.get("dtype"))
        if dt is None:
            raise CheckpointError(f"{where}: dtype {info.get('dtype')!r} is not one of {sorted(ST_DTYPES)}")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: shape must be a list of sizes, got {shape!r}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs) \
                or not 0 <= offs[0] <= offs[1] <= len(data):
            raise CheckpointError(f"{where}: data_offsets {offs!r} outside the {len(data)} data bytes")
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if offs[1] - offs[0] != numel * dt.itemsize:
            raise CheckpointError(f"{where}: {offs[1] - offs[0]} bytes for {numel} x {dt}")
        raw = np.frombuffer(data, np.uint8, offs[1] - offs[0], offs[0]).copy()
        t = torch.from_numpy(raw).view(dt).reshape(shape) if numel else torch.empty(shape, dtype=dt)
        if dt == torch.bool and numel and int(raw.max()) > 1:
            raise CheckpointError(f"{where}: bool bytes other than 0 and 1")
        out.append((offs[0], name, t))
    out.sort(key=lambda x: x[0])
    return OrderedDict((name, t) for _, name, t in out)


def safetensors_bytes(obj, metadata: dict | None = None) -> bytes:
    """A .safetensors file of a checkpoint's tensors, keyed by their mbz record names (mbz.structure).

    Raises EncodeError naming a tensor safetensors cannot hold (quantized, or a dtype it lacks)."""
    from .structure import flatten
    tensors = flatten(obj).tensors
    header, chunks, off = {}, [], 0
    for name, t in tensors.items():
        if t.is_quantized or t.dtype not in ST_NAMES:
            raise EncodeError(f"{name}: safetensors has no dtype for {t.dtype} (unpack to .pt instead)")
        b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)
