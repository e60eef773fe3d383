"""Lossless grid detection: is a float tensor exactly float32(k) * scale?

Checkpoints quantized elsewhere arrive as plain floats (``q.float() * s`` or
``fake_quantize_per_{tensor,channel}_affine``, whose output is
``(q - zp) * s`` = an integer multiple of s).  For every row (one channel, or
the whole tensor) we guess the integer magnitude K of the largest element
from a few cheap hypotheses, derive s = |v_max| / K and its neighbouring
fp32 values, and keep the first s for which float32(rint(v / s)) * s
reproduces every element.  Guesses are screened on a sample of each row and
then checked on the whole row; the encoder decodes the result once more and
compares bits before anything is written.
"""
from __future__ import annotations

import numpy as np
import torch

from .codecs.affine import Grid
from .spec import Granularity

MAX_K = 32767  # codes beyond 16 bits are not worth a grid
_SAMPLE = 64
_PROBE_COLS = 256  # the columns a pruned row's five largest magnitudes are looked for in (screen)
_SCREEN_BATCH = 4  # guesses screened together; later batches only while rows are left open
# symmetric quantizers put the largest element at +-qmax
_QMAX = sorted({(1 << (b - 1)) - 1 for b in range(2, 17)} | {1 << (b - 1) for b in range(1, 17)}
               | {(1 << b) - 1 for b in range(1, 16)})


def _exact(rows: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, ok-per-row) for candidate scales s (one per row)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = np.rint(rows / s[:, None])
        ok_k = np.abs(k) <= MAX_K
        k = np.where(ok_k, k, 0)
        back = k.astype(np.float32) * s[:, None]
    ok = (back == rows) & ok_k
    return k, ok.all(axis=1)


