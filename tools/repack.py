#!/usr/bin/env python
"""Re-pack the .mbz files of a compress or qat_resume run on a machine with zstandard, losslessly.

GPU machines may lack zstandard, so tools/compress.py and tools/qat_resume.py write files there
without the entropy stage; this rewrites each one here (bit-identical tensors, checked), copies
the logs and updates file_bytes in results.jsonl / runs.jsonl (the GPU size kept as
file_bytes_gpu_nozstd).

    python tools/repack.py RUN_DIR results/compress_long
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.pipeline.sweep_run import repack  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args()
    os.makedirs(a.dst, exist_ok=True)
    table = next((n for n in ("results.jsonl", "runs.jsonl") if os.path.exists(os.path.join(a.src, n))), None)
    if table is None:
        raise SystemExit(f"{a.src}: neither results.jsonl (tools/compress.py) nor runs.jsonl (tools/qat_resume.py)")
    rows = [json.loads(line) for line in open(os.path.join(a.src, table))]
    with open(os.path.join(a.dst, table), "w") as f:
        for r in rows:
            nbytes = repack(os.path.join(a.src, r["mbz"]), os.path.join(a.dst, r["mbz"]), zstd=True)
            r.setdefault("file_bytes_gpu_nozstd", r["file_bytes"])
            r["file_bytes"] = nbytes
            f.write(json.dumps(r) + "\n")
            print(r["name"], r["top1_packed"], r["file_bytes_gpu_nozstd"], "->", nbytes)
    for name in os.listdir(a.src):
        if name.endswith((".jsonl", ".json")) and name != table:
            shutil.copy(os.path.join(a.src, name), os.path.join(a.dst, name))


if __name__ == "__main__":
    main()
