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
from ..spec import P_COUNT, P_IWIDTH, P_SPARSE, Role, Sparsity
from .bitpack import check_unused_bits, pack_bits, pack_codes, packed_size, unpack_bits, unpack_codes


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

    Only widths near log2 of the mean gap are tried: the cost is convex there.  The
    fillers sum(d >> iw) of every width come from one histogram of the gaps when they
    are short (the usual case), instead of a pass over all gaps per width.
    """
    d, tail = _gaps(positions, numel)
    mean = (numel / max(1, positions.size))
    centre = max(1, int(mean).bit_length())
    widths = range(max(1, centre - 4), min(16, centre + 4) + 1)
    if d.size and int(d.max()) < (1 << 16):
        hist = np.bincount(d)
        values = np.arange(hist.size, dtype=np.int64)
        fillers = {iw: int(hist @ (values >> iw)) for iw in widths}
    else:
        fillers = {iw: int((d >> iw).sum()) for iw in widths}
    best, best_cost = 1, None
    for iw in widths:
        cnt = int(positions.size + fillers[iw] + (tail >> iw))
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


def _popcount(b: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(b).sum(dtype=np.int64))
    return int(np.unpackbits(b).sum(dtype=np.int64))  # numpy < 2.0


class StoredLayout:
    """Where the m stored codes of one record go among its numel elements (validated on construction).

    Decoders expand the codes a chunk at a time (`chunks`), so that a tensor is
    written once into its output array and no numel-sized temporaries (int64
    positions, a dense code array) are allocated; that is most of load time.
    """

    def __init__(self, sp: Sparsity, numel: int, m: int, mask=None, positions=None):
        self.sp, self.numel, self.m = sp, numel, m
        self._mask = None if mask is None else np.frombuffer(mask, np.uint8)
        self._positions = positions
        if sp == Sparsity.DENSE and m != numel:
            raise FormatError(f"dense layout stores {m} codes for {numel} elements")
        if sp == Sparsity.BITMAP:
            if len(self._mask) != (numel + 7) // 8:
                raise FormatError(f"bitmap of {numel} elements must be {(numel + 7) // 8} bytes, got {len(self._mask)}")
            check_unused_bits(self._mask, numel)
            ones = _popcount(self._mask)
            if ones != m:
                raise FormatError(f"bitmap marks {ones} elements but the record stores {m} codes")

    @classmethod
    def from_sections(cls, p: dict, secs: dict, numel: int) -> "StoredLayout":
        sp = Sparsity(p[P_SPARSE])
        if sp == Sparsity.BITMAP:
            return cls(sp, numel, p[P_COUNT], mask=secs[Role.MASK])
        if sp == Sparsity.DELTA:
            return cls(sp, numel, p[P_COUNT], positions=decode_delta(secs[Role.DELTAS], p[P_COUNT], p[P_IWIDTH], numel))
        return cls(sp, numel, p[P_COUNT])

    @property
    def mask(self) -> np.ndarray | None:
        """The BITMAP layout's mask bytes (uint8, checked); None for the other layouts."""
        return self._mask

    @property
    def dense(self) -> bool:
        return self.sp == Sparsity.DENSE

    def positions(self):
        """None (dense) or the sorted int64 positions of the stored codes."""
        if self.sp == Sparsity.BITMAP and self._positions is None:
            self._positions = np.flatnonzero(unpack_bits(self._mask, self.numel))
        return self._positions

    def chunks(self, codes: np.ndarray, step: int):
        """Yield (start, stop, codes of elements start..stop-1 with 0 where none is stored).

        step must be a multiple of 8.  The yielded array is a reused buffer:
        use it before asking for the next chunk.
        """
        n = self.numel
        if self.dense:
            for s in range(0, n, step):
                yield s, min(n, s + step), codes[s:s + step]
            return
        buf = np.zeros(min(step, n), codes.dtype)
        if self._positions is None:  # BITMAP: unpack and scatter one chunk of the mask at a time
            off = 0
            for s in range(0, n, step):
                e = min(n, s + step)
                pos = np.flatnonzero(np.unpackbits(self._mask[s // 8:(e + 7) // 8], count=e - s,
                                                   bitorder="little").view(bool))
                chunk = buf[:e - s]
                chunk[...] = 0
                chunk[pos] = codes[off:off + pos.size]
                off += pos.size
                yield s, e, chunk
            return
        pos = self._positions
        if n <= step:  # one chunk: no cut points to search
            buf[pos] = codes
            yield 0, n, buf
            return
        cut = np.searchsorted(pos, np.append(np.arange(0, n, step), n))  # codes of chunk i: cut[i]..cut[i+1]
        for i, s in enumerate(range(0, n, step)):
            e = min(n, s + step)
            a, b = int(cut[i]), int(cut[i + 1])
            chunk = buf[:e - s]
            chunk[...] = 0
            chunk[pos[a:b] - s] = codes[a:b]
            yield s, e, chunk
