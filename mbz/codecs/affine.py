"""AFFINE encoding: value = float32(q - zero_point[g]) * scale[g], cast to dtype (spec §5.3).

A Grid is what the encoder gets from lossless detection or lossy
quantization: integer multiples k of one fp32 scale per group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FormatError
from ..spec import Granularity
from .bitpack import unpack_bits, unpack_codes


def numel_of(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def n_groups(gran: Granularity, shape, axis: int, gs: int) -> int:
    n = numel_of(shape)
    if gran == Granularity.TENSOR:
        return 1
    if gran == Granularity.CHANNEL:
        return int(shape[axis])
    return -(-n // gs)


def group_index(gran: Granularity, shape, axis: int, gs: int, positions=None) -> np.ndarray:
    """Group of each position (all elements when positions is None)."""
    pos = np.arange(numel_of(shape), dtype=np.int64) if positions is None else positions
    if gran == Granularity.TENSOR:
        return np.zeros(pos.shape, np.int64)
    if gran == Granularity.CHANNEL:
        post = numel_of(shape[axis + 1:])
        return (pos // post) % int(shape[axis])
    return pos // gs


def apply_scales(f: np.ndarray, scales: np.ndarray, gran: Granularity, shape, axis: int, gs: int) -> np.ndarray:
    """In-place f *= scale[group(i)] for a flat float32 array."""
    if gran == Granularity.TENSOR:
        f *= scales[0]
    elif gran == Granularity.CHANNEL:
        pre, c, post = numel_of(shape[:axis]), int(shape[axis]), numel_of(shape[axis + 1:])
        f.reshape(pre, c, post)[...] *= scales.reshape(1, c, 1)
    else:
        full = (f.size // gs) * gs
        if full:
            f[:full].reshape(-1, gs)[...] *= scales[: full // gs, None]
        if full < f.size:
            f[full:] *= scales[-1]
    return f


@dataclass
class Grid:
    """value = float32(k) * scales[group]; k are integers (zero means exact 0.0)."""
    k: np.ndarray            # int64, flat, row-major
    scales: np.ndarray       # float32, one per group
    gran: Granularity
    shape: tuple
    axis: int = 0
    group_size: int = 0

    def values(self) -> np.ndarray:
        """The float32 values this grid decodes to (flat)."""
        f = self.k.astype(np.float32)
        return apply_scales(f, self.scales, self.gran, self.shape, self.axis, self.group_size)


def decode_affine(p: dict, secs: dict, dtype: torch.dtype, shape, positions, numel: int) -> torch.Tensor:
    """Decode AFFINE given validated params, decoded sections and stored positions.

    positions: None (dense) or int64 positions of the stored codes.
    """
    from ..spec import Role
    gran, axis, gs = Granularity(p["g"]), p.get("ax", 0), p.get("gs", 0)
    g = n_groups(gran, shape, axis, gs)
    sbuf = secs[Role.SCALES]
    if len(sbuf) != 4 * g:
        raise FormatError(f"SCALES holds {len(sbuf)} bytes; {g} groups need {4 * g}")
    scales = np.frombuffer(sbuf, "<f4")
    codes = unpack_codes(secs[Role.CODES], p["m"], p["b"], p.get("sg", False))
    if p.get("zb", 0):
        zp = unpack_codes(secs[Role.ZERO_POINTS], g, p["zb"], False).astype(np.int32)
        gi = group_index(gran, shape, axis, gs, positions)
        codes = codes.astype(np.int32) - zp[gi]
    if positions is not None:  # scatter the narrow codes (1-2 bytes each), not float32
        dense = np.zeros(numel, codes.dtype)
        dense[positions] = codes
        codes = dense
    f = apply_scales(codes.astype(np.float32), scales, gran, shape, axis, gs)
    if p.get("nz", False):
        z = np.flatnonzero(f == 0)
        neg = unpack_bits(secs[Role.NEGZERO], z.size)
        f[z[neg]] = -0.0
    t = torch.from_numpy(f).reshape(tuple(shape))
    return t if dtype == torch.float32 else t.to(dtype)
