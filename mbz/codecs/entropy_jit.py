"""Compiled (numba) lane loops of the RANS (spec §5.7) and ARANS (spec §5.8) entropy stages.

Optional: this module imports numba at its top, and only `mbz.codecs.jit.kernels()` imports it (lazily), so
mbz never needs numba.  Each kernel runs one section on one thread (numba ``nogil``), scalar, in the exact
order of the numpy reference in `rans.py` / `arans.py`: step by step, every active lane in lane order; in
ARANS, all lanes of a step take their probabilities before the step's counts are added, then the slots whose
total exceeds ARANS_LIMIT are halved once; a step's renormalization reads the shared byte stream round by
round (every lane needing a byte takes one, in lane order, then those still needing take another).  The
outputs are bit-identical to the reference's, on valid and on malformed input.

Kernels never raise: they return an error code, with the place of the error in `info`, and the Python
callers raise the reference's FormatError.  Error codes: ERR_OK; ERR_TRUNCATED (the byte stream ends early;
info = [pass (ARANS: 1 / 2; RANS: 0), step, round]); ERR_REPLAY (an encoder's model replay differs from its
input: internal).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..spec import ARANS_LIMIT, ARANS_P, RANS_L, AransKind

ERR_OK, ERR_TRUNCATED, ERR_REPLAY = 0, 1, 2

_M = 1 << ARANS_P
_MASK = _M - 1
_LIMIT = ARANS_LIMIT
_L = RANS_L
# context slots of an ARANS section (spec table 17): arans.py's constants (tests/test_entropy_jit.py checks)
PB = 4
DQ = 8
ZF = 0
SGN = ZF + (DQ + 1) ** 2
MG = SGN + 3
FE = MG + (1 << PB) + 16
FS = FE + 256
FF = FS + 1
NSLOT = FF + 48
FLOAT32 = int(AransKind.FLOAT32)


@njit(cache=True, nogil=True, error_model="numpy")
def _dc(x, y):
    """density_class(x, y) of arans.py, for scalars."""
    if y > 0:
        return (DQ * x + (y >> 1)) // y
    return DQ // 2


@njit(cache=True, nogil=True, error_model="numpy")
def _prob(n0, n1):
    """P(decision = 0) in units of 2^-16 from a slot's counts (arans._Run.prob)."""
    num = (2 * n0 + 1) << ARANS_P
    den = 2 * (n0 + n1) + 2
    if num < 4294967296 and den < 4294967296:
        q = np.int64(np.uint32(num) // np.uint32(den))
    else:
        q = num // den
    if q < 1:
        return 1
    if q > _M - 1:
        return _M - 1
    return q


@njit(cache=True, nogil=True, error_model="numpy")
def _settle(uniq, nu, cnt, qt):
    """After a step's count updates, for each slot the step touched (once each): halved if its total exceeds
    the limit, its probability qt recomputed."""
    for i in range(nu):
        s = uniq[i]
        n0 = cnt[2 * s]
        n1 = cnt[2 * s + 1]
        if n0 + n1 > _LIMIT:
            n0 = (n0 + 1) >> 1
            n1 = (n1 + 1) >> 1
            cnt[2 * s] = n0
            cnt[2 * s + 1] = n1
        qt[s] = _prob(n0, n1)


@njit(cache=True, nogil=True, error_model="numpy")
def _renorm(act, na, x, stream, ptr, r):
    """Round-robin renormalization of a step's lanes, rounds after `r`; returns (new ptr, round that ran out of
    bytes or 0)."""
    slen = stream.shape[0]
    while True:
        r += 1
        took = False
        for i in range(na):
            k = act[i]
            if x[k] < _L:
                if ptr >= slen:
                    return ptr, r
                x[k] = (x[k] << 8) | np.int64(stream[ptr])
                ptr += 1
                took = True
        if not took:
            return ptr, 0


@njit(cache=True, nogil=True, error_model="numpy")
def _truncated(info, p, t, r):
    """ERR_TRUNCATED, with its place in info: pass p (ARANS 1 / 2, RANS 0), step t, renormalization round r."""
    info[0] = p
    info[1] = t
    info[2] = r
    return ERR_TRUNCATED


@njit(cache=True, nogil=True, error_model="numpy")
def _lane_lengths(n, K):
    S = -(-n // K) if K else 0
    lens = np.empty(K, np.int64)
    for k in range(K):
        v = n - k * S
        lens[k] = 0 if v < 0 else (S if v > S else v)
    return S, lens


@njit(cache=True, nogil=True, error_model="numpy")
def _arans_run(kind, w, signed, n, R, K, x, stream, vin, encode, z, val, qlog, blog, llog, steps, info):
    """Both passes of one ARANS section (spec §5.8).

    Decoder (encode = False): decisions drawn from the lane states `x` (int64[K], changed in place) and
    `stream` (uint8); fills z (zero flags, int64[n]) and val (INT codes / FLOAT32 words, int64[n]).
    Encoder (encode = True): decisions read from the known elements `vin`; each decision's probability,
    bit and lane logged in qlog / blog / llog, the log offset of each step in `steps`.
    Returns (error code, stream bytes read, decisions logged, steps logged)."""
    flt = kind == FLOAT32
    D = 9 + w if flt else w
    S, lens = _lane_lengths(n, K)
    cnt = np.zeros(2 * NSLOT, np.int64)  # slot s: cnt[2s] zeros seen, cnt[2s + 1] ones
    qt = np.full(NSLOT, _M // 2, np.int64)  # each slot's current probability of a zero
    stamp = np.full(NSLOT, -1, np.int64)  # the last step that touched each slot
    uniq = np.zeros(NSLOT, np.int64)  # the slots a step touched, once each
    sl = np.zeros(K, np.int64)
    b = np.zeros(K, np.int64)
    act = np.arange(K)
    ptr = 0
    slen = stream.shape[0]
    step = 0
    nlog = 0
    two = R > 0
    Rc = (R if R > 0 else 1) + 9  # a lane's row of column counts; + 9: rows not a power of two apart (cache sets)
    # ---- pass 1: zero flags of INT elements
    if not flt and K:
        colcnt = np.zeros(K * Rc, np.int32)
        rowcnt = np.zeros(K, np.int64)
        nzl = np.zeros(K, np.int64)
        nzl2 = np.zeros(K, np.int64)
        col = np.zeros(K, np.int64)  # the column of each lane's next element
        if two:
            for k in range(K):
                col[k] = (k * S) % R
        na = K
        tq = 0  # t // R
        tm = 0  # t % R
        for t in range(lens[0]):
            while na > 0 and lens[na - 1] <= t:  # lanes are non-increasing in length
                na -= 1
            if encode:
                steps[step] = nlog
            more = False
            for k in range(na):
                if two:
                    c = col[k]
                    s = _dc(rowcnt[k], min(c, t)) + (DQ + 1) * _dc(colcnt[k * Rc + c], tq)
                else:
                    s = nzl[k] + 2 * nzl2[k]
                sl[k] = s
                q = qt[s]
                if encode:
                    bk = np.int64(vin[k * S + t] != 0)
                    qlog[nlog] = q
                    blog[nlog] = bk
                    llog[nlog] = k
                    nlog += 1
                else:
                    xk = x[k]
                    slot = xk & _MASK
                    bk = np.int64(slot >= q)
                    xk = (q + bk * (_M - 2 * q)) * (xk >> ARANS_P) + slot - bk * q
                    if xk < _L:  # renormalization, round 1: lanes in lane order
                        if ptr >= slen:
                            return _truncated(info, 1, t, 1), ptr, nlog, step
                        xk = (xk << 8) | np.int64(stream[ptr])
                        ptr += 1
                        more |= xk < _L
                    x[k] = xk
                b[k] = bk
            if more:
                ptr, r = _renorm(act, na, x, stream, ptr, 1)
                if r:
                    return _truncated(info, 1, t, r), ptr, nlog, step
            nu = 0
            for k in range(na):
                bk = b[k]
                s = sl[k]
                cnt[2 * s + bk] += 1
                if stamp[s] != step:
                    stamp[s] = step
                    uniq[nu] = s
                    nu += 1
                z[k * S + t] = bk
                if two:
                    c = col[k]
                    colcnt[k * Rc + c] += bk
                    if c == R - 1:
                        rowcnt[k] = 0
                        col[k] = 0
                    else:
                        rowcnt[k] += bk
                        col[k] = c + 1
                nzl2[k] = nzl[k]
                nzl[k] = bk
            _settle(uniq, nu, cnt, qt)
            step += 1
            if two:
                tm += 1
                if tm == R:
                    tm = 0
                    tq += 1
    else:
        for e in range(n):
            z[e] = 1
    # ---- pass 2: values of the elements with z = 1 (every FLOAT32 element)
    nzpos = np.zeros(n, np.int64)
    nnz = 0
    for e in range(n):
        if z[e]:
            nzpos[nnz] = e
            nnz += 1
    nzb = np.zeros(K, np.int64)
    len2 = np.zeros(K, np.int64)
    j0 = 0
    for k in range(K):
        while j0 < nnz and nzpos[j0] < k * S:
            j0 += 1
        j1 = j0
        while j1 < nnz and nzpos[j1] < k * S + lens[k]:
            j1 += 1
        nzb[k] = j0
        len2[k] = (j1 - j0) * D
    acc = np.zeros(K, np.int64)
    sg = np.zeros(K, np.int64)
    fr = np.zeros(K, np.int64)
    prev = np.full(K, -2, np.int64)
    psg = np.zeros(K, np.int64)
    atk = np.zeros(K, np.int64)
    T2 = 0
    na = 0
    for k in range(K):
        if len2[k] > 0:
            act[na] = k
            na += 1
        if len2[k] > T2:
            T2 = len2[k]
    nxt = 0
    d = 0
    tD = 0
    for t in range(T2):
        if t == nxt:
            m = 0
            nxt = T2
            for i in range(na):
                k = act[i]
                if len2[k] > t:
                    act[m] = k
                    m += 1
                    if len2[k] < nxt:
                        nxt = len2[k]
            na = m
        if encode:
            steps[step] = nlog
        j = d - signed
        more = False
        for i in range(na):
            k = act[i]
            at = nzpos[nzb[k] + tD]
            atk[k] = at
            ac = acc[k]
            if flt:
                if d < 8:
                    s = FE + ((1 << d) | ac)
                elif d == 8:
                    s = FS
                else:
                    s = FF + d - 9 + (24 if ac == 127 else 0)
            elif j < 0:
                left = prev[k] == at - 1 and not (two and at % R == 0)
                s = SGN + (1 + psg[k] if left else 0)
            elif j < PB:
                s = MG + ((1 << j) | ac)
            else:
                s = MG + (1 << PB) + j
            sl[k] = s
            q = qt[s]
            if encode:
                v = vin[at]
                if flt:
                    if d < 8:
                        bk = ((v >> 23) & 255) >> (7 - d) & 1
                    elif d == 8:
                        bk = (v >> 31) & 1
                    else:
                        bk = ((v & 0x7FFFFF) >> (23 - w)) >> (w - 1 - (d - 9)) & 1
                elif j < 0:
                    bk = np.int64(v < 0)
                else:
                    bk = ((abs(v) - 1) >> (w - signed - 1 - j)) & 1
                qlog[nlog] = q
                blog[nlog] = bk
                llog[nlog] = k
                nlog += 1
            else:  # pass 1's decision step, written out again: as a helper (even inline="always") it halved the speed
                xk = x[k]
                slot = xk & _MASK
                bk = np.int64(slot >= q)
                xk = (q + bk * (_M - 2 * q)) * (xk >> ARANS_P) + slot - bk * q
                if xk < _L:  # renormalization, round 1: lanes in lane order
                    if ptr >= slen:
                        return _truncated(info, 2, t, 1), ptr, nlog, step
                    xk = (xk << 8) | np.int64(stream[ptr])
                    ptr += 1
                    more |= xk < _L
                x[k] = xk
            b[k] = bk
        if more:
            ptr, r = _renorm(act, na, x, stream, ptr, 1)
            if r:
                return _truncated(info, 2, t, r), ptr, nlog, step
        last = d == D - 1
        nu = 0
        for i in range(na):
            k = act[i]
            bk = b[k]
            s = sl[k]
            cnt[2 * s + bk] += 1
            if stamp[s] != step:
                stamp[s] = step
                uniq[nu] = s
                nu += 1
            if flt:
                if d > 8:
                    fr[k] = 2 * fr[k] + bk
                elif d == 8:
                    sg[k] = bk
                else:
                    acc[k] = 2 * acc[k] + bk
            elif j < 0:
                sg[k] = bk
            else:
                acc[k] = 2 * acc[k] + bk
            if last:
                at = atk[k]
                m_, s_ = acc[k], sg[k]
                if flt:
                    val[at] = (s_ << 31) | (m_ << 23) | (fr[k] << (23 - w))
                else:
                    val[at] = -(m_ + 1) if s_ == 1 else m_ + 1
                prev[k] = at
                psg[k] = s_
                acc[k] = 0
                sg[k] = 0
                fr[k] = 0
        _settle(uniq, nu, cnt, qt)
        step += 1
        d += 1
        if d == D:
            d = 0
            tD += 1
    if encode:
        steps[step] = nlog
        for e in range(n):
            if (val[e] if flt else val[e] * z[e]) != vin[e]:
                return ERR_REPLAY, ptr, nlog, step
    return ERR_OK, ptr, nlog, step


@njit(cache=True, nogil=True, error_model="numpy")
def arans_decode(kind, w, signed, n, R, K, x, stream, z, val, info):
    """Decode one ARANS section: fills z and val, advances x; returns (error code, stream bytes read)."""
    dummy = np.zeros(1, np.int64)
    err, ptr, _, _ = _arans_run(kind, w, signed, n, R, K, x, stream, dummy, False, z, val,
                                np.zeros(1, np.uint16), np.zeros(1, np.uint8), np.zeros(1, np.int32), dummy, info)
    return err, ptr


@njit(cache=True, nogil=True, error_model="numpy")
def arans_forward(kind, w, signed, n, R, K, vin, ndec):
    """Replay the model of one ARANS section over its known elements `vin` (int64[n]; `ndec` decisions).

    Returns (error code, q (uint16[ndec], P(0) in units of 2^-16), b (uint8[ndec]), lane (int32[ndec]),
    step offsets (int64[steps + 1]))."""
    flt = kind == FLOAT32
    D = 9 + w if flt else w
    S = -(-n // K) if K else 0
    qlog = np.zeros(ndec, np.uint16)
    blog = np.zeros(ndec, np.uint8)
    llog = np.zeros(ndec, np.int32)
    steps = np.zeros(S * (D + 1) + 2, np.int64)
    z = np.zeros(n, np.int64)
    val = np.zeros(n, np.int64)
    info = np.zeros(3, np.int64)
    x = np.zeros(1, np.int64)
    err, _, nlog, nsteps = _arans_run(kind, w, signed, n, R, K, x, np.zeros(0, np.uint8), vin, True, z, val,
                                      qlog, blog, llog, steps, info)
    if nlog != ndec:
        err = ERR_REPLAY
    return err, qlog, blog, llog, steps[:nsteps + 1]


@njit(cache=True, nogil=True, error_model="numpy")
def arans_reverse(K, qlog, blog, llog, steps):
    """Reverse rANS over a section's logged decisions: (final states int64[K], byte stream uint8)."""
    x = np.full(K, _L, np.int64)
    nd = qlog.shape[0]
    buf = np.zeros(2 * nd + 2, np.uint8)
    end = buf.shape[0]
    e0 = np.zeros(K, np.int64)
    e1 = np.zeros(K, np.int64)
    cnt = np.zeros(K, np.int64)
    unit = (_L >> ARANS_P) << 8
    for st in range(steps.shape[0] - 2, -1, -1):
        a, bnd = steps[st], steps[st + 1]
        tot = 0
        for i in range(a, bnd):
            k = llog[i]
            q = np.int64(qlog[i])
            if blog[i]:
                f = _M - q
                cs = q
            else:
                f = q
                cs = 0
            xa = x[k]
            xmax = f * unit
            c = 0
            while xa >= xmax:
                if c == 0:
                    e0[k] = xa & 255
                else:
                    e1[k] = xa & 255
                c += 1
                xa >>= 8
            cnt[k] = c
            tot += c
            x[k] = (xa // f << ARANS_P) + xa % f + cs
        # the decoder reads, round 1, the last byte each lane emitted, in lane order; round 2 the one before
        end -= tot
        p = end
        for r in (1, 2):
            for i in range(a, bnd):
                k = llog[i]
                if cnt[k] >= r:
                    buf[p] = e1[k] if cnt[k] - r == 1 else e0[k]
                    p += 1
    return x, buf[end:].copy()


@njit(cache=True, nogil=True, error_model="numpy")
def rans_decode(n, K, R, tl, tu, P, sym_of, f_of, bias_of, lut, x, stream, out, info):
    """The lane loop of one RANS section (spec §5.7): fills out (symbols, int32[n]), advances x.

    sym_of / f_of / bias_of: per (context, slot) as `rans._Section.lookup`; lut: class of each symbol
    (the absent-table symbol A last).  Returns (error code, stream bytes read).

    The three per-slot values are merged into one int64 entry (symbol | f << 20 | bias << 40; f, bias <=
    2^12, symbol < 2^17), the neighbours' classes pre-clipped and pre-scaled to their context offsets, and
    each lane's column (e % R) carried from step to step: one table load and no division per symbol."""
    S, lens = _lane_lengths(n, K)
    M = np.int64(1) << P
    mask = M - 1
    tab = np.empty(sym_of.shape[0], np.int64)
    for j in range(sym_of.shape[0]):
        tab[j] = sym_of[j] | (f_of[j] << 20) | (bias_of[j] << 40)
    nl = lut.shape[0]
    cl = np.empty(nl, np.int64)  # left neighbour's class, clipped to tl - 1, times M
    cu = np.empty(nl, np.int64)  # upper neighbour's class, clipped to tu - 1, times tl * M
    for j in range(nl):
        cl[j] = min(lut[j], tl - 1) * M
        cu[j] = min(lut[j], tu - 1) * tl * M if tu > 1 else 0
    act = np.arange(K)
    lastc = np.zeros(K, np.int64)  # the left context offset of each lane's next symbol
    col = np.zeros(K, np.int64)  # each lane's next element's column, e % R
    if R > 0:
        for k in range(K):
            col[k] = (k * S) % R
    ptr = 0
    slen = stream.shape[0]
    na = K
    up = tu > 1
    for t in range(S):
        while na > 0 and lens[na - 1] <= t:  # lanes are non-increasing in length: the active ones come first
            na -= 1
        more = False
        above = up and t >= R
        e = t
        for k in range(na):
            ctx = lastc[k]
            if R > 0:
                if col[k] == 0:
                    ctx = 0
                c = col[k] + 1
                col[k] = 0 if c == R else c
            elif t == 0:
                ctx = 0
            if above:
                ctx += cu[out[e - R]]
            xk = x[k]
            v = tab[(xk & mask) + ctx]
            s = v & 0xFFFFF
            xk = ((v >> 20) & 0xFFFFF) * (xk >> P) + (v >> 40)
            if xk < _L:  # renormalization, round 1: lanes in lane order
                if ptr >= slen:
                    return _truncated(info, 0, t, 1), ptr
                xk = (xk << 8) | np.int64(stream[ptr])
                ptr += 1
                more |= xk < _L
            x[k] = xk
            out[e] = s
            lastc[k] = cl[s]
            e += S
        if not more:
            continue
        ptr, r = _renorm(act, na, x, stream, ptr, 1)
        if r:
            return _truncated(info, 0, t, r), ptr
    return ERR_OK, ptr


@njit(cache=True, nogil=True, error_model="numpy")
def rans_encode(n, K, P, sym, ctx, freq, cum):
    """Reverse rANS of one RANS section (spec §5.7): (final states int64[K], byte stream uint8)."""
    S, lens = _lane_lengths(n, K)
    x = np.full(K, _L, np.int64)
    buf = np.zeros(2 * n + 2, np.uint8)
    end = buf.shape[0]
    e0 = np.zeros(K, np.int64)
    e1 = np.zeros(K, np.int64)
    cnt = np.zeros(K, np.int64)
    unit = (_L >> P) << 8
    for t in range(S - 1, -1, -1):
        na = 0
        tot = 0
        for k in range(K):
            if lens[k] <= t:
                break
            na += 1
            e = k * S + t
            f = freq[ctx[e], sym[e]]
            cs = cum[ctx[e], sym[e]]
            xa = x[k]
            xmax = f * unit
            c = 0
            while xa >= xmax:
                if c == 0:
                    e0[k] = xa & 255
                else:
                    e1[k] = xa & 255
                c += 1
                xa >>= 8
            cnt[k] = c
            tot += c
            x[k] = (xa // f << P) + xa % f + cs
        end -= tot
        p = end
        for r in (1, 2):
            for k in range(na):
                if cnt[k] >= r:
                    buf[p] = e1[k] if cnt[k] - r == 1 else e0[k]
                    p += 1
    return x, buf[end:].copy()
