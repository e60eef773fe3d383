"""RAW encoding: the tensor's own little-endian bytes (spec §5.2)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from ..errors import FormatError
from ..spec import DTYPE_INFO, DType

TORCH_DTYPE = {d: getattr(torch, name) for d, (name, _) in DTYPE_INFO.items()}
DTYPE_OF_TORCH = {v: k for k, v in TORCH_DTYPE.items()}
ITEMSIZE = {d: size for d, (_, size) in DTYPE_INFO.items()}
assert sys.byteorder == "little", "mbz assumes a little-endian host"


def mbz_dtype(t: torch.Tensor) -> DType:
    try:
        return DTYPE_OF_TORCH[t.dtype]
    except KeyError:
        raise FormatError(f"dtype {t.dtype} is not in the mbz dtype table") from None


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(buf, dtype: DType, shape) -> torch.Tensor:
    numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    need = numel * ITEMSIZE[dtype]
    if len(buf) != need:
        raise FormatError(f"raw data of {numel} x {TORCH_DTYPE[dtype]} must be {need} bytes, got {len(buf)}")
    if numel == 0:
        return torch.empty(tuple(shape), dtype=TORCH_DTYPE[dtype])
    arr = np.frombuffer(buf, np.uint8)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).view(TORCH_DTYPE[dtype]).reshape(tuple(shape))


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so -0.0 != +0.0 and NaN payloads count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
