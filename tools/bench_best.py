"""Sizes and times of `mbz pack --best` (ARANS, format_spec.md §5.8) against the default profile (results/entropy/).

    python tools/bench_best.py --data npz:/work/shared/data --runs 3 --out results/entropy/best_figures.json

Parts (--only to pick):
* 200k: `mbz pack examples/mobilenetv2_cifar10_200k.mbz -o OUT [--best]` (lossless re-encode); the
  tensors of both outputs compared bit for bit with the input file's.
* w4: `mbz pack REFERENCE --wbits 4 [--best]`; the --best file's tensors compared bit for bit with the
  default file's (same tensors, other entropy stage).
* ptq: tools/bench_inputs.py's torch.ao PTQ MobileNet-v2 (fbgemm per-channel qint8), packed with both
  profiles (sizes against its torch.save size; bits per weight of the weight codes).
Pack: wall seconds of one `mbz pack` run per profile (CLI, a fresh process).  Load: `mbz.load` of each
file, runs alternating between the profiles, medians; 200k: also torch.load of the tensors saved by torch.save,
alternating with the --best file's load.  With --numpy-too, the 200k --best pack and load also run with the
numpy entropy coders (MBZ_NO_JIT=1; without it the compiled ones, mbz/codecs/entropy_jit.py, where numba is
installed), and the two --best files are compared byte for byte.  Sizes are bytes on disk, everything counted.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import mbz
from mbz.compare import compare

HERE = os.path.dirname(os.path.abspath(__file__))

REFERENCE = os.environ.get("MBZ_REFERENCE", "/work/shared/data/reference_mnv2_cifar10_fp32.pt")
EXAMPLE = os.path.normpath(os.path.join(HERE, "..", "examples", "mobilenetv2_cifar10_200k.mbz"))


def pack(args: list, out: str, nojit: bool = False) -> float:
    t = time.perf_counter()
    env = dict(os.environ, MBZ_NO_JIT="1" if nojit else "0")
    subprocess.run([sys.executable, "-m", "mbz.cli", "pack", *args, "-o", out, "--force"], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def loads(files: dict, runs: int) -> dict:
    """Median mbz.load seconds per file, alternating; a key ending in '_numpy' loads with MBZ_NO_JIT=1.  One
    untimed load of each first (the process's first use of the compiled coders loads them from numba's cache:
    tools/bench_arans.py measures that apart)."""
    ts = {k: [] for k in files}
    for r in range(-1, runs):
        for k, f in files.items():
            os.environ["MBZ_NO_JIT"] = "1" if k.endswith("_numpy") else "0"
            if r < 0 and k.endswith("_numpy"):
                continue
            t = time.perf_counter()
            mbz.load(f)
            if r >= 0:
                ts[k].append(time.perf_counter() - t)
    os.environ.pop("MBZ_NO_JIT", None)
    return {k: round(statistics.median(v), 3) for k, v in ts.items()}


def filters(path: str) -> dict:
    out = {}
    with mbz.open(path) as r:
        for rec in r.layout.records:
            for s in rec.sections:
                out[s.filter.name] = out.get(s.filter.name, 0) + s.stored
    return out


def part_cli(name: str, args: list, tmp: str, runs: int, same_as: str | None, numpy_too: bool = False,
             torch_too: bool = False) -> dict:
    files = {p: os.path.join(tmp, f"{name}_{p}.mbz") for p in ("default", "best")}
    secs = {p: pack(args + (["--best"] if p == "best" else []), f) for p, f in files.items()}
    extra = {}
    if numpy_too:  # the numpy entropy coders (MBZ_NO_JIT=1): the same file, its pack and load times
        out = os.path.join(tmp, f"{name}_best_numpy.mbz")
        secs["best_numpy"] = pack(args + ["--best"], out, nojit=True)
        with open(out, "rb") as a, open(files["best"], "rb") as b:
            extra["best_numpy_file_identical"] = a.read() == b.read()
        files = {**files, "best_numpy": files["best"]}
    ref = mbz.load(same_as) if same_as else mbz.load(files["default"])
    shown = " ".join(os.path.relpath(x) if os.path.exists(x) else x for x in args)
    row = {"command_default": "mbz pack " + shown, "command_best": "mbz pack " + shown + " --best",
           "bytes": {p: os.path.getsize(f) for p, f in files.items()},
           "pack_s": {p: round(s, 2) for p, s in secs.items()},
           "load_s_median": loads(files, runs),
           "stored_bytes_by_filter_best": filters(files["best"]),
           "tensors_equal_to": os.path.basename(same_as) if same_as else "the default file's",
           "tensors_equal": {p: compare(ref, mbz.load(f)).ok for p, f in files.items()}, **extra}
    if torch_too:
        import torch
        pt = os.path.join(tmp, f"{name}.pt")
        torch.save(dict(mbz.load(files["default"])), pt)
        tl = {"torch": [], "best": []}
        for _ in range(runs):
            for k in tl:
                t = time.perf_counter()
                torch.load(pt, map_location="cpu", weights_only=True) if k == "torch" else mbz.load(files["best"])
                tl[k].append(time.perf_counter() - t)
        row["torch_load_s_median"] = round(statistics.median(tl["torch"]), 4)
        row["torch_pt_bytes"] = os.path.getsize(pt)
        row["best_load_over_torch_load"] = round(statistics.median(tl["best"]) / statistics.median(tl["torch"]), 2)
    row["best_vs_default"] = round(row["bytes"]["best"] / row["bytes"]["default"], 4)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("200k", "w4", "ptq"), action="append")
    ap.add_argument("--data", help="calibration data for ptq (see tools/bench_inputs.py)")
    ap.add_argument("--runs", type=int, default=3, help="mbz.load runs per file")
    ap.add_argument("--out", help="JSON output")
    ap.add_argument("--numpy-too", action="store_true",
                    help="200k: also pack --best and load with the numpy entropy coders (MBZ_NO_JIT=1)")
    a = ap.parse_args()
    parts = a.only or ["200k", "w4", "ptq"]
    from mbz.codecs import jit
    res = {"command": "python tools/bench_best.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "load_average_start": os.getloadavg()[0], "compiled_entropy_coders": jit.kernels() is not None}
    with tempfile.TemporaryDirectory() as tmp:
        if "200k" in parts:
            res["200k"] = part_cli("200k", [EXAMPLE], tmp, a.runs, EXAMPLE, a.numpy_too, True)
            res["200k"]["target_bytes_best"] = 160000
            print("200k", json.dumps(res["200k"]), flush=True)
        if "w4" in parts:
            res["w4"] = part_cli("w4", [REFERENCE, "--wbits", "4"], tmp, a.runs, None)
            res["w4"]["target_bytes_best"] = int(0.85 * 1161493)
            print("w4", json.dumps(res["w4"]), flush=True)
        if "ptq" in parts:
            import runpy
            bench_ptq = runpy.run_path(os.path.join(HERE, "bench_inputs.py"))["bench_ptq"]
            res["ptq"] = bench_ptq(tmp, REFERENCE, 512, a.data, best=True, runs=a.runs)
            print("ptq", json.dumps(res["ptq"]), flush=True)
        res["load_average_end"] = os.getloadavg()[0]
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
