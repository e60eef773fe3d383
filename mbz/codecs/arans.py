"""ARANS entropy stage: adaptive binary context models over lane-interleaved rANS (spec §5.8).

A section filtered with ARANS holds ``n`` elements -- §5.1 codes of width ``w`` (kind INT) or
float32 words (kind FLOAT32) -- as a small header, ``K`` lane states and one byte stream shared by
the lanes.  Every element is binarized into yes/no decisions: for INT a zero flag (pass 1), then,
for the non-zero codes, the sign and the bits of ``|v| - 1`` (pass 2); for FLOAT32 the 8 exponent
bits, the sign and the top ``w`` fraction bits.  Each decision is coded with the probability of its
context slot, estimated from the counts of the decisions that slot saw so far in the section
(halved past a limit), so no frequency table is stored.  The zero flag's context in a 2-D section
(row length ``R``) is the density class of the non-zero codes already decoded in its row and in its
column (a position's significance from its row's and its column's density); the sign's context is
the sign of the left neighbour.  The magnitude bits have contexts from their bit prefix only:
measured on pruned 4-bit and PTQ 8-bit checkpoints, neighbour and row (output channel) magnitude
contexts and an Exp-Golomb binarization gain below 0.3% there (tools/arans_contexts.py).

Lane ``k`` codes the contiguous elements ``[k·S, min(n, (k+1)·S))``; every lane makes one decision per
step, so a section -- or every ARANS section of a file, together -- decodes in vectorized numpy
steps, no Python loop per element or decision.  Where numba is installed (the ``fast`` extra) the
same steps run compiled, one section per call (`entropy_jit`, tens of M decisions/s per core); this
numpy code is the reference and the fallback (``MBZ_NO_JIT=1``), with the same bytes and errors.

Coder: rANS (J. Duda, "Asymmetric numeral systems", arXiv:1311.2540, 2013) with 32-bit states,
byte-wise renormalization (L = 2^23), probabilities in units of 2^-16, interleaved lanes
(F. Giesen, "Interleaved entropy coders", arXiv:1402.3392, 2014); binarization with adaptive binary
models as in context-adaptive binary arithmetic coding (D. Marpe et al., IEEE TCSVT 13(7), 2003),
with count-based (Krichevsky-Trofimov) estimates.  Every malformed input raises ``FormatError``.
"""
from __future__ import annotations

import numpy as np

from ..errors import EncodeError, FormatError
from ..spec import ARANS_LIMIT, ARANS_MAX_LANE, ARANS_P, RANS_L, RANS_STATE_BYTES, AransKind
from .bitpack import pack_codes, packed_size, unpack_codes
from .jit import compiled, map_sections, note_numpy
from .rans import _read_varint, _varint

_M = 1 << ARANS_P
_HI = RANS_L << 8
# context slots of a section (spec table 17)
PB = 4        # INT magnitude bits with their own slot per prefix (the rest: one slot per depth)
DQ = 8        # density classes 0..DQ of the 2-D zero-flag context
ZF = 0        # zero flags: (DQ + 1)^2 slots
SGN = ZF + (DQ + 1) ** 2   # INT sign: 3 slots (left neighbour none / zero, positive, negative)
MG = SGN + 3               # INT magnitude bits: 2^PB + 16 slots
FE = MG + (1 << PB) + 16   # FLOAT32 exponent bits: 256 slots
FS = FE + 256              # FLOAT32 sign
FF = FS + 1                # FLOAT32 fraction bits: 48 slots
NSLOT = FF + 48


