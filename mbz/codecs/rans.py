"""RANS entropy stage: static-model, context-modelled, lane-interleaved rANS (spec §5.7).

A section filtered with RANS holds the §5.1 packed stream of ``n`` codes of
width ``w`` as: a small header, per-context frequency tables quantized to
``2^P`` (Elias-gamma coded), ``K`` lane states, one byte stream shared by the
lanes and, in the CLASSES alphabet, a stream of raw bits (mantissa and sign
bits).  Lane ``k`` codes the contiguous symbols ``[k·S, min(n, (k+1)·S))`` with
``S = ceil(n / K)``; the decoder advances all lanes one symbol per step, so a
section decodes in ``S`` vectorized numpy steps (no Python loop per symbol).
Where numba is installed (the ``fast`` extra) the lane loops of the decoder and
the encoder run compiled (`entropy_jit`); the numpy code is the reference and
the fallback (``MBZ_NO_JIT=1``), with the same bytes and errors.

Coder: range-variant asymmetric numeral systems (J. Duda, "Asymmetric numeral
systems", arXiv:1311.2540, 2013) with 32-bit states, byte-wise renormalization
(L = 2^23) and interleaved states (F. Giesen, "Interleaved entropy coders",
arXiv:1402.3392, 2014).  Contexts: the magnitude class of the left neighbour
and of the neighbour one row above (row length ``R``), both within the lane.

Every malformed input (lying tables, truncated or overlong streams, lane states
out of range, symbols outside the code width) raises ``FormatError``.
"""
from __future__ import annotations

import numpy as np

from ..errors import EncodeError, FormatError
from ..spec import RANS_L, RANS_MAX_CTX, RANS_MAX_LANE, RANS_MAX_P, RANS_STATE_BYTES, RansAlphabet
from .bitpack import pack_codes, packed_size, unpack_codes
from .jit import compiled, map_sections, note_numpy

_STATE_HI = RANS_L << 8  # states live in [L, 256 L)


# --------------------------------------------------------------------------- small codes
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, pos: int, what: str):
    v = shift = 0
    for i in range(8):  # values below 2^56
        if pos >= len(buf):
            raise FormatError(f"rans: truncated header reading {what}")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos
    raise FormatError(f"rans: varint {what} longer than 8 bytes")


