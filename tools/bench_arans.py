"""Decode speed of the ARANS filter (format_spec.md §5.8) and load time of files that use it, compiled (numba,
mbz/codecs/entropy_jit.py) against the numpy reference (MBZ_NO_JIT=1), measured in one run.

    python tools/bench_arans.py --out results/entropy/arans_speed_jit.json --runs 5 --sizes 65536,1048576 \
        --torch examples/mobilenetv2_cifar10_200k.mbz x_default.mbz x_best.mbz

Synthetic streams: sparse 4-bit signed codes (Laplacian, 90% zeros, rows of 256) coded with about 16384
decisions per lane (--best) and 1024, decoded by arans.decode_many, one section: one thread, so M elements/s
and M binary decisions/s are per core.  Files: the ARANS sections of each file decoded in one batch (as
mbz.load does: the compiled path spreads a batch's sections over threads) and one section at a time (one
thread), then mbz.load of each FILE (--torch: and torch.load of the first file's tensors saved by
torch.save).  Every timing alternates between the paths (and files), medians of --runs (the numpy path:
--numpy-runs); the outputs of both paths are checked equal.  compile: seconds of the first calls in a fresh process with an
empty numba cache (compiling) and with the cache it filled (loading), the kernels of both coders, the
decoders first.  Timings
vary with the machine's load (the JSON holds the load average): compare ratios measured in one run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import mbz
from mbz.codecs import arans, jit
from mbz.codecs.bitpack import pack_codes, unpack_codes
from mbz.spec import AransKind, Filter

PATHS = ("jit", "numpy")
COMPILE = """
import json, os, time
t = [time.perf_counter()]
import mbz
from mbz.codecs import arans, rans, jit
from mbz.spec import AransKind
t.append(time.perf_counter())
jk = jit.kernels()
t.append(time.perf_counter())
d = bytes(range(200))
os.environ["MBZ_NO_JIT"] = "1"
ea, er = arans.encode(d, AransKind.INT, 8), rans.encode(d, 8, row=20)  # numpy: the decoders' first calls come first
del os.environ["MBZ_NO_JIT"]
t.append(time.perf_counter())
assert arans.decode(ea, len(d)) == d
t.append(time.perf_counter())
assert rans.decode(er, len(d)) == d
t.append(time.perf_counter())
assert (arans.encode(d, AransKind.INT, 8), rans.encode(d, 8, row=20)) == (ea, er)
t.append(time.perf_counter())
names = ["import_mbz_s", "import_numba_and_kernels_s", "numpy_encodes_s", "first_arans_decode_s", "first_rans_decode_s",
         "first_encodes_s"]
