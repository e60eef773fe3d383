"""AFFINE encoding: value = float32(q - zero_point[g]) * scale[g], cast to dtype (spec §5.3).

A Grid is what the encoder gets from lossless detection or lossy
quantization: integer multiples k of one fp32 scale per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FormatError
from ..spec import (P_AXIS, P_COUNT, P_GRAN, P_GROUP, P_NEGZERO, P_SIGNED, P_WIDTH, P_ZPWIDTH, Granularity,
                    Role)
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


CHUNK_ELEMENTS = 1 << 17  # ~128K elements per decode step: its temporaries stay in L2 cache


def row_unit(gran: Granularity, shape, axis: int, gs: int) -> int:
    """Length of the runs of consecutive elements that share one scale."""
    if gran == Granularity.TENSOR:
        return 1
    if gran == Granularity.CHANNEL:
        return max(1, numel_of(shape[axis + 1:]))
    return gs


def chunk_step(unit: int) -> int:
    """A decode step: whole rows of `unit` elements, a multiple of 8 (whole bitmap bytes)."""
    base = unit * 8 // math.gcd(unit, 8)
    return base * max(1, CHUNK_ELEMENTS // base)


def scale_into(out: np.ndarray, d: np.ndarray, s: int, scales: np.ndarray, gran: Granularity, shape, axis: int,
               unit: int) -> None:
    """out[:] = float32(d) * scale[group] for the elements s..s+len(d)-1 (s is a multiple of unit)."""
    if gran == Granularity.TENSOR:
        np.multiply(d, scales[0], out=out, dtype=np.float32, casting="unsafe")
        return
    rows, rem = divmod(d.size, unit)
    r0 = s // unit
    if gran == Granularity.CHANNEL:
        c = int(shape[axis])
        sc = scales[r0:r0 + rows] if r0 + rows <= c else scales[np.arange(r0, r0 + rows) % c]
    else:
        sc = scales[r0:r0 + rows]
    full = rows * unit
    np.multiply(d[:full].reshape(rows, unit), sc[:, None], out=out[:full].reshape(rows, unit),
                dtype=np.float32, casting="unsafe")
    if rem:  # the last, partial group of a GROUP tensor
        np.multiply(d[full:], scales[r0 + rows], out=out[full:], dtype=np.float32, casting="unsafe")


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
        f = np.empty(self.k.size, np.float32)
        unit = row_unit(self.gran, self.shape, self.axis, self.group_size)
        scale_into(f, self.k, 0, self.scales, self.gran, self.shape, self.axis, unit)
        return f


def decode_affine(p: dict, secs: dict, dtype: torch.dtype, shape, layout, numel: int) -> torch.Tensor:
    """Decode AFFINE given validated params, decoded sections and the StoredLayout of its codes."""
    gran, axis, gs = Granularity(p[P_GRAN]), p.get(P_AXIS, 0), p.get(P_GROUP, 0)
    g = n_groups(gran, shape, axis, gs)
    sbuf = secs[Role.SCALES]
    if len(sbuf) != 4 * g:
        raise FormatError(f"SCALES holds {len(sbuf)} bytes; {g} groups need {4 * g}")
    scales = np.frombuffer(sbuf, "<f4")
    # finite and sign bit clear <=> the bits as uint32 lie below those of +inf: the usual case, one test
    odd_scales = not bool((scales.view("<u4") < np.uint32(0x7F800000)).all())
    nan = np.flatnonzero(np.isnan(scales)) if odd_scales else ()
    if len(nan):  # so that no decoded value is NaN and the cast to the dtype needs no NaN rule
        raise FormatError(f"SCALES entry {int(nan[0])} (of {g}) is NaN; scales must not be NaN")
    codes = unpack_codes(secs[Role.CODES], p[P_COUNT], p[P_WIDTH], p.get(P_SIGNED, False))
    if p.get(P_ZPWIDTH, 0):  # subtract zero points from the stored codes only: unstored elements are exact zeros
        zp = unpack_codes(secs[Role.ZERO_POINTS], g, p[P_ZPWIDTH], False).astype(np.int32)
        codes = codes.astype(np.int32) - zp[group_index(gran, shape, axis, gs, layout.positions())]
    f = np.empty(numel, np.float32)
    unit = row_unit(gran, shape, axis, gs)
    # a zero code (q - zp = 0, or no stored code) is +0.0 whatever its scale (spec §5.3); 0 x scale is
    # +0.0 already unless a scale is NaN, infinite or has its sign bit set (odd_scales)
    with np.errstate(over="ignore", invalid="ignore"):   # inf / NaN products are what the spec computes
        for s, e, d in layout.chunks(codes, chunk_step(unit)):
            scale_into(f[s:e], d, s, scales, gran, shape, axis, unit)
            if odd_scales:
                f[s:e][d == 0] = 0.0
    if p.get(P_NEGZERO, False):
        z = np.flatnonzero(f == 0)
        neg = unpack_bits(secs[Role.NEGZERO], z.size)
        f[z[neg]] = -0.0
    t = torch.from_numpy(f.reshape(tuple(shape)))  # numpy's reshape: a few times cheaper than torch's
    return t if dtype == torch.float32 else t.to(dtype)