def density_class(x, y):
    """Density class of `x` non-zero flags among `y` positions: round(DQ·x / y), i.e.
    floor((DQ·x + floor(y/2)) / y), and DQ / 2 when y = 0 (spec §5.8)."""
    x, y = np.asarray(x), np.asarray(y)
    return np.where(y > 0, (DQ * x + y // 2) // np.maximum(y, 1), DQ // 2)


def decisions_per_element(kind: int, w: int, signed: bool) -> int:
    """D: pass-2 decisions of one element (spec §5.8)."""
    return 9 + w if kind == AransKind.FLOAT32 else w


class _Run:
    """The decision sequence of a batch of sections (spec §5.8), driven by `decide(lanes, q, pass, where)`.

    The decoder's `decide` draws each decision from the rANS states; the encoder's reads it from the
    known elements.  Both see the same contexts and probabilities, so they stay in step.
    """

    def __init__(self, secs):
        self.secs = secs
        lanes = [(j, k) for j, s in enumerate(secs) for k in range(s.K)]
        self.K = K = len(lanes)
        self.sec_of = np.array([j for j, _ in lanes], np.int64)
        k_of = np.array([k for _, k in lanes], np.int64)
        get = lambda a: np.array([getattr(secs[j], a) for j in self.sec_of.tolist()], np.int64)  # noqa: E731
        S, n = get("S"), get("n")
        start = k_of * S
        self.len = np.clip(n - start, 0, S)
        ebase = np.cumsum([0] + [s.n for s in secs])
        self.E = int(ebase[-1])
        self.first = (np.array([ebase[j] for j in self.sec_of.tolist()], np.int64) + start) if K else np.zeros(0, np.int64)
        self.ebase = ebase
        self.R = get("R")
        self.flt = get("kind") == int(AransKind.FLOAT32)
        self.signed = get("signed")
        self.w = get("w")
        self.D = np.where(self.flt, 9 + self.w, self.w)
        self.start = start
        self.n0 = np.zeros(len(secs) * NSLOT, np.int64)
        self.n1 = np.zeros(len(secs) * NSLOT, np.int64)
        self.slotbase = self.sec_of * NSLOT

    def prob(self, sl):
        """P(decision = 0) in units of 2^-16 from the slot's counts."""
        n0, n1 = self.n0[sl], self.n1[sl]
        return np.clip(((2 * n0 + 1) << ARANS_P) // (2 * (n0 + n1) + 2), 1, _M - 1)

    def count(self, sl, b):
        one = b == 1
        np.add.at(self.n1, sl[one], 1)
        np.add.at(self.n0, sl[~one], 1)
        tot = self.n0[sl] + self.n1[sl]
        if int(tot.max()) > ARANS_LIMIT:
            big = np.unique(sl[tot > ARANS_LIMIT])
            self.n0[big] = (self.n0[big] + 1) >> 1
            self.n1[big] = (self.n1[big] + 1) >> 1

    def run(self, decide):
        """Both passes; returns (z flags per element, element values: INT codes / FLOAT32 words)."""
        K = self.K
        z = np.ones(self.E, np.int64)
        # ---- pass 1: zero flags of INT elements
        len1 = np.where(self.flt, 0, self.len)
        Rc = np.maximum(self.R, 1)
        colbase = np.concatenate([[0], np.cumsum(Rc)[:-1]]).astype(np.int64) if K else np.zeros(0, np.int64)
        colcnt = np.zeros(int(Rc.sum()) + 1, np.int64)
        rowcnt, nzl, nzl2 = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64)
        two = self.R > 0
        T1 = int(len1.max()) if K else 0
        act = None
        for t in range(T1):
            if act is None or t == nxt:
                act = np.flatnonzero(len1 > t)
                nxt = int(len1[act].min())
                R_a, two_a, cb_a, pos_a, sb_a = Rc[act], two[act], colbase[act], self.start[act], self.slotbase[act]
                f_a = self.first[act]
            col = np.where(two_a, (pos_a + t) % R_a, 0)
            ci = cb_a + col
            l1 = nzl[act]
            ctx = np.where(two_a, density_class(rowcnt[act], np.minimum(col, t))
                           + (DQ + 1) * density_class(colcnt[ci], t // R_a), l1 + 2 * nzl2[act])
            sl = sb_a + ctx
            q = self.prob(sl)
            b = decide(act, q, 1, f_a + t)
            self.count(sl, b)
            z[f_a + t] = b
            colcnt[ci] += b
            rowcnt[act] = np.where(col == R_a - 1, 0, rowcnt[act] + b)
            nzl2[act] = l1
            nzl[act] = b
        # ---- pass 2: values of the elements with z = 1 (every FLOAT32 element)
        nzpos = np.flatnonzero(z)
        nzb = np.searchsorted(nzpos, self.first)
        cnt = np.searchsorted(nzpos, self.first + self.len) - nzb
        len2 = cnt * self.D
        T2 = int(len2.max()) if K else 0
        val = np.zeros(self.E, np.int64)
        acc, sg, fr = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64)
        prev, psg = np.full(K, -2, np.int64), np.zeros(K, np.int64)  # a lane's last pass-2 element and its sign
        e0 = self.first - self.start  # the first element of each lane's section
        act = None
        for t in range(T2):
            if act is None or t == nxt:
                act = np.flatnonzero(len2 > t)
                nxt = int(len2[act].min())
                D_a, flt_a, sg_a, w_a, sb_a, nzb_a = (self.D[act], self.flt[act], self.signed[act], self.w[act],
                                                      self.slotbase[act], nzb[act])
                R_a, two_a, e0_a = Rc[act], two[act], e0[act]
                anyflt = bool(flt_a.any())
            d = t % D_a
            at = nzpos[nzb_a + t // D_a]
            ac = acc[act]
            j = d - sg_a
            sl = np.where(j < PB, (1 << np.maximum(j, 0)) | ac, (1 << PB) + j) + MG
            if (j < 0).any():  # sign: is the left neighbour (element i - 1, same lane and row) non-zero, its sign
                left = (prev[act] == at - 1) & ~(two_a & ((at - e0_a) % R_a == 0))
                sl = np.where(j < 0, SGN + left * (1 + psg[act]), sl)
            if anyflt:
                fsl = np.where(d < 8, FE + ((1 << np.minimum(d, 8)) | ac),
                               np.where(d == 8, FS, FF + d - 9 + 24 * (ac == 127)))
                sl = np.where(flt_a, fsl, sl)
            sl = sl + sb_a
            q = self.prob(sl)
            b = decide(act, q, 2, (at, d))
            self.count(sl, b)
            if anyflt:
                is_sign = np.where(flt_a, d == 8, j < 0)
                is_acc = np.where(flt_a, d < 8, j >= 0)
                fr[act] = np.where(flt_a & (d > 8), 2 * fr[act] + b, fr[act])
            else:
                is_sign, is_acc = j < 0, j >= 0
            sg[act] = np.where(is_sign, b, sg[act])
            acc[act] = np.where(is_acc, 2 * ac + b, ac)
            end = d == D_a - 1
            if end.any():
                ae = act[end]
                m, s_, f_ = acc[ae], sg[ae], fr[ae]
                fl = self.flt[ae]
                iv = np.where(s_ == 1, -(m + 1), m + 1)
                fw = (s_ << 31) | (m << 23) | (f_ << np.maximum(23 - self.w[ae], 0))
                val[at[end]] = np.where(fl, fw, iv)
                prev[ae] = at[end]
                psg[ae] = s_
                acc[ae] = 0
                sg[ae] = 0
                fr[ae] = 0
        return z[:self.E], val


# --------------------------------------------------------------------------- section header
# --------------------------------------------------------------------------- section header
class _Header:
    """One ARANS section's header, validated (spec §5.8)."""

    def __init__(self, stored, decoded_len: int):
        buf = bytes(stored)
        if len(buf) < 2:
            raise FormatError(f"arans: section of {len(buf)} bytes is shorter than its 2-byte header")
        mode, w = buf[0], buf[1]
        kind, signed = mode & 3, mode >> 2 & 1
        if mode >> 3 or kind not in (AransKind.INT, AransKind.FLOAT32) or (kind == AransKind.FLOAT32 and signed):
            raise FormatError(f"arans: unknown mode byte {mode}")
        if kind == AransKind.INT and not 1 <= w <= 16:
            raise FormatError(f"arans: code width {w} outside 1..16")
        if kind == AransKind.FLOAT32 and w > 23:
            raise FormatError(f"arans: {w} fraction bits, at most 23")
        pos = 2
        n, pos = _read_varint(buf, pos, "n")
        R, pos = _read_varint(buf, pos, "row length")
        K, pos = _read_varint(buf, pos, "lanes")
        need = 4 * n if kind == AransKind.FLOAT32 else packed_size(n, w)
        if need != decoded_len:
            raise FormatError(f"arans: {n} elements need {need} bytes, section declares {decoded_len}")
        if (K == 0) != (n == 0) or K > n:
            raise FormatError(f"arans: {K} lanes for {n} elements (need 1..n, or 0 for none)")
        if K and -(-n // K) > ARANS_MAX_LANE:
            raise FormatError(f"arans: {-(-n // K)} elements per lane exceed {ARANS_MAX_LANE}")
        if R and (R >= n or kind == AransKind.FLOAT32):
            raise FormatError(f"arans: row length {R} with {n} elements (need 0, or below n for INT)")
        if pos + RANS_STATE_BYTES * K > len(buf):
            raise FormatError(f"arans: {K} lane states run past the section end (truncated)")
        x = np.frombuffer(buf, "<u4", K, pos).astype(np.int64)
        if K and (int(x.min()) < RANS_L or int(x.max()) >= _HI):
            raise FormatError(f"arans: lane state out of range [{RANS_L}, {_HI})")
        pos += RANS_STATE_BYTES * K
        self.stream = np.frombuffer(buf, np.uint8, len(buf) - pos, pos)
        self.kind, self.signed, self.w, self.n, self.R, self.K, self.x0 = kind, signed, w, n, R, K, x
        self.S = -(-n // K) if K else 0


# --------------------------------------------------------------------------- encoder
class _Sec:
    def __init__(self, kind, w, signed, n, R, K):
        self.kind, self.w, self.signed, self.n, self.R, self.K = int(kind), w, int(signed), n, R, K
        self.S = -(-n // K) if K else 0


def fraction_bits(data) -> int:
    """Fewest top fraction bits that hold every float32 word of `data` (23 minus the common trailing zeros)."""
    u = np.frombuffer(bytes(data), "<u4") & np.uint32(0x7FFFFF)
    if not u.any():
        return 0
    low = int(np.bitwise_or.reduce(u))
    return 23 - ((low & -low).bit_length() - 1)


def _elements(data, kind: int, w: int, signed: bool):
    """(elements as int64: INT codes / FLOAT32 words, n)."""
    if kind == AransKind.FLOAT32:
        if len(data) % 4:
            raise EncodeError(f"arans: {len(data)} bytes are not float32 words")
        if not 0 <= w <= 23:
            raise EncodeError(f"arans: {w} fraction bits, at most 23")
        u = np.frombuffer(bytes(data), "<u4").astype(np.int64)
        if (u & ((1 << (23 - w)) - 1)).any():
            raise EncodeError(f"arans: fraction bits below the top {w} are not zero")
        return u, u.size
    if not 1 <= w <= 16:
        raise EncodeError(f"arans: code width {w} outside 1..16")
    n = len(data) * 8 // w
    while n and packed_size(n, w) > len(data):
        n -= 1
    if packed_size(n, w) != len(data):
        raise EncodeError(f"arans: {len(data)} bytes are not a packed stream of {w}-bit codes")
    try:
        v = unpack_codes(data, n, w, signed).astype(np.int64) if n else np.zeros(0, np.int64)
    except FormatError as e:
        raise EncodeError(f"arans: not a packed stream of {w}-bit codes: {e}") from None
    if pack_codes(v, w, signed) != bytes(data):
        raise EncodeError("arans: the stream's padding bits are not zero")
    return v, n


def lanes_for(n: int, decisions: int, steps: int) -> int:
    """K: lanes so that no lane makes many more than `steps` decisions (about decisions / steps)."""
    if not n:
        return 0
    return max(1, -(-n // ARANS_MAX_LANE), min(n, -(-decisions // max(1, steps))))


def _sections(items):
    """The sections of encode_many's items: ([_Sec], [elements, int64], [decisions per section])."""
    secs, vals, decs = [], [], []
    for data, kind, w, signed, row, steps, *lanes in items:
        v, n = _elements(data, kind, w, signed)
        sgn = bool(signed) and kind == AransKind.INT
        D = decisions_per_element(kind, w, sgn)
        dec = (n if kind == AransKind.INT else 0) + D * (int(np.count_nonzero(v)) if kind == AransKind.INT else n)
        K = lanes[0] if lanes else lanes_for(n, dec, steps)
        R = row if 0 < row < n and kind == AransKind.INT else 0
        secs.append(_Sec(kind, w, sgn, n, R, K))
        vals.append(v)
        decs.append(dec)
    return secs, vals, decs


def _forward_jit(jk, sec, v, dec):
    """The compiled model replay of one section: (q, b, lane per decision, step offsets) (entropy_jit)."""
    err, q, b, lane, steps = jk.arans_forward(sec.kind, sec.w, sec.signed, sec.n, sec.R, sec.K,
                                              np.ascontiguousarray(v, np.int64), dec)
    if err:
        raise EncodeError("arans: model replay differs from the input (internal error)")
    return q, b, lane, steps


_LOG2 = None


def _ideal_bits(q, b) -> float:
    """sum(ARANS_P - log2 p) over a section's decisions, added in decision order (as `_forward` adds them)."""
    global _LOG2
    if _LOG2 is None:
        _LOG2 = ARANS_P - np.log2(np.arange(1, _M, dtype=np.int64))
    if not q.size:
        return 0.0
    p = np.where(b == 1, _M - q.astype(np.int64), q.astype(np.int64))
    return float(np.cumsum(_LOG2[p - 1])[-1])


def _forward(items):
    """Replay the model over known elements: (sections, run, per-step (lanes, q, b), ideal bits per section)."""
    secs, vals, _ = _sections(items)
    run = _Run(secs)
    allv = np.concatenate(vals) if vals else np.zeros(0, np.int64)
    ecls = np.repeat(np.arange(len(secs)), [s.n for s in secs])
    flt_e = np.array([s.kind == AransKind.FLOAT32 for s in secs], bool)[ecls] if len(secs) else np.zeros(0, bool)
    w_e = np.array([s.w for s in secs], np.int64)[ecls] if len(secs) else np.zeros(0, np.int64)
    sg_e = np.array([s.signed for s in secs], np.int64)[ecls] if len(secs) else np.zeros(0, np.int64)
    mag = np.abs(allv) - 1
    ex = (allv >> 23) & 255
    fr = (allv & 0x7FFFFF) >> np.maximum(23 - w_e, 0)
    wm = w_e - sg_e  # INT magnitude bits
    log = []

    def decide(act, q, pas, where):
        if pas == 1:
            b = (allv[where] != 0).astype(np.int64)
        else:
            at, d = where
            fl = flt_e[at]
            j = d - sg_e[at]
            ib = np.where(j < 0, (allv[at] < 0).astype(np.int64), (mag[at] >> np.maximum(wm[at] - 1 - j, 0)) & 1)
            fb = np.where(d < 8, (ex[at] >> np.maximum(7 - d, 0)) & 1,
                          np.where(d == 8, (allv[at] >> 31) & 1, (fr[at] >> np.maximum(w_e[at] - 1 - (d - 9), 0)) & 1))
            b = np.where(fl, fb, ib)
        log.append((act, q, b))
        return b
    z, val = run.run(decide)
    if not np.array_equal(np.where(flt_e, val, val * z), allv):
        raise EncodeError("arans: model replay differs from the input (internal error)")
    bits = np.zeros(len(secs))
    for act, q, b in log:
        p = np.where(b == 1, _M - q, q)
        np.add.at(bits, run.sec_of[act], ARANS_P - np.log2(p))
    return secs, run, log, bits


def model_bits(items) -> list:
    """Ideal code length in bits of each section under its adaptive model (sum of -log2 p), a reference figure.

    items: [(data, kind, w, signed, row, steps[, K])] as for encode_many; K fixes the lane count."""
    def jit_bits(jk):
        secs, vals, decs = _sections(items)
        return [_ideal_bits(*_forward_jit(jk, s, v, d)[:2]) for s, v, d in zip(secs, vals, decs)]
    return compiled(jit_bits, lambda: _forward(items)[3].tolist())


def encode_many(items) -> list:
    """[(data, kind, w, signed, row, steps)] -> [stored bytes], the sections coded together (spec §5.8).

    kind INT: `data` holds §5.1 `w`-bit codes (`signed`: two's complement), `row` the row length of the
    zero-flag context (0: 1-D); FLOAT32: float32 words whose fraction bits below the top `w` are zero.
    `steps`: lanes are chosen so that a lane makes about this many decisions.  Raises EncodeError."""
    def jit_encode(jk):
        secs, vals, decs = _sections(items)

        def one(i):
            x, stream = jk.arans_reverse(secs[i].K, *_forward_jit(jk, secs[i], vals[i], decs[i]))
            return _header_bytes(secs[i]) + x.astype("<u4").tobytes() + stream.tobytes()
        return map_sections(one, list(range(len(secs))), [s.n for s in secs])
    done = compiled(jit_encode, lambda: None)
    if done is not None:
        return done
    secs, run, log, _ = _forward(items)
    x = np.full(run.K, RANS_L, np.uint64)
    steps_sid, steps_byt = [], []
    unit = np.uint64((RANS_L >> ARANS_P) << 8)
    for act, q, b in reversed(log):
        f = np.where(b == 1, _M - q, q).astype(np.uint64)
        cs = np.where(b == 1, q, 0).astype(np.uint64)
        xa = x[act]
        xmax = f * unit
        emitted = []
        while True:
            mk = xa >= xmax
            if not mk.any():
                break
            e = np.full(act.size, -1, np.int16)
            e[mk] = (xa[mk] & np.uint64(255)).astype(np.int16)
            emitted.append(e)
            xa[mk] >>= np.uint64(8)
        if emitted:
            em = np.stack(emitted)
            cnt = (em >= 0).sum(axis=0)
            so = run.sec_of[act]
            sid, byt = [], []
            for r in range(1, em.shape[0] + 1):
                ls = np.flatnonzero(cnt >= r)
                sid.append(so[ls])
                byt.append(em[cnt[ls] - r, ls].astype(np.uint8))
            steps_sid.append(np.concatenate(sid))
            steps_byt.append(np.concatenate(byt))
        x[act] = (xa // f << np.uint64(ARANS_P)) + xa % f + cs
    sid = np.concatenate(steps_sid[::-1]) if steps_sid else np.zeros(0, np.int64)
    byt = np.concatenate(steps_byt[::-1]) if steps_byt else np.zeros(0, np.uint8)
    order = np.argsort(sid, kind="stable")
    bounds = np.searchsorted(sid[order], np.arange(len(secs) + 1))
    byt = byt[order]
    out = []
    l0 = 0
    for j, s in enumerate(secs):
        out.append(_header_bytes(s) + x[l0:l0 + s.K].astype("<u4").tobytes() + byt[bounds[j]:bounds[j + 1]].tobytes())
        l0 += s.K
    return out


def _header_bytes(s: _Sec) -> bytes:
    return bytes([s.kind | (s.signed << 2), s.w]) + _varint(s.n) + _varint(s.R) + _varint(s.K)


def encode(data, kind: int, w: int, signed: bool = False, row: int = 0, steps: int = 16384) -> bytes:
    """One section's ARANS bytes (spec §5.8); see encode_many."""
    return encode_many([(data, kind, w, signed, row, steps)])[0]


# --------------------------------------------------------------------------- decoder
def decode(stored, decoded_len: int) -> bytes:
    """The decoded bytes an ARANS section holds (spec §5.8); FormatError on any inconsistency."""
    return decode_many([(stored, decoded_len)])[0]


def decode_many(items) -> list:
    """Decode several ARANS sections together: [(stored, decoded_len)] -> [decoded bytes].

    All lanes of all sections advance one decision per step.  Raises FormatError, naming the
    section's index in `items` when there are several."""
    many = len(items) > 1
    where = lambda j: f" (section {j})" if many else ""  # noqa: E731
    secs = []
    for j, (stored, dlen) in enumerate(items):
        try:
            secs.append(_Header(stored, dlen))
        except FormatError as e:
            raise FormatError(str(e) + where(j)) from None  # the message of _Header's raise site, located
    done = compiled(lambda jk: _finish(secs, *_decode_jit(jk, secs, where), where), lambda: None)
    if done is not None:
        return done
    # numpy steps: pass 1 (INT zero flags) + pass 2 (D decisions per non-zero element), at most
    note_numpy(max((-(-s.n // max(s.K, 1)) * (s.w + (9 if s.kind == AransKind.FLOAT32 else 1)) for s in secs),
                   default=0), len(secs))
    run = _Run(secs)
    x = np.concatenate([s.x0 for s in secs]) if secs else np.zeros(0, np.int64)
    sbase = np.cumsum([0] + [s.stream.size for s in secs])
    stream = np.concatenate([s.stream for s in secs]).astype(np.int64) if secs else np.zeros(0, np.int64)
    slen = np.array([s.stream.size for s in secs], np.int64)
    ptr = np.zeros(len(secs), np.int64)
    sec_of, P, mask, Lv = run.sec_of, np.int64(ARANS_P), np.int64(_M - 1), np.int64(RANS_L)

    def decide(act, q, pas, at):
        xa = x[act]
        slot = xa & mask
        b = (slot >= q).astype(np.int64)
        xa = np.where(b == 1, _M - q, q) * (xa >> P) + slot - q * b
        need = xa < Lv
        if need.any():
            s_a = sec_of[act]
            while need.any():
                idx = np.flatnonzero(need)
                sj = s_a[idx]
                first = np.r_[True, sj[1:] != sj[:-1]]
                starts = np.flatnonzero(first)
                rank = np.arange(idx.size) - starts[np.cumsum(first) - 1]
                pos = ptr[sj] + rank
                over = pos >= slen[sj]
                if over.any():
                    j = int(sj[np.flatnonzero(over)[0]])
                    raise FormatError(f"arans: byte stream of {slen[j]} bytes ends early (truncated lane data){where(j)}")
                xa[idx] = (xa[idx] << 8) | stream[sbase[sj] + pos]
                ptr[sj[starts]] += np.diff(np.r_[starts, idx.size])
                need = xa < Lv
        x[act] = xa
        return b
    z, val = run.run(decide)
    outs, l0 = [], 0
    for j, s in enumerate(secs):
        e0, e1 = run.ebase[j], run.ebase[j + 1]
        outs.append((z[e0:e1], val[e0:e1], int(ptr[j]), x[l0:l0 + s.K]))
        l0 += s.K
    return _finish(secs, outs, where)


def _decode_jit(jk, secs, where):
    """The compiled decoder (entropy_jit), one section at a time: ([(z, val, bytes read, final states)],).

    Raises the FormatError the numpy reference raises first: the byte stream ends early in the section whose
    lanes run out first in the reference's order (pass, step, round, section)."""
    def one(s):
        z, val, info = np.zeros(s.n, np.int64), np.zeros(s.n, np.int64), np.zeros(3, np.int64)
        x = s.x0.copy()
        err, ptr = jk.arans_decode(s.kind, s.w, s.signed, s.n, s.R, s.K, x, s.stream.copy(), z, val, info)
        return (z, val, int(ptr), x), (int(info[0]), int(info[1]), int(info[2])) if err else None
    outs, early = [], None
    for j, (out, err) in enumerate(map_sections(one, secs, [s.n for s in secs])):
        if err is not None and (early is None or err + (j,) < early):
            early = err + (j,)
        outs.append(out)
    if early is not None:
        j = early[3]
        raise FormatError(f"arans: byte stream of {secs[j].stream.size} bytes ends early (truncated lane data){where(j)}")
    return (outs,)


def _finish(secs, outs, where) -> list:
    """Per section (z flags, values, stream bytes read, final lane states) -> decoded bytes, after the checks of
    spec §5.8 in section order (the stream read to its end, final states L, codes within their width)."""
    res = []
    for j, (s, (z, v, ptr, x)) in enumerate(zip(secs, outs)):
        if ptr != s.stream.size:
            raise FormatError(f"arans: {int(s.stream.size - ptr)} bytes of the lane stream left unread{where(j)}")
        if s.K and (x != RANS_L).any():
            raise FormatError(f"arans: final lane states differ from {RANS_L}: the stream is corrupt{where(j)}")
        if s.kind == AransKind.FLOAT32:
            res.append(v.astype("<u4").tobytes())
            continue
        v = v * z
        lo, hi = (-(1 << (s.w - 1)), (1 << (s.w - 1)) - 1) if s.signed else (0, (1 << s.w) - 1)
        if s.n and (int(v.min()) < lo or int(v.max()) > hi):
            raise FormatError(f"arans: decoded codes outside the {s.w}-bit {'signed' if s.signed else 'unsigned'} range{where(j)}")
        res.append(pack_codes(v, s.w, bool(s.signed)))
    return res


__all__ = ["encode", "encode_many", "decode", "decode_many", "model_bits", "fraction_bits", "lanes_for",
           "decisions_per_element"]