class _Bits:
    """LSB-first bit writer / reader (spec §5.1 bit order) with Elias-gamma codes."""

    def __init__(self, data: bytes = b""):
        self.acc = int.from_bytes(data, "little")
        self.n = len(data) * 8
        self.pos = 0

    def write(self, v: int, nbits: int):
        self.acc |= v << self.n
        self.n += nbits

    def gamma(self, v: int):
        nb = v.bit_length() - 1
        self.write(1 << nb, nb + 1)            # nb zeros, then a one
        self.write(v & ((1 << nb) - 1), nb)    # the nb bits below the leading one, LSB first

    def tobytes(self) -> bytes:
        return self.acc.to_bytes((self.n + 7) // 8, "little")

    def read(self, nbits: int) -> int:
        if self.pos + nbits > self.n:
            raise FormatError("rans: frequency tables end early")
        v = (self.acc >> self.pos) & ((1 << nbits) - 1)
        self.pos += nbits
        return v

    def read_gamma(self, maxbits: int) -> int:
        nb = 0
        while not self.read(1):
            nb += 1
            if nb > maxbits:
                raise FormatError(f"rans: frequency code longer than {maxbits} bits")
        return (1 << nb) | self.read(nb)


# --------------------------------------------------------------------------- symbols
def alphabet_size(alpha: int, w: int) -> int:
    return 1 << w if alpha == RansAlphabet.DIRECT else w + 1


def _class_lut(alpha: int, w: int, signed: bool) -> np.ndarray:
    """Context class c(s) of each symbol: bit length of the code's magnitude (CLASSES: the symbol)."""
    a = alphabet_size(alpha, w)
    s = np.arange(a, dtype=np.int64)
    if alpha == RansAlphabet.CLASSES:
        return s.astype(np.uint8)
    if signed:
        s = np.where(s >= 1 << (w - 1), s - (1 << w), s)
    mag = np.abs(s)
    return np.array([int(m).bit_length() for m in mag], np.uint8)


def _to_symbols(v: np.ndarray, alpha: int, w: int, signed: bool):
    """Codes (ints) -> (symbols, extra-bit counts, extra-bit values)."""
    v = v.astype(np.int64)
    if alpha == RansAlphabet.DIRECT:
        return v & ((1 << w) - 1), None, None
    mag = np.abs(v)
    nz = mag > 0
    cls = np.frexp(mag.astype(np.float64))[1].astype(np.int64)  # bit length of the magnitude (exact)
    mb = np.maximum(cls - 1, 0)
    ev = mag & ((1 << mb) - 1)
    nb = mb.copy()
    if signed:
        ev = ev | ((v < 0).astype(np.int64) << mb)
        nb = nb + nz
    return cls, nb, ev


def _pack_var(nb: np.ndarray, ev: np.ndarray) -> bytes:
    total = int(nb.sum())
    if total == 0:
        return b""
    rep = np.repeat(ev, nb)
    starts = np.cumsum(nb) - nb
    j = np.arange(total) - np.repeat(starts, nb)
    bits = ((rep >> j) & 1).astype(np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_var(buf, nb: np.ndarray) -> np.ndarray:
    total = int(nb.sum())
    if len(buf) != (total + 7) // 8:
        raise FormatError(f"rans: raw-bit stream is {len(buf)} bytes, the decoded classes need {(total + 7) // 8}")
    if total == 0:
        return np.zeros(nb.size, np.int64)
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
    if bits[total:].any():
        raise FormatError("rans: padding bits of the raw-bit stream must be zero")
    starts = np.cumsum(nb) - nb
    j = np.arange(total) - np.repeat(starts, nb)
    vals = bits[:total].astype(np.int64) << j
    out = np.zeros(nb.size, np.int64)
    has = nb > 0
    out[has] = np.add.reduceat(vals, starts[has])
    return out


# --------------------------------------------------------------------------- contexts
def _contexts(cv: np.ndarray, n: int, S: int, R: int, tl: int, tu: int) -> np.ndarray:
    """Context of every symbol from the class values cv (encoder side; the decoder builds them step by step)."""
    i = np.arange(n)
    t = i % S if S else i
    ctx = np.zeros(n, np.int64)
    if tl > 1:
        left = np.zeros(n, np.int64)
        ok = t > 0
        if R:
            ok &= (i % R) != 0
        left[ok] = cv[i[ok] - 1]
        ctx += np.minimum(left, tl - 1)
    if tu > 1:
        up = np.zeros(n, np.int64)
        ok = t >= R
        up[ok] = cv[i[ok] - R]
        ctx += tl * np.minimum(up, tu - 1)
    return ctx


def quantize_freqs(counts: np.ndarray, P: int) -> np.ndarray:
    """Counts -> frequencies summing to 2^P, every used symbol at least 1 (non-normative)."""
    M = 1 << P
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    used = counts > 0
    nu = int(used.sum())
    if nu > M:
        raise EncodeError(f"{nu} symbols do not fit a table of total {M}")
    f = np.where(used, np.maximum(1, np.floor(counts * (M / total))), 0).astype(np.int64)
    diff = M - int(f.sum())
    if diff > 0:  # hand the rest out by the largest fractional parts
        frac = np.where(used, counts * (M / total) - f, -1.0)
        f[np.argsort(-frac, kind="stable")[:diff]] += 1  # diff < number of used symbols
    while diff < 0:  # take from the largest frequencies, where a unit costs least
        order = np.argsort(-f, kind="stable")
        take = order[f[order] > 1][:-diff]
        f[take] -= 1
        diff += take.size
    return f


def _table_bits(f: np.ndarray) -> int:
    return sum(2 * int(x + 1).bit_length() - 1 for x in f[:-1]) + 1


def _write_tables(bits: _Bits, tables):
    for f in tables:
        if f is None:
            bits.write(0, 1)
            continue
        bits.write(1, 1)
        for x in f[:-1]:
            bits.gamma(int(x) + 1)


# --------------------------------------------------------------------------- encoder
def _cost(counts: np.ndarray, f: np.ndarray, P: int) -> float:
    used = counts > 0
    return float((counts[used] * (P - np.log2(f[used]))).sum())


def encode(data: bytes, w: int, signed: bool = False, row: int = 0, steps: int = 1024,
           alphabets=None, contexts=None) -> bytes:
    """Smallest RANS encoding of a §5.1 stream of `w`-bit codes among the models tried (see `plan`)."""
    return plan(data, w, signed, row, steps, alphabets, contexts).encode()


class Plan:
    """A chosen model for one stream: `estimate` (bytes, within a few bytes of the result) and `encode()`."""

    def __init__(self, estimate: float, args: tuple):
        self.estimate, self._args = estimate, args

    def encode(self) -> bytes:
        return _encode_with(*self._args)


def plan(data: bytes, w: int, signed: bool = False, row: int = 0, steps: int = 1024,
         alphabets=None, contexts=None) -> Plan:
    """Choose the RANS model (alphabet, contexts, precision) of smallest estimated size; nothing is coded yet.

    data: the packed codes (len(data) * 8 // w codes, the greatest count that packs to len(data) bytes);
    signed: codes are two's complement; row: row length for the upper-neighbour context (0: none);
    steps: lanes are chosen so that no lane codes more than this many symbols.
    Returns the stored bytes (spec §5.7).  Raises EncodeError for a width outside 1..16.
    """
    if not 1 <= w <= 16:
        raise EncodeError(f"rans: code width {w} outside 1..16")
    n = len(data) * 8 // w
    while n and packed_size(n, w) > len(data):
        n -= 1
    if packed_size(n, w) != len(data):
        raise EncodeError(f"rans: {len(data)} bytes are not a packed stream of {w}-bit codes")
    try:
        v = unpack_codes(data, n, w, signed).astype(np.int64) if n else np.zeros(0, np.int64)
    except FormatError as e:
        raise EncodeError(f"rans: not a packed stream of {w}-bit codes: {e}") from None
    if pack_codes(v, w, signed) != bytes(data):
        raise EncodeError("rans: the stream's padding bits are not zero")
    K = max(1, -(-n // max(1, min(steps, RANS_MAX_LANE)))) if n else 0
    S = -(-n // K) if K else 0
    R = row if 0 < row < n else 0
    if alphabets is None:
        alphabets = [RansAlphabet.CLASSES] + ([RansAlphabet.DIRECT] if w <= 8 else [])
    if contexts is None:
        contexts = [(1, 1), (2, 1)] + ([(2, 2), (3, 3)] if R else [])
    best = None
    for alpha in alphabets:
        if alpha == RansAlphabet.DIRECT and w > 8:
            continue
        A = alphabet_size(alpha, w)
        sym, nb, ev = _to_symbols(v, alpha, w, signed)
        lut = _class_lut(alpha, w, signed)
        cv = lut[sym].astype(np.int64) if n else sym
        extra = int(nb.sum()) if nb is not None else 0
        for tl, tu in contexts:
            if tu > 1 and not R:
                continue
            ctx = _contexts(cv, n, S, R, tl, tu)
            C = tl * tu
            cnt = np.bincount(ctx * A + sym, minlength=C * A).reshape(C, A) if n else np.zeros((C, A), np.int64)
            pmin = max(1, int(A - 1).bit_length())
            # precision beyond log2(count) buys nothing: try about that, and the finest
            for P in sorted({min(RANS_MAX_P, max(pmin, int(n).bit_length() - 3)), max(pmin, RANS_MAX_P)}):
                tables, bitsum = [], C
                ok = True
                for c in range(C):
                    if cnt[c].sum() == 0:
                        tables.append(None)
                        continue
                    if int((cnt[c] > 0).sum()) > (1 << P):
                        ok = False
                        break
                    f = quantize_freqs(cnt[c], P)
                    tables.append(f)
                    bitsum += _table_bits(f) + _cost(cnt[c], f, P)
                if not ok:
                    continue
                est = bitsum / 8 + extra / 8 + K * RANS_STATE_BYTES
                if best is None or est < best[0]:
                    best = (est, alpha, tl, tu, P, tables, sym, nb, ev, ctx)
    est, alpha, tl, tu, P, tables, sym, nb, ev, ctx = best
    header = 4 + len(_varint(n)) + len(_varint(R)) + len(_varint(K)) + 4
    return Plan(est + header, (n, w, signed, alpha, tl, tu, R, K, P, tables, sym, ctx, nb, ev))


def _encode_with(n, w, signed, alpha, tl, tu, R, K, P, tables, sym, ctx, nb, ev) -> bytes:
    A = alphabet_size(alpha, w)
    C = tl * tu
    freq = np.zeros((C, A), np.int64)
    for c, f in enumerate(tables):
        if f is not None:
            freq[c] = f
    cum = np.concatenate([np.zeros((C, 1), np.int64), np.cumsum(freq, axis=1)], axis=1)
    def jit_encode(jk):
        xj, sj = jk.rans_encode(n, K, P, np.ascontiguousarray(sym, np.int64), np.ascontiguousarray(ctx, np.int64),
                                freq, cum)
        return xj, sj.tobytes()
    x, stream = compiled(jit_encode, lambda: _lanes_encode(n, K, P, sym, ctx, freq, cum))
    hdr = bytes([int(alpha) | (int(signed) << 2), w, P, tl | (tu << 4)]) + _varint(n) + _varint(R) + _varint(K)
    bits = _Bits()
    _write_tables(bits, tables)
    tb = bits.tobytes()
    raw = _pack_var(nb, ev) if nb is not None else b""
    return (hdr + _varint(len(tb)) + tb + _varint(len(stream))
            + x.astype("<u4").tobytes() + stream + raw)


def _lanes_encode(n, K, P, sym, ctx, freq, cum):
    """Reverse rANS over the lanes, numpy, vectorized across lanes: (final states, byte stream)."""
    S = -(-n // K) if K else 0
    starts = np.arange(K, dtype=np.int64) * S
    lens = np.clip(n - starts, 0, S)
    x = np.full(K, RANS_L, np.uint64)
    chunks = []
    xmax_unit = (RANS_L >> P) << 8
    for t in range(S - 1, -1, -1):
        na = int(np.count_nonzero(lens > t))  # lens is non-increasing: the first na lanes are active
        idx = starts[:na] + t
        s, c = sym[idx], ctx[idx]
        f = freq[c, s].astype(np.uint64)
        cs = cum[c, s].astype(np.uint64)
        xa = x[:na]
        xmax = f * np.uint64(xmax_unit)
        emitted = []
        while True:
            m = xa >= xmax
            if not m.any():
                break
            b = np.full(na, -1, np.int16)
            b[m] = (xa[m] & np.uint64(255)).astype(np.int16)
            emitted.append(b)
            xa[m] >>= np.uint64(8)
        # decoder reads, round 1, the last byte each lane emitted; round 2 the one before; ...
        chunk = []
        if emitted:
            e = np.stack(emitted)                    # rounds emitted x lanes, -1 = none
            cnt = (e >= 0).sum(axis=0)
            for r in range(1, e.shape[0] + 1):
                lanes = np.flatnonzero(cnt >= r)
                chunk.append(e[cnt[lanes] - r, lanes].astype(np.uint8).tobytes())
        chunks.append(b"".join(chunk))
        x[:na] = (xa // f << np.uint64(P)) + xa % f + cs
    return x, b"".join(reversed(chunks))


# --------------------------------------------------------------------------- decoder
class _Section:
    """One RANS section's header, tables and streams, validated (spec §5.7)."""

    def __init__(self, stored, decoded_len: int):
        buf = bytes(stored)
        if len(buf) < 4:
            raise FormatError(f"rans: section of {len(buf)} bytes is shorter than its 4-byte header")
        mode, w, P, tt = buf[0], buf[1], buf[2], buf[3]
        alpha, signed = mode & 3, bool(mode >> 2 & 1)
        if mode >> 3 or alpha not in (RansAlphabet.DIRECT, RansAlphabet.CLASSES):
            raise FormatError(f"rans: unknown mode byte {mode}")
        if not 1 <= w <= 16 or (alpha == RansAlphabet.DIRECT and w > 8):
            raise FormatError(f"rans: code width {w} not allowed for alphabet {RansAlphabet(alpha).name}")
        if not 1 <= P <= RANS_MAX_P:
            raise FormatError(f"rans: table precision {P} outside 1..{RANS_MAX_P}")
        tl, tu = tt & 15, tt >> 4
        if not (1 <= tl <= RANS_MAX_CTX and 1 <= tu <= RANS_MAX_CTX):
            raise FormatError(f"rans: context byte {tt} outside 1..{RANS_MAX_CTX} per neighbour")
        pos = 4
        n, pos = _read_varint(buf, pos, "n")
        R, pos = _read_varint(buf, pos, "row length")
        K, pos = _read_varint(buf, pos, "lanes")
        if packed_size(n, w) != decoded_len:
            raise FormatError(f"rans: {n} codes of {w} bits pack to {packed_size(n, w)} bytes, section declares {decoded_len}")
        if (K == 0) != (n == 0) or K > n:
            raise FormatError(f"rans: {K} lanes for {n} symbols (need 1..n, or 0 for none)")
        if K and -(-n // K) > RANS_MAX_LANE:
            raise FormatError(f"rans: {-(-n // K)} symbols per lane exceed {RANS_MAX_LANE}")
        if tu > 1 and not 0 < R < n:
            raise FormatError(f"rans: upper-neighbour context with row length {R} for {n} symbols")
        if R > n:
            raise FormatError(f"rans: row length {R} exceeds the {n} symbols")
        tbl_len, pos = _read_varint(buf, pos, "table bytes")
        if pos + tbl_len > len(buf):
            raise FormatError("rans: frequency tables run past the section end")
        A = alphabet_size(alpha, w)
        C = tl * tu
        M = 1 << P
        bits = _Bits(buf[pos:pos + tbl_len])
        pos += tbl_len
        freq = np.zeros((C, A), np.int64)
        present = np.zeros(C, bool)
        for c in range(C):
            if not bits.read(1):
                continue
            present[c] = True
            acc = 0
            for a in range(A - 1):
                fa = bits.read_gamma(P + 1) - 1
                acc += fa
                if acc > M:
                    raise FormatError(f"rans: frequency table {c} sums past {M}")
                freq[c, a] = fa
            freq[c, A - 1] = M - acc
        if (bits.n + 7) // 8 != (bits.pos + 7) // 8 or bits.acc >> bits.pos:
            raise FormatError("rans: frequency tables leave unused non-zero bits")
        stream_len, pos = _read_varint(buf, pos, "stream bytes")
        if pos + RANS_STATE_BYTES * K + stream_len > len(buf):
            raise FormatError(f"rans: {K} lane states and a {stream_len}-byte stream run past the section end (truncated)")
        x = np.frombuffer(buf, "<u4", K, pos).astype(np.int64)
        pos += RANS_STATE_BYTES * K
        if K and (int(x.min()) < RANS_L or int(x.max()) >= _STATE_HI):
            raise FormatError(f"rans: lane state out of range [{RANS_L}, {_STATE_HI})")
        self.stream = np.frombuffer(buf, np.uint8, stream_len, pos)
        self.raw = buf[pos + stream_len:]
        if alpha == RansAlphabet.DIRECT and self.raw:
            raise FormatError(f"rans: {len(self.raw)} bytes after the lane stream")
        self.n, self.w, self.P, self.alpha, self.signed = n, w, P, alpha, signed
        self.tl, self.tu, self.R, self.K, self.A, self.C, self.M = tl, tu, R, K, A, C, M
        self.S = -(-n // K) if K else 0
        self.x0, self.freq, self.present = x, freq, present

    def lookup(self):
        """Per (context, slot): symbol (A = absent table), frequency, slot - cumulative frequency."""
        C, M, A = self.C, self.M, self.A
        sym_of = np.full((C, M), A, np.int64)
        f_of = np.ones((C, M), np.int64)
        bias_of = np.zeros((C, M), np.int64)
        slots = np.arange(M, dtype=np.int64)
        for c in range(C):
            if self.present[c]:
                sy = np.repeat(np.arange(A), self.freq[c])
                cu = np.concatenate([[0], np.cumsum(self.freq[c])])
                sym_of[c], f_of[c], bias_of[c] = sy, self.freq[c, sy], slots - cu[sy]
        return sym_of.reshape(-1), f_of.reshape(-1), bias_of.reshape(-1)

    def finish(self, out: np.ndarray) -> bytes:
        """Decoded symbols (int64, n) -> the §5.1 packed codes."""
        n, w, A, signed = self.n, self.w, self.A, self.signed
        if not n:
            return b""
        if int(out.max()) >= A:
            raise FormatError("rans: a symbol was decoded from an absent frequency table")
        if self.alpha == RansAlphabet.DIRECT:
            return pack_codes(out, w)  # the symbols are the w-bit codes themselves
        mb = np.maximum(out - 1, 0)
        nb = mb + (out > 0) if signed else mb
        ev = _unpack_var(self.raw, nb)
        mag = np.where(out > 0, (np.int64(1) << mb) | (ev & ((np.int64(1) << mb) - 1)), 0)
        if signed:
            v = np.where((ev >> mb) & 1 == 1, -mag, mag)
            lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
        else:
            v, lo, hi = mag, 0, (1 << w) - 1
        if int(v.min()) < lo or int(v.max()) > hi:
            raise FormatError(f"rans: decoded codes outside the {w}-bit {'signed' if signed else 'unsigned'} range")
        return pack_codes(v, w, signed)


def decode(stored, decoded_len: int) -> bytes:
    """The §5.1 packed codes a RANS section holds (spec §5.7); FormatError on any inconsistency."""
    return decode_many([(stored, decoded_len)])[0]


def decode_many(items) -> list:
    """Decode several RANS sections at once: [(stored, decoded_len)] -> [packed codes].

    The lanes of all sections advance together, one symbol per lane per step, so the
    number of numpy steps is the longest lane of any section, not their sum.
    Raises FormatError (naming the section's index in `items` when there are several).
    """
    secs = []
    for i, (stored, dlen) in enumerate(items):
        try:
            secs.append(_Section(stored, dlen))
        except FormatError as e:
            raise FormatError(f"{e} (section {i})" if len(items) > 1 else str(e)) from None
    try:
        def reference():
            note_numpy(max((s.S for s in secs), default=0), len(secs))
            return _run(secs)
        outs, bad = compiled(lambda jk: _run_jit(jk, secs), reference)
    except FormatError as e:
        raise FormatError(str(e)) from None
    res = []
    for i, (sec, out) in enumerate(zip(secs, outs)):
        if i in bad:
            raise FormatError(bad[i] + (f" (section {i})" if len(items) > 1 else ""))
        try:
            res.append(sec.finish(out))
        except FormatError as e:
            raise FormatError(f"{e} (section {i})" if len(items) > 1 else str(e)) from None
    return res


def _run(secs):
    """The lane loop over every section's lanes; returns (symbols per section, {index: error})."""
    tabs, base, lut_all, lut_base, off, loff = [], [], [], [], 0, 0
    for sec in secs:
        tabs.append(sec.lookup())
        base.append(off)
        off += sec.C * sec.M
        lut = np.append(_class_lut(sec.alpha, sec.w, sec.signed).astype(np.int64), 0)
        lut_all.append(lut)
        lut_base.append(loff)
        loff += lut.size
    sym_all = np.concatenate([t[0] for t in tabs]) if tabs else np.zeros(0, np.int64)
    f_all = np.concatenate([t[1] for t in tabs]) if tabs else np.zeros(0, np.int64)
    b_all = np.concatenate([t[2] for t in tabs]) if tabs else np.zeros(0, np.int64)
    lut_all = np.concatenate(lut_all) if lut_all else np.zeros(0, np.int64)
    lanes = [(j, k) for j, sec in enumerate(secs) for k in range(sec.K)]
    Kt = len(lanes)
    S_max = max((sec.S for sec in secs), default=0)
    sec_of = np.array([j for j, _ in lanes], np.int64)
    k_of = np.array([k for _, k in lanes], np.int64)
    per = lambda attr: np.array([getattr(secs[j], attr) for j in sec_of.tolist()], np.int64)  # noqa: E731
    S_l = per("S")
    n_l = per("n")
    lens = np.clip(n_l - k_of * S_l, 0, S_l)
    start_l = k_of * S_l
    Rl = per("R")
    ctx_used = any(sec.C > 1 for sec in secs)
    up_used = any(sec.tu > 1 for sec in secs)
    Rsafe = np.where(Rl > 0, Rl, np.int64(1) << 40)
    phase = start_l % Rsafe
    tlm1, tum1, tlv, Ml = per("tl") - 1, per("tu") - 1, per("tl"), per("M")
    Pl, maskl = per("P"), per("M") - 1
    basel = np.array([base[j] for j in sec_of.tolist()], np.int64)
    lutl = np.array([lut_base[j] for j in sec_of.tolist()], np.int64)
    x = np.concatenate([sec.x0 for sec in secs]) if secs else np.zeros(0, np.int64)
    streams = [sec.stream for sec in secs]
    sbase = np.cumsum([0] + [s.size for s in streams])
    stream_all = np.concatenate(streams).astype(np.int64) if streams else np.zeros(0, np.int64)
    slen = np.array([s.size for s in streams], np.int64)
    ptr = np.zeros(len(secs), np.int64)
    out = np.zeros((S_max, Kt), np.int64)
    cv = np.zeros((S_max, Kt), np.int64) if up_used else None
    Lv, eight = np.int64(RANS_L), np.int64(8)
    change = {0, *lens.tolist()}
    act = None
    lastc = np.zeros(Kt, np.int64)
    for t in range(S_max):
        if t in change:
            if act is not None:
                x[act] = xa
                if ctx_used:
                    lastc[act] = lc_a
            act = np.flatnonzero(lens > t)
            xa = x[act]
            s_a = sec_of[act]
            # first active lane of each section run, for ranks within a section's byte stream
            first = np.flatnonzero(np.r_[True, s_a[1:] != s_a[:-1]])
            run_of = np.cumsum(np.r_[False, s_a[1:] != s_a[:-1]])
            runsec = s_a[first]
            mask_a, P_a, base_a = maskl[act], Pl[act], basel[act]
            if ctx_used:
                lc_a = lastc[act]
                tlm1_a, tum1_a, tl_a, M_a = tlm1[act], tum1[act], tlv[act], Ml[act]
                ph_a, R_a, lut_a = phase[act], Rsafe[act], lutl[act]
                up_a = (tum1_a > 0)
        slot = (xa & mask_a) + base_a
        if ctx_used:
            left = np.minimum(lc_a, tlm1_a)
            if t == 0:
                left[:] = 0
            left[(ph_a + t) % R_a == 0] = 0
            ctx = left
            if up_used:
                ok = up_a & (t >= R_a)
                if ok.any():
                    rows = np.where(ok, t - R_a, 0)
                    upc = cv[rows, act]
                    ctx = ctx + tl_a * np.where(ok, np.minimum(upc, tum1_a), 0)
            slot += ctx * M_a
        s = sym_all.take(slot)
        xa = f_all.take(slot) * (xa >> P_a) + b_all.take(slot)
        out[t, act] = s
        if ctx_used:
            lc_a = lut_all.take(lut_a + s)
            if up_used:
                cv[t, act] = lc_a
        need = xa < Lv
        while need.any():
            c = np.cumsum(need)
            excl = c - need
            rank = excl - excl[first][run_of]
            cnt = np.add.reduceat(need.astype(np.int64), first)
            pos = ptr[s_a] + rank
            over = need & (pos >= slen[s_a])
            if over.any():
                j = int(s_a[np.flatnonzero(over)[0]])
                raise FormatError(f"rans: byte stream of {slen[j]} bytes ends early (truncated lane data) (section {j})"
                                  if len(secs) > 1 else f"rans: byte stream of {slen[j]} bytes ends early (truncated lane data)")
            xa[need] = (xa[need] << eight) | stream_all.take((sbase[s_a] + pos)[need])
            ptr[runsec] += cnt
            need = xa < Lv
    if act is not None:
        x[act] = xa
    bad = {}
    outs = []
    lane0 = 0
    for j, sec in enumerate(secs):
        cols = out[:sec.S, lane0:lane0 + sec.K]
        outs.append(cols.T.reshape(-1)[:sec.n])
        if ptr[j] != slen[j]:
            bad[j] = f"rans: {int(slen[j] - ptr[j])} bytes of the lane stream left unread"
        elif sec.K and (x[lane0:lane0 + sec.K] != RANS_L).any():
            bad[j] = f"rans: final lane states differ from {RANS_L}: the stream is corrupt"
        lane0 += sec.K
    return outs, bad


def _run_jit(jk, secs):
    """`_run` with the compiled lane loop (entropy_jit), one section at a time; the same results and errors
    (a byte stream that ends early: the section whose lanes run out first in `_run`'s order, step, round)."""
    def one(sec):
        sym_of, f_of, bias_of = sec.lookup()
        lut = np.append(_class_lut(sec.alpha, sec.w, sec.signed).astype(np.int64), 0)
        out, info, x = np.zeros(sec.n, np.int32), np.zeros(3, np.int64), sec.x0.copy()  # symbols < 2^17
        err, ptr = jk.rans_decode(sec.n, sec.K, sec.R, sec.tl, sec.tu, sec.P, sym_of, f_of, bias_of, lut, x,
                                  sec.stream.copy(), out, info)
        return out, int(ptr), x, (int(info[1]), int(info[2])) if err else None
    outs, bad, early = [], {}, None
    for j, (sec, (out, ptr, x, err)) in enumerate(zip(secs, map_sections(one, secs, [s.n for s in secs]))):
        if err is not None and (early is None or err + (j,) < early):
            early = err + (j,)
        outs.append(out)
        if ptr != sec.stream.size:
            bad[j] = f"rans: {int(sec.stream.size - ptr)} bytes of the lane stream left unread"
        elif sec.K and (x != RANS_L).any():
            bad[j] = f"rans: final lane states differ from {RANS_L}: the stream is corrupt"
    if early is not None:
        j = early[2]
        raise FormatError(f"rans: byte stream of {secs[j].stream.size} bytes ends early (truncated lane data)"
                          + (f" (section {j})" if len(secs) > 1 else ""))
    return outs, bad


def entropy_bound(data: bytes, w: int, signed: bool = False) -> float:
    """Order-0 empirical entropy, in bytes, of the codes of a packed stream (a reference figure)."""
    n = len(data) * 8 // w
    while n and packed_size(n, w) > len(data):
        n -= 1
    if not n:
        return 0.0
    v = unpack_codes(data, n, w, signed)
    _, c = np.unique(v, return_counts=True)
    return float(-(c * np.log2(c / n)).sum() / 8)


__all__ = ["encode", "plan", "Plan", "decode", "decode_many", "quantize_freqs", "entropy_bound"]
