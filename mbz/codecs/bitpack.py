"""Bit packing of integer codes, width 1..16 bits (spec §5.1).

Element i occupies stream bits [i*b, (i+1)*b); stream bit j is bit (j % 8)
(LSB first) of byte j // 8; the last byte is zero-padded.  Packing works on
groups of 8 codes (= b bytes) held in two uint64 words, so every step is a
vectorized numpy operation.
"""
from __future__ import annotations

import numpy as np

from ..errors import EncodeError, FormatError


def packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


def unsigned_width(vmax: int) -> int:
    """Bits to hold 0..vmax (at least 1)."""
    return max(1, int(vmax).bit_length())


def signed_width(vmin: int, vmax: int) -> int:
    """Bits to hold vmin..vmax in two's complement (at least 1)."""
    return 1 + max(int(vmax).bit_length(), int(-vmin - 1).bit_length() if vmin < 0 else 0)


def pack_codes(values: np.ndarray, width: int, signed: bool = False) -> bytes:
    """Pack integers into a width-bit LSB-first stream."""
    if not 1 <= width <= 16:
        raise EncodeError(f"code width {width} outside 1..16")
    v = np.ascontiguousarray(values).reshape(-1)
    n = v.size
    if n == 0:
        return b""
    if signed:
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    else:
        lo, hi = 0, (1 << width) - 1
    vmin, vmax = int(v.min()), int(v.max())
    if vmin < lo or vmax > hi:
        raise EncodeError(f"codes in [{vmin}, {vmax}] do not fit {'signed' if signed else 'unsigned'} {width}-bit range [{lo}, {hi}]")
    mask = (1 << width) - 1
    if v.dtype.kind in "iu" and v.dtype.itemsize < 8:  # the mask in v's own type (wrapped: the same low bits)
        v = v & np.array(mask).astype(v.dtype)
    else:
        v = v.astype(np.int64, copy=False) & mask
    if width == 8:
        return v.astype(np.uint8).tobytes()
    if width == 16:
        return v.astype("<u2").tobytes()
    if 8 % width == 0:  # 1, 2, 4 bits: whole codes per byte, in uint8
        per = 8 // width
        u = v.astype(np.uint8)
        if n % per:
            u = np.concatenate([u, np.zeros(per - n % per, np.uint8)])
        u = u.reshape(-1, per)
        out = u[:, 0].copy()
        for j in range(1, per):
            out |= u[:, j] << np.uint8(j * width)
        return out.tobytes()
    u = v.astype(np.uint64)
    groups = -(-n // 8)
    if groups * 8 != n:
        u = np.concatenate([u, np.zeros(groups * 8 - n, np.uint64)])
    u = u.reshape(groups, 8)
    lo_w = np.zeros(groups, np.uint64)
    hi_w = np.zeros(groups, np.uint64)
    for j in range(8):
        off = j * width
        col = u[:, j]
        if off < 64:
            lo_w |= col << np.uint64(off)
            if off + width > 64:
                hi_w |= col >> np.uint64(64 - off)
        else:
            hi_w |= col << np.uint64(off - 64)
    words = np.empty((groups, 2), "<u8")
    words[:, 0] = lo_w
    words[:, 1] = hi_w
    out = words.view(np.uint8).reshape(groups, 16)[:, :width]
    return out.tobytes()[: packed_size(n, width)]


def unpack_codes(buf, count: int, width: int, signed: bool = False) -> np.ndarray:
    """Inverse of pack_codes: an integer array (int32, or the 8/16-bit type for those widths)."""
    if not 1 <= width <= 16:
        raise FormatError(f"code width {width} outside 1..16")
    need = packed_size(count, width)
    if len(buf) != need:
        raise FormatError(f"packed stream of {count} {width}-bit codes must be {need} bytes, got {len(buf)}")
    check_unused_bits(buf, count * width)
    if count == 0:
        return np.zeros(0, np.int32)
    if width == 8:   # byte-aligned fast paths return the narrow type (read-only view)
        return np.frombuffer(buf, np.int8 if signed else np.uint8)
    if width == 16:
        return np.frombuffer(buf, "<i2" if signed else "<u2")
    if width in (1, 2, 4):  # codes never straddle bytes: split each byte with shifts
        flat = np.frombuffer(buf, np.uint8)
        shifts = np.arange(0, 8, width, dtype=np.uint8)
        res = ((flat[:, None] >> shifts) & np.uint8((1 << width) - 1)).reshape(-1)[:count].astype(np.int32)
        if signed:
            sign = 1 << (width - 1)
            res = (res ^ sign) - sign
        return res
    groups = -(-count // 8)
    raw = np.zeros((groups, 16), np.uint8)
    flat = np.frombuffer(buf, np.uint8)
    full = len(flat) // width
    raw[:full, :width] = flat[: full * width].reshape(full, width)
    if full < groups:
        rest = flat[full * width:]
        raw[full, : len(rest)] = rest
    words = raw.view("<u8")
    lo_w, hi_w = words[:, 0], words[:, 1]
    mask = np.uint64((1 << width) - 1)
    out = np.empty((groups, 8), np.uint64)
    for j in range(8):
        off = j * width
        if off < 64:
            col = lo_w >> np.uint64(off)
            if off + width > 64:
                col = col | (hi_w << np.uint64(64 - off))
        else:
            col = hi_w >> np.uint64(off - 64)
        out[:, j] = col & mask
    res = out.reshape(-1)[:count].astype(np.int32)
    if signed:
        sign = 1 << (width - 1)
        res = (res ^ sign) - sign
    return res


def pack_bits(flags: np.ndarray) -> bytes:
    """Bitmap: one bit per element, LSB first (a width-1 unsigned stream)."""
    return np.packbits(np.ascontiguousarray(flags, dtype=bool).reshape(-1), bitorder="little").tobytes()


def check_unused_bits(buf, nbits: int) -> None:
    """The bits of the last byte past a stream of `nbits` bits must be zero (spec §5.1)."""
    used = nbits % 8
    if used and buf[len(buf) - 1] >> used:
        raise FormatError(f"unused bits {used}..7 of the last byte (byte {len(buf) - 1}) of a {nbits}-bit "
                          f"stream must be zero, got 0x{buf[len(buf) - 1]:02x}")


def unpack_bits(buf, count: int) -> np.ndarray:
    need = (count + 7) // 8
    if len(buf) != need:
        raise FormatError(f"bitmap of {count} elements must be {need} bytes, got {len(buf)}")
    check_unused_bits(buf, count)
    return np.unpackbits(np.frombuffer(buf, np.uint8), count=count, bitorder="little").view(bool)
