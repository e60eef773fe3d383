"""Decode speed of the ARANS filter (format_spec.md §5.8) and load time of files that use it.

    python tools/bench_arans.py --out results/entropy/arans_speed.json --runs 3 --sizes 65536,262144 \
        examples/mobilenetv2_cifar10_200k.mbz x_default.mbz x_best.mbz

Synthetic streams: sparse 4-bit signed codes (Laplacian, 90% zeros, rows of 256) coded with about
16384 decisions per lane (--best) and 1024, decoded by arans.decode_many; M elements/s and M binary
decisions/s on one core (numpy runs the lane loop on one thread).  Files: the ARANS sections of each
file decoded in one batch (as mbz.load does), then mbz.load of each FILE, runs alternating between
the files, median.  Timings vary with the machine's load: compare ratios measured in one run.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import mbz
from mbz.codecs import arans
from mbz.codecs.bitpack import pack_codes, unpack_codes
from mbz.spec import AransKind, Filter


def synthetic(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    v = np.clip(np.round(rng.laplace(0, 2.5, n)), -7, 7).astype(np.int64)
    v[rng.random(n) < 0.9] = 0
    return pack_codes(v, 4, True)


def decisions(h, dec: bytes) -> int:
    """Binary decisions of an ARANS section (spec §5.8): pass 1 + D per pass-2 element."""
    if h.kind == AransKind.FLOAT32:
        return h.n * (9 + h.w)
    nz = int(np.count_nonzero(unpack_codes(dec, h.n, h.w, bool(h.signed)))) if h.n else 0
    return h.n + h.w * nz


def timed(f, runs):
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".mbz files (ARANS sections decoded; mbz.load alternating)")
    ap.add_argument("--out", help="JSON output")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="65536,262144", help="codes per synthetic stream")
    a = ap.parse_args()
    res = {"command": "python tools/bench_arans.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg()[0], "synthetic": [], "sections": [], "files": []}
    for n in [int(x) for x in a.sizes.split(",")]:
        d = synthetic(n)
        for steps in (16384, 1024):
            e = arans.encode(d, AransKind.INT, 4, True, 256, steps)
            out, med = timed(lambda: arans.decode_many([(e, len(d))])[0], a.runs)
            assert out == d
            h = arans._Header(e, len(d))
            dn = decisions(h, d)
            row = {"codes": n, "steps_per_lane": steps, "lanes": h.K, "stored_bytes": len(e),
                   "decisions": dn, "decode_s_median": round(med, 4), "m_elements_per_s": round(n / med / 1e6, 3),
                   "m_decisions_per_s": round(dn / med / 1e6, 3)}
            res["synthetic"].append(row)
            print(row)
    for f in a.files:
        with mbz.open(f) as r:
            buf = r._src.buf
            items = [(bytes(buf[s.offset:s.offset + s.stored]), s.decoded) for rec in r.layout.records
                     for s in rec.sections if s.filter == Filter.ARANS]
        if not items:
            continue
        outs, med = timed(lambda: arans.decode_many(items), a.runs)
        heads = [arans._Header(st, dl) for st, dl in items]
        el = sum(h.n for h in heads)
        dn = sum(decisions(h, o) for h, o in zip(heads, outs))
        row = {"file": os.path.basename(f), "arans_sections": len(items), "lanes": sum(h.K for h in heads),
               "elements": el, "decisions": dn, "decode_s_median": round(med, 3),
               "m_elements_per_s": round(el / med / 1e6, 3), "m_decisions_per_s": round(dn / med / 1e6, 3)}
        res["sections"].append(row)
        print(row)
    if a.files:
        ts = {f: [] for f in a.files}
        for _ in range(a.runs):
            for f in a.files:
                t = time.perf_counter()
                mbz.load(f)
                ts[f].append(time.perf_counter() - t)
        base = statistics.median(ts[a.files[0]])
        for f in a.files:
            med = statistics.median(ts[f])
            row = {"file": os.path.basename(f), "bytes": os.path.getsize(f), "load_s_median": round(med, 4),
                   "load_vs_first": round(med / base, 2)}
            res["files"].append(row)
            print(row)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
