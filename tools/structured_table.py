"""Structured vs unstructured point of a network: parameters, bytes, test top-1 and latency, one table.

Reads DIR/dense_baseline.json and DIR/thin_ft.json (`mbz train` summaries, for the architectures),
DIR/test_evals.jsonl (`mbz eval --json`, one line per file) and DIR/bench_{dense,thin_r*,unstructured_*}.json
(`mbz bench -o`), writes DIR/summary.json and prints a Markdown table. Latencies are the medians that
`mbz bench` recorded (ms); the drop of the unstructured file is against its own seed's baseline
(DIR/../seeds.json, seed 0).

    python tools/structured_table.py results/vgg11_bn_cifar/structured [--force]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def _key(path: str) -> str:
    return "/".join(os.path.normpath(path).split(os.sep)[-2:])


def _params(arch: dict) -> int:
    from mbz.models import build_model
    return sum(p.numel() for p in build_model(arch).parameters())


def table(d: str) -> dict:
    evals = {_key(e["file"]): e for e in map(json.loads, open(os.path.join(d, "test_evals.jsonl")))}
    dense = json.load(open(os.path.join(d, "dense_baseline.json")))
    thin = json.load(open(os.path.join(d, "thin_ft.json")))
    seeds = json.load(open(os.path.join(d, "..", "seeds.json")))
    base_test = None
    rows = []
    for kind, pattern, arch in (("dense", "bench_dense.json", dense["arch"]), ("structured", "bench_thin_r*.json", thin["arch"]),
                                ("unstructured", "bench_unstructured_*.json", dense["arch"])):
        (f,) = glob.glob(os.path.join(d, pattern))
        b = json.load(open(f))
        e = evals[_key(b["file"])]
        lat = {f"{r['device']}_b{r['batch']}_ms": round(r["median_ms"], 3) for r in b["results"]}
        row = {"kind": kind, "file": b["file"], "file_bytes": b["file_bytes"], "parameters": _params(arch),
               "top1_test": e["top1"], "latency_median": lat, "bench": os.path.basename(f)}
        if kind == "dense":
            base_test = e["top1"]
            row["baseline_test"] = base_test
        elif kind == "structured":
            row["baseline_test"] = base_test
        else:
            row["baseline_test"] = seeds["rows"][0]["baseline_test"]
        row["drop_test"] = round(row["baseline_test"] - e["top1"], 2)
        rows.append(row)
    return {"command": f"python tools/structured_table.py {d} --force", "data": "CIFAR-10 (JPEG q75 export)",
            "seeds": 1, "gpu": rows[0] and json.load(open(glob.glob(os.path.join(d, 'bench_dense.json'))[0])).get("gpu"),
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--force", action="store_true", help="overwrite DIR/summary.json")
    a = ap.parse_args(argv)
    out = os.path.join(a.dir, "summary.json")
    if os.path.exists(out) and not a.force:
        sys.exit(f"structured_table: {out} exists (--force to overwrite)")
    t = table(a.dir)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(t, f, indent=1)
    os.replace(tmp, out)
    print("| file | parameters | bytes | top-1 test | drop | CPU b1 / b256 ms | GPU b1 / b256 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in t["rows"]:
        L = r["latency_median"]
        print(f"| {r['kind']} | {r['parameters']:,} | {r['file_bytes']:,} | {r['top1_test']:.2f} | {r['drop_test']:.2f} | "
              f"{L.get('cpu_b1_ms', float('nan')):.2f} / {L.get('cpu_b256_ms', float('nan')):.1f} | "
              f"{L.get('cuda_b1_ms', float('nan')):.2f} / {L.get('cuda_b256_ms', float('nan')):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
