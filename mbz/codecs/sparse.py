"""Which elements of a tensor carry a stored code (spec §5.4, table 5).

* DENSE  — all of them, in row-major order.
* BITMAP — a MASK section of numel bits (1 = stored).
* DELTA  — a DELTAS section of fixed-width entries d_j; the stored positions are
  p_j = p_{j-1} + d_j + 1 with p_{-1} = -1.  A run of zeros longer than the
  width allows is bridged by *filler* entries (d = 2^iw - 1, as in Deep
  Compression) whose codes decode to zero; the run after the last entry must
  also be shorter than 2^iw, so numel is bounded by the entries stored.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..spec import Sparsity
from .bitpack import pack_bits, pack_codes, packed_size, unpack_bits, unpack_codes


def delta_entries(positions: np.ndarray, numel: int, iw: int):
    """Delta entries for sorted positions, fillers included.

    Returns (entries uint32, is_filler bool) in stream order.
    """
    span = 1 << iw
    prev = np.concatenate([[-1], positions[:-1]]) if positions.size else np.zeros(0, np.int64)
    d = positions.astype(np.int64) - prev - 1            # zeros skipped before each stored element
    fill = d // span                                      # fillers needed before each element
    tail = numel - 1 - (int(positions[-1]) if positions.size else -1)
    tail_fill = tail // span                              # fillers so the final run is < 2^iw
    total = int(positions.size + fill.sum() + tail_fill)
    entries = np.full(total, span - 1, np.uint32)
    is_filler = np.ones(total, bool)
    # index of each real entry in the stream: its own position + fillers up to and including it
    real_at = np.arange(positions.size) + np.cumsum(fill)
    entries[real_at] = (d - fill * span).astype(np.uint32)
    is_filler[real_at] = False
    return entries, is_filler


def _gaps(positions: np.ndarray, numel: int):
    prev = np.concatenate([[-1], positions[:-1]]) if positions.size else np.zeros(0, np.int64)
    d = positions.astype(np.int64) - prev - 1
    tail = numel - 1 - (int(positions[-1]) if positions.size else -1)
    return d, tail


def delta_count(positions: np.ndarray, numel: int, iw: int) -> int:
    d, tail = _gaps(positions, numel)
    return int(positions.size + (d >> iw).sum() + (tail >> iw))


def best_delta_width(positions: np.ndarray, numel: int, code_width: int) -> int:
    """Index width minimizing packed bytes of deltas + codes (fillers cost a code too).

    Only widths near log2 of the mean gap are tried: the cost is convex there.
    """
    d, tail = _gaps(positions, numel)
    mean = (numel / max(1, positions.size))
    centre = max(1, int(mean).bit_length())
    best, best_cost = 1, None
    for iw in range(max(1, centre - 4), min(16, centre + 4) + 1):
        cnt = int(positions.size + (d >> iw).sum() + (tail >> iw))
        cost = packed_size(cnt, iw) + packed_size(cnt, code_width)
        if best_cost is None or cost < best_cost:
            best, best_cost = iw, cost
    return best


def decode_delta(buf, count: int, iw: int, numel: int) -> np.ndarray:
    d = unpack_codes(buf, count, iw).astype(np.int64)
    pos = np.cumsum(d + 1) - 1
    last = int(pos[-1]) if count else -1
    if last >= numel:
        raise FormatError(f"delta indices reach position {last} of a tensor with {numel} elements")
    if numel - 1 - last >= (1 << iw):
        raise FormatError(f"delta stream leaves a final run of {numel - 1 - last} zeros; width {iw} allows < {1 << iw}")
    return pos


class Dense:
    id = Sparsity.DENSE


class Bitmap:
    id = Sparsity.BITMAP

    @staticmethod
    def encode(mask: np.ndarray) -> bytes:
        return pack_bits(mask)

    @staticmethod
    def decode(buf, numel: int) -> np.ndarray:
        return unpack_bits(buf, numel)


class Delta:
    id = Sparsity.DELTA

    @staticmethod
    def encode(entries: np.ndarray, iw: int) -> bytes:
        return pack_codes(entries, iw)

    decode = staticmethod(decode_delta)


SPARSITY = {c.id: c for c in (Dense, Bitmap, Delta)}
