"""Lossy affine quantization, done only when asked (``--wbits``).

``quantize_tensor`` returns the Grid; ``Grid.values()`` is the quantized
tensor.  ``quantize_state_dict`` applies the same function, so a model
evaluated from it and one unpacked from the .mbz are bit-identical.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .codecs.affine import Grid
from .errors import EncodeError
from .spec import Granularity

from .options import DEFAULT_INCLUDE, GRANULARITY_NAMES  # noqa: F401 - defined there for the command line


@dataclass
class QuantPolicy:
    bits: int
    granularity: str = "channel"        # tensor | channel | group
    axis: int = 0
    group_size: int = 64
    symmetric: bool = True
    include: str = DEFAULT_INCLUDE      # regex on the tensor name
    min_dim: int = 2                    # only tensors of this rank or more (conv / linear weights)

    def __post_init__(self):
        if not 1 <= self.bits <= 16:
            raise EncodeError(f"--wbits must be in 1..16, got {self.bits}")
        if self.symmetric and self.bits < 2:
            raise EncodeError("symmetric quantization needs at least 2 bits (use --asymmetric for 1 bit)")
        if self.granularity not in GRANULARITY_NAMES:
            raise EncodeError(f"granularity must be one of {', '.join(GRANULARITY_NAMES)}, got {self.granularity!r}")
        if self.granularity == "group" and self.group_size < 1:
            raise EncodeError(f"group size must be >= 1, got {self.group_size}")

    def applies(self, name: str, t: torch.Tensor) -> bool:
        return (t.is_floating_point() and t.dim() >= self.min_dim and t.numel() > 0
                and re.search(self.include, name) is not None)


def _rows(x: np.ndarray, shape, gran: Granularity, axis: int, gs: int):
    """View x as (groups, elements) for reductions; returns (matrix, restore fn)."""
    if gran == Granularity.TENSOR:
        return x.reshape(1, -1), lambda m: m.reshape(-1)
    if gran == Granularity.CHANNEL:
        moved = np.moveaxis(x.reshape(shape), axis, 0)
        mshape = moved.shape
        return moved.reshape(mshape[0], -1), lambda m: np.moveaxis(m.reshape(mshape), 0, axis).reshape(-1)
    n = x.size
    pad = (-n) % gs
    xp = np.concatenate([x, np.full(pad, np.nan, x.dtype)]) if pad else x
    return xp.reshape(-1, gs), lambda m: m.reshape(-1)[:n]


def quantize_tensor(t: torch.Tensor, policy: QuantPolicy) -> Grid:
    shape = tuple(t.shape)
    x = t.detach().cpu().float().contiguous().reshape(-1).numpy()
    if not np.isfinite(x).all():
        raise EncodeError("cannot quantize a tensor with NaN or Inf")
    gran = Granularity[policy.granularity.upper()]
    if gran == Granularity.CHANNEL and shape and not -len(shape) <= policy.axis < len(shape):
        raise EncodeError(f"axis {policy.axis} is out of range for a tensor of shape {list(shape)} "
                          f"(per-channel scales need -{len(shape)} <= axis < {len(shape)})")
    axis = policy.axis % max(1, len(shape))
    if gran == Granularity.CHANNEL and len(shape) == 0:
        gran = Granularity.TENSOR
    rows, restore = _rows(x, shape, gran, axis, policy.group_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.minimum(np.nanmin(rows, axis=1), 0).astype(np.float32)
        hi = np.maximum(np.nanmax(rows, axis=1), 0).astype(np.float32)
        if policy.symmetric:
            qmax = (1 << (policy.bits - 1)) - 1
            s = (np.maximum(-lo, hi) / np.float32(qmax)).astype(np.float32)
            s[s == 0] = 1
            k = np.clip(np.rint(rows / s[:, None]), -qmax, qmax)
        else:
            levels = (1 << policy.bits) - 1
            s = ((hi - lo) / np.float32(levels)).astype(np.float32)
            s[s == 0] = 1
            zp = np.clip(np.rint(-lo / s), 0, levels)
            k = np.clip(np.rint(rows / s[:, None]) + zp[:, None], 0, levels) - zp[:, None]
    k = np.nan_to_num(k)
    kflat = restore(k).astype(np.int64)
    return Grid(kflat, s.astype(np.float32), gran, shape, axis=axis, group_size=policy.group_size)


def quantize_state_dict(sd: dict, policy: QuantPolicy) -> dict:
    """The state_dict that `mbz pack --wbits ...` stores, as plain tensors."""
    out = {}
    for name, t in sd.items():
        if isinstance(t, torch.Tensor) and policy.applies(name, t):
            g = quantize_tensor(t, policy)
            out[name] = torch.from_numpy(g.values()).reshape(t.shape).to(t.dtype)
        else:
            out[name] = t
    return out


def error_stats(orig: torch.Tensor, quant: torch.Tensor) -> dict:
    a = orig.detach().cpu().double().reshape(-1)
    b = quant.detach().cpu().double().reshape(-1)
    err = a - b
    mse = float((err ** 2).mean()) if a.numel() else 0.0
    sig = float((a ** 2).mean()) if a.numel() else 0.0
    return {
        "max_abs_err": float(err.abs().max()) if a.numel() else 0.0,
        "rmse": mse ** 0.5,
        "sqnr_db": (10 * np.log10(sig / mse) if mse > 0 and sig > 0 else float("inf")),
    }


__all__ = ["QuantPolicy", "quantize_tensor", "quantize_state_dict", "error_stats"]
