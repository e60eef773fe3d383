"""Ideal code length of candidate ARANS context models on the integer sections of .mbz files (results/entropy/).

    python tools/arans_contexts.py FILE.mbz [FILE.mbz ...] -o results/entropy/arans_contexts.json
    python tools/arans_contexts.py --floats CHECKPOINT.pt -o results/entropy/arans_floats.json

Measures, before anything is built into the coder (format_spec.md §5.8), what a context model would
cost: every decision is charged -log2 p with p the adaptive count estimate of its context,
(n_b + 1/2) / (n + 1) (Krichevsky-Trofimov, as ARANS; counts never halved), over each whole section
in order (one lane; ARANS's lanes restart the row / column statistics and cost a little more).
Sections: the CODES, MASK, DELTAS ... of every tensor whose codes are integers (§5.1), with the
2-D row length the writer uses (the fan-in of an output channel).  Theoretical counts, labelled.

Models (bytes summed over the files' sections):
* zero flag, 2-D sections: `counts` (left and upper flags, classes 0/1/2-3/4+ of the non-zero counts
  so far in the row and column: the previous §5.8 model), `density` (the 9 density classes of the
  row and of the column so far: the §5.8 model), `density+left+up`;
* sign: `none`, `left` (the left neighbour's sign: §5.8), `left+up`;
* magnitude m = |v| - 1: `msb` (fixed-width, most significant bit first, the top 4 bits with their
  prefix as context: §5.8), `msb x nb+row` (the same tree per class of the neighbours' and the row's
  mean magnitude), `eg` (Exp-Golomb-like: unary class of m + 1 with a context per prefix bit, then the
  suffix bits), `eg x nb` (left + upper magnitude class), `eg x row` (the row's running mean
  magnitude, half-octave classes), `eg x nb+row`, and `eg x oracle row` (the row's final mean
  magnitude: not decodable, an upper reference for any per-channel model).
--floats: the 1-D float32 tensors of a checkpoint (BN parameters and statistics, biases), each one ARANS
FLOAT32 section with all the fraction bits it needs: bytes under the section's own adaptive model
(`arans.model_bits`, real coder's model) against the raw bytes.
"""
import argparse
import json
import os
import sys

import numpy as np

import mbz
from mbz.codecs.bitpack import unpack_codes
from mbz.container import read_sections
from mbz.encoder import section_hint


def kt_bits(ctx, bit) -> float:
    """Ideal adaptive code length in bits of binary decisions `bit` in order, counts per context `ctx`."""
    ctx, bit = np.asarray(ctx, np.int64), np.asarray(bit, np.int64)
    if ctx.size == 0:
        return 0.0
    o = np.argsort(ctx, kind="stable")
    c, b = ctx[o], bit[o]
    start = np.r_[True, c[1:] != c[:-1]]
    gid = np.cumsum(start) - 1
    g0 = np.flatnonzero(start)
    seen = np.arange(c.size) - g0[gid]
    ones = np.cumsum(b) - b - np.r_[0, np.cumsum(b)][g0][gid]
    p = np.where(b == 1, ones + 0.5, seen - ones + 0.5) / (seen + 1.0)
    return float(-np.log2(p).sum())


def hl(x):
    """Half-octave class of a magnitude."""
    return np.floor(2 * np.log2(np.maximum(x, 0) + 1)).astype(np.int64)


def neighbours(v, R):
    """|v| of the left and upper neighbours (0 outside), running sum / count of non-zero |v| in the row."""
    a, n = np.abs(v), v.size
    i = np.arange(n)
    col = i % R if R else i
    row = i // R if R else np.zeros(n, np.int64)
    left = np.where(col > 0, np.r_[0, a[:-1]], 0)
    up = np.r_[np.zeros(R, np.int64), a[:-R]][:n] if R else np.r_[0, 0, a[:-2]][:n]
    rs0 = row * R if R else np.zeros(n, np.int64)
    nz = (v != 0).astype(np.int64)
    rsum = np.cumsum(a) - a - np.r_[0, np.cumsum(a)][rs0]
    rcnt = np.cumsum(nz) - nz - np.r_[0, np.cumsum(nz)][rs0]
    return left, up, rsum, rcnt, row, col


