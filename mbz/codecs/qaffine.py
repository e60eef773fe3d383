"""AFFINE encoding of torch's quantized dtypes (qint8, quint8, qint32; spec §5.3.1).

A quantized tensor is stored as its integer codes (``int_repr``) with its own
scales (float64, as torch holds them; float32 when every scale is a float32 value, format 1.2) and zero points, per tensor or per
channel (torch.per_tensor_affine / per_channel_affine); it decodes to the
same quantized tensor: int_repr, scales, zero points and axis equal.  The
element value is the spec's AFFINE value ``(q - zp) * scale``; an element
without a stored code (sparse layouts) has code ``zp`` (value zero).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EncodeError, FormatError
from ..spec import (MAX_WIDTH, P_AXIS, P_COUNT, P_GRAN, P_SCALE_BYTES, P_SIGNED, P_WIDTH, P_ZPSIGNED, P_ZPWIDTH,
                    QUANTIZED_DTYPES, DType, Granularity, Role)
from .affine import group_index, n_groups
from .bitpack import pack_codes, signed_width, unpack_codes, unsigned_width

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


@dataclass
class QuantizedGrid:
    """The parts of a quantized tensor: codes q (int64, flat), scales (float64), zero points (int64)."""
    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    gran: Granularity
    shape: tuple
    axis: int = 0

    def zp_of_elements(self) -> np.ndarray:
        return self.zero_points[group_index(self.gran, self.shape, self.axis, 0)]


def split_quantized(t: torch.Tensor, name: str) -> QuantizedGrid:
    """Codes, scales and zero points of a quantized tensor; EncodeError for schemes the format lacks."""
    shape = tuple(t.shape)
    q = t.int_repr().contiguous().reshape(-1).numpy().astype(np.int64)
    scheme = t.qscheme()
    if scheme in _PER_TENSOR:
        return QuantizedGrid(q, np.array([t.q_scale()], np.float64), np.array([t.q_zero_point()], np.int64),
                             Granularity.TENSOR, shape)
    if scheme in _PER_CHANNEL:
        zp = t.q_per_channel_zero_points()
        if zp.is_floating_point():
            raise EncodeError(f"{name}: per-channel zero points of dtype {zp.dtype} are not stored by the format")
        return QuantizedGrid(q, t.q_per_channel_scales().double().numpy().copy(), zp.long().numpy().copy(),
                             Granularity.CHANNEL, shape, t.q_per_channel_axis())
    raise EncodeError(f"{name}: quantization scheme {scheme} is not stored by the format "
                      f"(per-tensor and per-channel affine are)")


def quantized_plain(grid: QuantizedGrid, name: str):
    """(base params, codes (flat int64), stored mask, code width, signed, [scale / zero-point sections])."""
    q, zp = grid.q, grid.zero_points
    signed = bool(q.size and q.min() < 0) or bool(zp.size and zp.min() < 0)
    lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
    w = signed_width(min(lo, int(zp.min())), max(hi, int(zp.max()))) if signed else unsigned_width(max(hi, int(zp.max())))
    zs = bool(zp.min() < 0)
    zb = 0 if not zp.any() else (signed_width(int(zp.min()), int(zp.max())) if zs else unsigned_width(int(zp.max())))
    if w > MAX_WIDTH or zb > MAX_WIDTH:
        raise EncodeError(f"{name}: quantized codes need {max(w, zb)} bits; the format stores at most {MAX_WIDTH}")
    # float32 scales when every float64 scale survives the round trip through float32 bit for bit (torch.ao's
    # observers compute scales in float32: all of theirs do), else float64 (spec §5.3.1)
    s32 = grid.scales.astype("<f4")
    narrow = bool(np.array_equal(s32.astype(np.float64).view(np.uint64), grid.scales.view(np.uint64)))
    p = {P_GRAN: int(grid.gran)} if narrow else {P_GRAN: int(grid.gran), P_SCALE_BYTES: 8}
    if grid.gran == Granularity.CHANNEL:
        p[P_AXIS] = grid.axis
    if signed:
        p[P_SIGNED] = True
    secs = [(Role.SCALES, s32.tobytes() if narrow else grid.scales.astype("<f8").tobytes())]
    if zb:
        p[P_ZPWIDTH] = zb
        if zs:
            p[P_ZPSIGNED] = True
        secs.append((Role.ZERO_POINTS, pack_codes(zp, zb, zs)))
    stored = q != grid.zp_of_elements() if zb else q != 0
    return p, q, stored, w, signed, secs


def decode_quantized(p: dict, secs: dict, dtype: DType, shape, layout, numel: int) -> torch.Tensor:
    """The quantized tensor of a validated AFFINE record of a quantized dtype."""
    int_name, _ = QUANTIZED_DTYPES[dtype]
    gran, axis = Granularity(p[P_GRAN]), p.get(P_AXIS, 0)
    g = n_groups(gran, shape, axis, 0)  # TENSOR or CHANNEL: checked on open (spec §5.3.1)
    if p.get(P_SCALE_BYTES, 4) == 8:
        scales = np.frombuffer(secs[Role.SCALES], "<f8")
    else:  # format 1.2: float32 scales, widened exactly
        scales = np.frombuffer(secs[Role.SCALES], "<f4").astype(np.float64)
    zp = (unpack_codes(secs[Role.ZERO_POINTS], g, p[P_ZPWIDTH], p.get(P_ZPSIGNED, False)).astype(np.int64)
          if p.get(P_ZPWIDTH, 0) else np.zeros(g, np.int64))
    codes = unpack_codes(secs[Role.CODES], p[P_COUNT], p[P_WIDTH], p.get(P_SIGNED, False)).astype(np.int64)
    pos = layout.positions()
    if pos is None:
        full = codes
    else:
        full = zp[group_index(gran, shape, axis, 0)]
        full[pos] = codes
    info = np.iinfo(int_name)
    if full.size and (full.min() < info.min or full.max() > info.max):
        raise FormatError(f"quantized codes outside the {int_name} range")
    rep = torch.from_numpy(full.astype(int_name)).reshape(tuple(shape))
    with warnings.catch_warnings():  # torch deprecates creating quantized tensors; the file holds one
        warnings.simplefilter("ignore", UserWarning)
        if gran == Granularity.TENSOR:
            return torch._make_per_tensor_quantized_tensor(rep, float(scales[0]), int(zp[0]))
        return torch._make_per_channel_quantized_tensor(rep, torch.from_numpy(scales.copy()), torch.from_numpy(zp),
                                                        axis)