print(json.dumps({k: round(t[i + 1] - t[i], 3) for i, k in enumerate(names)}))
"""


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


def alternate(fns: dict, runs: dict):
    """({name: median seconds}, {name: first result}): fns[name] = (path, f) run in turn, `runs[name]` times each,
    with MBZ_NO_JIT set for the numpy path."""
    ts = {k: [] for k in fns}
    first = {}
    for r in range(max(runs.values())):
        for k, (path, f) in fns.items():
            if r >= runs[k]:
                continue
            os.environ["MBZ_NO_JIT"] = "1" if path == "numpy" else "0"
            t = time.perf_counter()
            out = f()
            ts[k].append(time.perf_counter() - t)
            first.setdefault(k, out)
    os.environ.pop("MBZ_NO_JIT", None)
    return {k: statistics.median(v) for k, v in ts.items()}, first


def same_tensors(a, b) -> bool:
    import torch
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compile_times() -> dict:
    """Seconds of the first calls in fresh processes: empty numba cache, then the cache it filled."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env.pop("MBZ_NO_JIT", None)
        for what in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", COMPILE], env=env, check=True, capture_output=True, text=True)
            out[what] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def single_thread(f):
    def g():
        keep = jit.PARALLEL_MIN
        jit.PARALLEL_MIN = float("inf")
        try:
            return f()
        finally:
            jit.PARALLEL_MIN = keep
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".mbz files (ARANS sections decoded; mbz.load alternating)")
    ap.add_argument("--out", help="JSON output")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--numpy-runs", type=int, default=3, help="runs of the numpy path (slow)")
    ap.add_argument("--sizes", default="65536,1048576", help="codes per synthetic stream")
    ap.add_argument("--torch", action="store_true", help="also torch.load of the first file's tensors (torch.save)")
    a = ap.parse_args()
    if jit.kernels() is None:
        ap.error("numba is not importable (or MBZ_NO_JIT is set): nothing to compare")
    res = {"command": "python tools/bench_arans.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "load_average_start": os.getloadavg(), "compile": compile_times(), "synthetic": [], "sections": [],
           "files": []}
    print("compile", res["compile"], flush=True)
    for n in [int(x) for x in a.sizes.split(",")]:
        d = synthetic(n)
        for steps in (16384, 1024):
            e = arans.encode(d, AransKind.INT, 4, True, 256, steps)
            assert arans.decode(e, len(d)) == d
            h = arans._Header(e, len(d))
            dn = decisions(h, d)
            med, out = alternate({p: (p, lambda: arans.decode_many([(e, len(d))])[0]) for p in PATHS},
                                 {"jit": a.runs, "numpy": a.numpy_runs})
            assert out["jit"] == out["numpy"] == d
            row = {"codes": n, "steps_per_lane": steps, "lanes": h.K, "stored_bytes": len(e), "decisions": dn}
            for p in PATHS:
                row[p] = {"decode_s_median": round(med[p], 5), "m_elements_per_s": round(n / med[p] / 1e6, 3),
                          "m_decisions_per_s": round(dn / med[p] / 1e6, 3)}
            row["numpy_over_jit"] = round(med["numpy"] / med["jit"], 1)
            res["synthetic"].append(row)
            print(row, flush=True)
    for f in a.files:
        with mbz.open(f) as r:
            buf = r._src.buf
            items = [(bytes(buf[s.offset:s.offset + s.stored]), s.decoded) for rec in r.layout.records
                     for s in rec.sections if s.filter == Filter.ARANS]
        if not items:
            continue
        heads = [arans._Header(st, dl) for st, dl in items]
        outs = arans.decode_many(items)
        el = sum(h.n for h in heads)
        dn = sum(decisions(h, o) for h, o in zip(heads, outs))
        med, out = alternate({"jit": ("jit", lambda: arans.decode_many(items)),
                              "jit_one_thread": ("jit", single_thread(lambda: arans.decode_many(items))),
                              "numpy": ("numpy", lambda: arans.decode_many(items))},
                             {"jit": a.runs, "jit_one_thread": a.runs, "numpy": a.numpy_runs})
        assert out["jit"] == out["jit_one_thread"] == out["numpy"] == outs
        row = {"file": os.path.basename(f), "arans_sections": len(items), "lanes": sum(h.K for h in heads),
               "elements": el, "decisions": dn}
        for p in med:
            row[p] = {"decode_s_median": round(med[p], 4), "m_elements_per_s": round(el / med[p] / 1e6, 3),
                      "m_decisions_per_s": round(dn / med[p] / 1e6, 3)}
        row["numpy_over_jit_one_thread"] = round(med["numpy"] / med["jit_one_thread"], 1)
        res["sections"].append(row)
        print(row, flush=True)
    if a.files:
        fns, runs = {}, {}
        for f in a.files:
            for p in PATHS:
                fns[(f, p)] = (p, lambda f=f: mbz.load(f))
                runs[(f, p)] = a.runs if p == "jit" else a.numpy_runs
        tmp = None
        if a.torch:
            import torch
            tmp = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
            torch.save(mbz.load(a.files[0]), tmp)
            fns[("torch.load", "-")] = ("jit", lambda: torch.load(tmp, map_location="cpu", weights_only=True))
            runs[("torch.load", "-")] = a.runs
        med, out = alternate(fns, runs)
        for f in a.files:
            assert same_tensors(out[(f, "jit")], out[(f, "numpy")]), f
        if a.torch:
            assert same_tensors(out[(a.files[0], "jit")], out[("torch.load", "-")])
        base = med[(a.files[0], "jit")]
        for (f, p), m in med.items():
            row = {"file": os.path.basename(f), "path": p, "bytes": os.path.getsize(tmp if f == "torch.load" else f),
                   "load_s_median": round(m, 4), "load_vs_first_file_jit": round(m / base, 2)}
            res["files"].append(row)
            print(row, flush=True)
        if tmp:
            os.unlink(tmp)
    res["load_average_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