def zero_models(v, R) -> dict:
    z = (v != 0).astype(np.int64)
    n = z.size
    i = np.arange(n)
    col, row = i % R, i // R
    left = np.where(col > 0, np.r_[0, z[:-1]], 0)
    up = np.r_[np.zeros(R, np.int64), z[:-R]][:n]
    rc = np.cumsum(z) - z - np.r_[0, np.cumsum(z)][row * R]
    Z = np.r_[z, np.zeros((-n) % R, np.int64)].reshape(-1, R)
    cc = (np.cumsum(Z, 0) - Z).reshape(-1)[:n]
    cls = lambda x: np.where(x >= 4, 3, np.where(x >= 2, 2, x))  # noqa: E731
    dens = lambda x, y: np.where(y > 0, (8 * x + y // 2) // np.maximum(y, 1), 4)  # noqa: E731
    d = dens(rc, col) + 9 * dens(cc, row)
    return {"counts": kt_bits(left + 2 * up + 4 * cls(rc) + 16 * cls(cc), z), "density": kt_bits(d, z),
            "density+left+up": kt_bits(d + 81 * left + 162 * up, z)}


def sign_models(v, R) -> dict:
    s = np.sign(v)
    n = s.size
    col = np.arange(n) % R if R else np.arange(n)
    left = np.where(col > 0, np.r_[0, s[:-1]], 0) + 1
    up = (np.r_[np.zeros(R, np.int64), s[:-R]][:n] if R else np.zeros(n, np.int64)) + 1
    nz = np.flatnonzero(v)
    b = (v[nz] < 0).astype(np.int64)
    return {"none": kt_bits(0 * nz, b), "left": kt_bits(left[nz], b), "left+up": kt_bits(3 * left[nz] + up[nz], b)}


def msb_bits(m, wm, e) -> float:
    cx, bt, acc = [], [], np.zeros(m.size, np.int64)
    for j in range(wm):
        b = (m >> (wm - 1 - j)) & 1
        cx.append(np.where(j < 4, (1 << j) | acc, 16 + j) * 4096 + e)
        bt.append(b)
        acc = 2 * acc + b
    return kt_bits(np.stack(cx, 1).reshape(-1), np.stack(bt, 1).reshape(-1)) if m.size else 0.0


def eg_bits(m, wm, e) -> float:
    """Exp-Golomb-like: u = m + 1 in [2^c, 2^(c+1)); unary c (truncated at wm), then c suffix bits."""
    if not m.size:
        return 0.0
    u = m + 1
    c = np.floor(np.log2(u)).astype(np.int64)
    cx, bt, key = [], [], []
    for k in range(wm):
        a = np.flatnonzero(c >= k)
        cx.append(k * 4096 + e[a])
        bt.append((c[a] > k).astype(np.int64))
        key.append(a * 64 + k)
    for k in range(1, wm):  # class wm holds u = 2^wm only: no suffix
        a = np.flatnonzero(c == k)
        for d in range(k):
            b = (u[a] >> (k - 1 - d)) & 1
            cx.append((1 << 20) + (k * 32 + d) * 4096 + (e[a] if d == 0 else 0 * a))
            bt.append(b)
            key.append(a * 64 + 32 + d)
    o = np.argsort(np.concatenate(key), kind="stable")
    return kt_bits(np.concatenate(cx)[o], np.concatenate(bt)[o])


def magnitude_models(v, w, signed, R) -> dict:
    left, up, rsum, rcnt, row, _ = neighbours(v, R)
    nz = np.flatnonzero(v)
    m = np.abs(v[nz]) - 1
    wm = w - int(signed)
    nb = np.minimum(hl((left + up) / 2), 11)[nz]
    run = np.where(rcnt >= 4, np.minimum(hl(rsum / np.maximum(rcnt, 1)), 15), 16)[nz]
    a = np.abs(v)
    rmean = (np.bincount(row, a) / np.maximum(np.bincount(row, v != 0), 1))[row]
    orc = np.minimum(hl(rmean), 15)[nz]
    zero = 0 * nz
    return {"msb": msb_bits(m, wm, zero), "msb x nb+row": msb_bits(m, wm, nb * 17 + run), "eg": eg_bits(m, wm, zero),
            "eg x nb": eg_bits(m, wm, nb), "eg x row": eg_bits(m, wm, run), "eg x nb+row": eg_bits(m, wm, nb * 17 + run),
            "eg x oracle row": eg_bits(m, wm, orc)}


def sections(path: str):
    """(tensor, role, codes int64, w, signed, row length) of every integer section of the file."""
    with mbz.open(path) as r:
        buf = r._src.buf
        for rec in r.layout.records:
            dec = read_sections(buf, rec)
            for s in rec.sections:
                hint = section_hint(s.role, rec.params, rec.shape)
                if hint is None or s.decoded == 0:
                    continue
                w, signed, row = hint
                n = s.decoded * 8 // w
                while n and (n * w + 7) // 8 > s.decoded:
                    n -= 1
                v = unpack_codes(dec[s.role], n, w, signed).astype(np.int64)
                yield rec.name, s.role.name, v, w, bool(signed), row if 0 < row < n else 0


def measure(path: str) -> dict:
    tot = {"zero_flag_2d": {}, "sign": {}, "magnitude": {}}
    cnt = {"sections": 0, "elements": 0, "non_zero": 0, "sections_2d": 0}
    for _, _, v, w, signed, R in sections(path):
        cnt["sections"] += 1
        cnt["elements"] += v.size
        cnt["non_zero"] += int(np.count_nonzero(v))
        parts = [("magnitude", magnitude_models(v, w, signed, R))] if w > 1 else []
        if R:
            cnt["sections_2d"] += 1
            parts.append(("zero_flag_2d", zero_models(v, R)))
        if signed:
            parts.append(("sign", sign_models(v, R)))
        for g, d in parts:
            for k, b in d.items():
                tot[g][k] = tot[g].get(k, 0.0) + b / 8
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), **cnt,
            "ideal_bytes": {g: {k: round(b) for k, b in d.items()} for g, d in tot.items()}}


def floats(path: str) -> dict:
    import torch
    from mbz.codecs import arans
    from mbz.spec import AransKind
    sd = torch.load(path, map_location="cpu", weights_only=True)
    items = []
    for v in sd.values():
        if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.dim() == 1 and v.numel():
            d = v.numpy().astype("<f4").tobytes()
            items.append((d, AransKind.FLOAT32, arans.fraction_bits(d), False, 0, 16384))
    bits = arans.model_bits(items)
    return {"file": os.path.basename(path), "tensors": len(items), "raw_bytes": sum(len(i[0]) for i in items),
            "fraction_bits": sorted({i[2] for i in items}), "arans_float32_model_bytes": round(sum(bits) / 8)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--floats", help="checkpoint whose 1-D float32 tensors are measured instead")
    ap.add_argument("-o", "--out", help="JSON output")
    a = ap.parse_args()
    res = {"command": "python tools/arans_contexts.py " + " ".join(sys.argv[1:]), "files": []}
    if a.floats:
        res["floats"] = floats(a.floats)
        print(json.dumps(res["floats"]))
    for f in a.files:
        r = measure(f)
        res["files"].append(r)
        print(json.dumps(r, indent=1), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