def _solve_rows(v: np.ndarray):
    """Per-row scales for a (rows, m) float32 matrix; None if some row has no grid."""
    r, m = v.shape
    a = np.abs(v)
    amax = a.max(axis=1)
    nz = np.where(a > 0, a, np.inf)
    amin = nz.min(axis=1)
    allzero = ~np.isfinite(amin)
    scales = np.ones(r, np.float32)
    kmat = np.zeros(v.shape, np.int64)          # rows verified in full keep their k here
    done = allzero.copy()
    imax = a.argmax(axis=1)
    # sample columns: the first few plus each row's largest element
    cols = np.arange(min(m, _SAMPLE))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        guesses = [np.rint(amax / (amin / d)) for d in range(1, 17)]
        guesses += [np.full(r, float(q)) for q in _QMAX]
    # (rows, <= 5): the first four elements and the largest one of each row; in rows with zeros
    # (pruned), the five largest magnitudes instead: zeros fit every scale and screen nothing out
    probe_all = np.concatenate([v[:, :4], v[np.arange(r), imax][:, None]], axis=1)
    if m > 5:
        pruned = (probe_all == 0).any(axis=1)
        if pruned.any():  # among the first _PROBE_COLS columns (any elements screen soundly, a few suffice)
            w = min(m, _PROBE_COLS)
            top = np.argpartition(a[pruned, :w], w - 5, axis=1)[:, w - 5:]
            probe_all[pruned] = np.take_along_axis(v[pruned, :w], top, axis=1)

    def screen(kk_list) -> np.ndarray:
        """(len(kk_list), rows): which rows some candidate scale of each guess fits on a few elements.

        attempt() finds nothing for a row that fails here, so guesses no open row passes are skipped."""
        kk = np.stack(kk_list)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            valid = (kk >= 1) & (kk <= MAX_K) & np.isfinite(kk)
            base = (amax[None] / np.where(valid, kk, 1).astype(np.float32)).astype(np.float32)
            up = down = base
            ok = np.zeros(kk.shape, bool)
            for i in range(4):
                for c in ((base,) if i == 0 else (up, down)):
                    k2 = np.rint(probe_all[None] / c[..., None])
                    ok_k2 = np.abs(k2) <= MAX_K
                    ok |= ((np.where(ok_k2, k2, 0).astype(np.float32) * c[..., None] == probe_all[None])
                           & ok_k2).all(axis=2)
                up = np.nextafter(up, np.float32(np.inf)).astype(np.float32)
                down = np.nextafter(down, np.float32(-np.inf)).astype(np.float32)
        return ok & valid

    def attempt(kk_all):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            return
        kk = kk_all[todo]
        valid = (kk >= 1) & (kk <= MAX_K) & np.isfinite(kk)
        if not valid.any():
            return
        todo, kk = todo[valid], kk[valid]
        base = (amax[todo] / kk.astype(np.float32)).astype(np.float32)
        sub = np.concatenate([v[todo][:, cols], v[todo, imax[todo]][:, None]], axis=1)
        found = np.zeros(todo.size, bool)
        pick = base.copy()
        # the candidates base, next fp32 up, down, 2 up, ... (in this order of preference)
        up, down = [base], [base]
        for _ in range(3):
            up.append(np.nextafter(up[-1], np.float32(np.inf)).astype(np.float32))
            down.append(np.nextafter(down[-1], np.float32(-np.inf)).astype(np.float32))
        cands = [base, up[1], down[1], up[2], down[2], up[3], down[3]]
        # screen all of them at once on two elements (the first and the largest): a candidate that
        # fails there fails on the sample, so only survivors are checked on the sample
        probe = sub[:, [0, -1]]
        c = np.stack(cands)[:, :, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            k2 = np.rint(probe[None] / c)
            ok_k2 = np.abs(k2) <= MAX_K
            screen = ((np.where(ok_k2, k2, 0).astype(np.float32) * c == probe[None]) & ok_k2).all(axis=2)
        for cand, passed in zip(cands, screen):
            if not (passed & ~found).any():
                continue
            _, ok = _exact(sub, cand)
            ok &= passed
            newly = ok & ~found
            pick[newly] = cand[newly]
            found |= ok
            if found.all():
                break
        if not found.any():
            return
        rows_found = todo[found]
        k_full, ok_full = _exact(v[rows_found], pick[found])
        good = rows_found[ok_full]
        scales[good] = pick[found][ok_full]
        kmat[good] = k_full[ok_full]
        done[good] = True

    for b in range(0, len(guesses), _SCREEN_BATCH):
        if done.all():
            break
        batch = guesses[b:b + _SCREEN_BATCH]
        for kk, fits in zip(batch, screen(batch)):
            if done.all():
                break
            if (fits & ~done).any():
                attempt(kk)
    if not done.all() and m > 64 and (a[~done].min(axis=1) > 0).any():
        # a long unpruned row that no guess above fits: dense float weights, no grid (the fallback
        # below is for pruned and short rows, and would spend most of a lossless pack here)
        return None
    if not done.all():
        # pruned rows: the smallest surviving code can be large (48 in an 8-bit row seen), so
        # neither amin nor qmax names the step; the smallest gap between distinct magnitudes does
        rest = np.flatnonzero(~done)
        srt = np.sort(a[rest], axis=1)
        gaps_all = np.diff(srt, axis=1)
        gaps = np.where(gaps_all > 0, gaps_all, np.inf).min(axis=1) if m > 1 else np.full(rest.size, np.inf)
        gap = np.full(r, np.inf, np.float32)
        gap[rest] = gaps
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for d in range(1, 5):
                attempt(np.rint(amax / (gap / d)))
        # short rows (3x3 depthwise) with few distinct codes: try every largest code up to 8 bits
        # (only where an open row is short or repeats its magnitudes: a row of distinct random
        # floats has no such grid, and this loop was most of the time spent on BatchNorm vectors)
        distinct = 1 + (gaps_all > 0).sum(axis=1) if m > 1 else np.ones(rest.size, np.int64)
        open_rows = ~done[rest]
        if open_rows.any() and not (m <= 32 or (distinct[open_rows] <= m // 2).any()):
            return None
        small = [np.full(r, float(kk)) for kk in range(1, 256)] if open_rows.any() else []
        for kk, fits in zip(small, screen(small) if small else []):
            if done.all():
                break
            if (fits & ~done).any():
                attempt(kk)
    if not done.all():
        return None
    return kmat, scales


def detect_grid(t: torch.Tensor) -> Grid | None:
    """Cheapest exact affine grid of a float tensor (per tensor or per channel on axis 0).

    For float16 / bfloat16 also grids rounded by the cast: values cast(float32(k) * s) that
    are not themselves multiples of any scale (`(k * s).bfloat16()`), see _solve_rounded."""
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16) or t.numel() == 0:
        return None
    x = t.detach().cpu().float().contiguous().reshape(-1).numpy()
    if not np.isfinite(x).all():
        return None
    best = _detect_exact(t, x)
    if best is None and t.dtype in _HALF:
        best = _detect_rounded(t, x)
    return best


# float16 / bfloat16: explicit mantissa bits, smallest normal exponent
_HALF = {torch.float16: (10, -14), torch.bfloat16: (7, -126)}


def _round_interval(x: np.ndarray, dtype) -> tuple:
    """(lo, hi) around |x| inside which float32 values cast to the same half-precision value (shrunk a little)."""
    mbits, emin = _HALF[dtype]
    a = np.abs(x).astype(np.float64)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(e, emin)
    ulp = np.exp2(e - mbits)
    below = np.where(a == np.exp2(e), ulp / 2, ulp)  # a power of two: the spacing below is half
    return a - below * 0.49, a + ulp * 0.49


def _check_rounded(x: np.ndarray, k: np.ndarray, s: np.ndarray, dtype) -> np.ndarray:
    """Rows (of x: rows x m) that cast(float32(k) * s) reproduces exactly."""
    prod = (k.astype(np.float32) * s[:, None].astype(np.float32)).astype(np.float32)
    back = torch.from_numpy(np.ascontiguousarray(prod)).to(dtype).float().numpy()
    same = (back == x) & (np.signbit(back) == np.signbit(x))
    return same.all(axis=1)


def _solve_rounded(rows: np.ndarray, dtype):
    """Per-row (k, s) with cast(float32(k) * s) == row exactly, or None.

    For a guess K of the largest code, k = rint(x / (amax / K)); the scales that
    reproduce each element form an interval (the element's rounding interval / |k|);
    their intersection, when not empty, holds a scale that reproduces the row.  The
    candidate is checked exactly (a guess that passes is an exact encoding)."""
    r, m = rows.shape
    a = np.abs(rows)
    amax = a.max(axis=1)
    lo, hi = _round_interval(rows, dtype)
    nz = np.where(a > 0, a, np.inf)
    amin = nz.min(axis=1)
    scales = np.zeros(r, np.float32)
    kmat = np.zeros(rows.shape, np.int64)
    done = amax == 0
    scales[done] = 1
    guesses = [np.full(r, float(q)) for q in _QMAX if q <= 4096]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        guesses += [np.rint(amax / (amin / d)) for d in (1, 2, 3, 4)]
    for kk in guesses:
        todo = np.flatnonzero(~done & np.isfinite(kk) & (kk >= 1) & (kk <= MAX_K))
        if todo.size == 0:
            continue
        s0 = amax[todo] / kk[todo]
        k = np.rint(rows[todo] / s0[:, None])
        ak = np.abs(k)
        bad_zero = ((ak == 0) & (a[todo] > 0)).any(axis=1) | ((ak > 0) & (a[todo] == 0)).any(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            s_lo = np.where(ak > 0, lo[todo] / ak, -np.inf).max(axis=1)
            s_hi = np.where(ak > 0, hi[todo] / ak, np.inf).min(axis=1)
        ok = ~bad_zero & (s_lo < s_hi) & (ak <= MAX_K).all(axis=1)
        if not ok.any():
            continue
        idx = todo[ok]
        s = ((s_lo[ok] + s_hi[ok]) / 2).astype(np.float32)
        good = _check_rounded(rows[idx], k[ok], s, dtype)
        scales[idx[good]] = s[good]
        kmat[idx[good]] = k[ok][good].astype(np.int64)
        done[idx[good]] = True
        if done.all():
            return kmat, scales
    return None


def _detect_rounded(t: torch.Tensor, x: np.ndarray) -> Grid | None:
    shape = tuple(t.shape)
    per_channel = t.dim() >= 2 and shape[0] > 1
    rows = x.reshape(shape[0], -1) if per_channel else x.reshape(1, -1)
    if rows.shape[0] > 4 and _solve_rounded(rows[:2], t.dtype) is None:
        return None  # screened on two rows
    got = _solve_rounded(rows, t.dtype)
    if got is None:
        return None
    k, s = got
    if per_channel:  # one scale for every row, when one fits: stored once
        one = np.full(rows.shape[0], np.median(s[s > 0]) if (s > 0).any() else 1, np.float32)
        k1 = np.rint(rows / one[:, None])
        if (np.abs(k1) <= MAX_K).all() and _check_rounded(rows, k1, one, t.dtype).all():
            return Grid(k1.astype(np.int64).reshape(-1), one[:1].copy(), Granularity.TENSOR, shape)
        return Grid(k.reshape(-1), s, Granularity.CHANNEL, shape, axis=0)
    return Grid(k.reshape(-1), s, Granularity.TENSOR, shape)


def _detect_exact(t: torch.Tensor, x: np.ndarray) -> Grid | None:
    shape = tuple(t.shape)
    best = None
    if t.dim() >= 2 and shape[0] > 4:
        # screen on the first two rows: a grid of the whole tensor (per channel or per tensor) is a
        # grid of these; most float weights fail here, before the passes over the whole tensor
        probe = x.reshape(shape[0], -1)[:2]
        if _solve_rows(probe) is None and _solve_rows(probe.reshape(1, -1)) is None:
            return None
    if t.dim() >= 2 and shape[0] > 1:
        per_channel = _solve_rows(x.reshape(shape[0], -1))
        if per_channel is not None:
            k, s = per_channel
            if (s == s[0]).all():  # one scale after all: store it once
                best = Grid(k.reshape(-1), s[:1].copy(), Granularity.TENSOR, shape)
            else:
                best = Grid(k.reshape(-1), s, Granularity.CHANNEL, shape, axis=0)
    if best is None and t.dim() >= 2 and shape[0] > 1 and x.size // shape[0] > 64 and np.count_nonzero(x) == x.size:
        return None  # long unpruned rows with no grid each: one scale for all of them fits no better
    if best is None:
        per_tensor = _solve_rows(x.reshape(1, -1))
        if per_tensor is None:
            return None
        k, s = per_tensor
        best = Grid(k.reshape(-1), s, Granularity.TENSOR, shape)
    # a bf16/fp16 tensor must round-trip through the fp32 product
    if t.dtype != torch.float32:
        back = torch.from_numpy(best.values()).to(t.dtype).reshape(shape)
        if not torch.equal(back.view(torch.int16), t.detach().cpu().contiguous().view(torch.int16)):
            return None
    return best


def detect_codebook(t: torch.Tensor, max_entries: int = 1 << 16):
    """(entries, inverse) of distinct bit patterns, or None if too many."""
    from .codecs.codebook import value_bits
    if t.numel() == 0:
        return None
    bits = value_bits(t)
    if bits.size > 4096:
        sample = bits[np.random.default_rng(0).integers(0, bits.size, 4096)]
        if np.unique(sample).size > 2048:
            return None
    uniq, inv = np.unique(bits, return_inverse=True)
    if uniq.size > max_entries:
        return None
    return uniq, inv.astype(np.int64).reshape(-1)
