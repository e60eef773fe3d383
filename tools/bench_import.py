#!/usr/bin/env python3
"""Wall time of `import mbz`, of `mbz.load_model` on the shipped example, and of `mbz --version`, in fresh
interpreters: the median of --runs runs of each, as `time python -c 'import mbz'` measures it (interpreter
start included), the source trees alternating run by run so that they share the machine's load.

    # the figures in results/format/import_time.json: this tree against the commit before the lazy imports
    git archive 15a6d46 | (mkdir -p /tmp/mbz_before && tar -x -C /tmp/mbz_before)
    python tools/bench_import.py --tree before=/tmp/mbz_before --tree after=. --runs 5 \\
        --out results/format/import_time.json

Each tree is put first on PYTHONPATH.  Also recorded per tree: the heavy packages each statement leaves
imported, and from `python -X importtime -c 'import mbz'` the cumulative microseconds of `mbz` and of
the largest imports.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "numba", "zstandard")
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "mobilenetv2_cifar10.mbz")
STATEMENTS = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import mbz": ["-c", "import mbz"],
    "mbz.load_model(example)": ["-c", f"import mbz; mbz.load_model({EXAMPLE!r})"],
    "mbz --version": ["-m", "mbz.cli", "--version"],
}
LOADED = "import sys; {0}; print(sorted(m for m in {1!r} if m in sys.modules))"


def _env(tree: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.path.abspath(tree))


def _time(tree: str, args: list) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], env=_env(tree), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=os.path.abspath(tree))
    return time.perf_counter() - t


def _importtime(tree: str, top: int = 8) -> dict:
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mbz"], env=_env(tree), check=True,
                       capture_output=True, text=True, cwd=os.path.abspath(tree))
    rows = []
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    mbz_us = next(us for us, m in rows if m == "mbz")
    rows.sort(reverse=True)
    return {"mbz_cumulative_us": mbz_us, "largest": [{"module": m, "cumulative_us": us} for us, m in rows[:top]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree to time")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree)
    times = {n: {s: [] for s in STATEMENTS} for n in trees}
    for _ in range(a.runs):
        for s, args in STATEMENTS.items():
            for n, path in trees.items():  # alternate the trees within each statement
                times[n][s].append(round(_time(path, args), 3))
    out = {"command": "python tools/bench_import.py " + " ".join(sys.argv[1:]),
           "what": "seconds of wall time of a fresh interpreter running each statement (interpreter start "
                   "included), median of the runs; the trees alternate run by run",
           "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
           "trees": {}}
    for n, path in trees.items():
        loaded = {}
        for s, code in (("import mbz", "import mbz"),
                        ("mbz.load_model(example)", f"import mbz; mbz.load_model({EXAMPLE!r})")):
            r = subprocess.run([sys.executable, "-c", LOADED.format(code, HEAVY)], env=_env(path), check=True,
                               capture_output=True, text=True, cwd=os.path.abspath(path))
            loaded[s] = json.loads(r.stdout.strip().replace("'", '"'))
        out["trees"][n] = {"path": path, "median_s": {s: statistics.median(v) for s, v in times[n].items()},
                           "runs_s": times[n], "heavy_packages_imported": loaded,
                           "importtime_import_mbz": _importtime(path)}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
