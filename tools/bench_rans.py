"""Decode speed of the RANS filter (format_spec.md §5.7) and load time of files that use it.

    python tools/bench_rans.py --out results/entropy/decode_speed.json --runs 5 [FILE.mbz ...]

Synthetic streams: 4-bit signed codes (Laplacian, half zeros) coded with the lanes of the default
profile (1024 codes per lane) and of --best (16384), decoded by rans.decode_many, one section (one
thread): M symbols/s per core, with the compiled lane loop (numba, mbz/codecs/entropy_jit.py, "jit") and
with the numpy reference (MBZ_NO_JIT=1, "numpy"), alternating.  Files: mbz.load of each FILE, runs alternating between
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
from mbz.codecs import jit, rans
from mbz.codecs.bitpack import pack_codes


def synthetic(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    v = np.clip(np.round(rng.laplace(0, 1.5, n)), -8, 7).astype(np.int64)
    v[rng.random(n) < 0.5] = 0
    return pack_codes(v, 4, True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".mbz files to load (alternating runs)")
    ap.add_argument("--out", help="JSON output")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="262144,1048576,4194304", help="symbols per synthetic stream")
    a = ap.parse_args()
    paths = ["jit", "numpy"] if jit.kernels() is not None else ["numpy"]
    res = {"command": "python tools/bench_rans.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "load_average_start": os.getloadavg(), "synthetic": [], "files": []}
    for n in [int(x) for x in a.sizes.split(",")]:
        d = synthetic(n)
        for prof, steps in (("default", 1024), ("best", 16384)):
            e = rans.encode(d, 4, True, 0, steps)
            ts = {p: [] for p in paths}
            for _ in range(a.runs):
                for p in paths:  # alternating
                    os.environ["MBZ_NO_JIT"] = "1" if p == "numpy" else "0"
                    t = time.perf_counter()
                    out = rans.decode_many([(e, len(d))])[0]
                    ts[p].append(time.perf_counter() - t)
                    assert out == d
            os.environ.pop("MBZ_NO_JIT", None)
            row = {"symbols": n, "profile": prof, "lanes": -(-n // steps), "stored_bytes": len(e),
                   "order0_bound_bytes": round(rans.entropy_bound(d, 4, True), 1)}
            for p in paths:
                med = statistics.median(ts[p])
                row[p] = {"decode_s_median": round(med, 4), "msym_per_s": round(n / med / 1e6, 2)}
            res["synthetic"].append(row)
            print(row)
    if a.files:
        ts = {f: [] for f in a.files}
        for _ in range(a.runs):
            for f in a.files:
                t = time.perf_counter()
                mbz.load(f)
                ts[f].append(time.perf_counter() - t)
        for f in a.files:
            row = {"file": os.path.basename(f), "bytes": os.path.getsize(f),
                   "load_s_median": round(statistics.median(ts[f]), 4)}
            res["files"].append(row)
            print(row)
    res["load_average_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
