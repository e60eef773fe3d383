#!/usr/bin/env python3
"""Wall time of `mbz eval FILE` on this machine: each run a fresh process.

    python tools/bench_eval.py examples/mobilenetv2_cifar10.mbz --runs 3 --out results/examples/eval_speed.json

Each run is a fresh process (`python -m mbz.cli eval FILE --json`), so the time includes Python and
torch start-up, reading the file, rebuilding the model and decoding the 10,000 test JPEGs.  Uses the
installed mbz package; the data comes from --data (default: the JPEG export in $MBZ_DATA).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", default="jpeg")
    ap.add_argument("--out", help="write the figures as JSON here (default: print only)")
    a = ap.parse_args()
    times, top1 = [], set()
    for i in range(a.runs):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "mbz.cli", "eval", a.file, "--data", a.data, "--json"],
                             check=True, capture_output=True, text=True)
        times.append(round(time.perf_counter() - t, 2))
        top1.add(json.loads(res.stdout)["top1"])
        print(f"run {i + 1}: {times[-1]} s", flush=True)
    row = {"command": "python tools/bench_eval.py " + " ".join(sys.argv[1:]), "file": a.file,
           "machine": platform.platform(), "cpus": os.cpu_count(), "runs_s": times,
           "median_s": statistics.median(times), "under_60_s": statistics.median(times) < 60, "top1": sorted(top1)}
    print(json.dumps(row))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
