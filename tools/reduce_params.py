#!/usr/bin/env python3
"""Hold a packed model's weight scales and biases at reduced precision, re-pack, and evaluate both.

    python tools/reduce_params.py results/final/models/s0.93_w4_a8_e14_kd0.5_lr0.02.mbz \\
        -o results/final/reduced/s0.93_w4_a8.mbz --scale-bits 8 --bias-bits 8 --data jpeg

Weight scales are rounded to --scale-bits significant bits and biases put on a per-tensor grid
of --bias-bits bits (see mbz/pipeline/params.py); activation quantizers and every other
metadata entry are kept. Both files are evaluated on the same device and data, and one JSON
line (sizes, top-1 before and after, largest parameter changes) is appended to --log
(not with --data none).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mbz  # noqa: E402
from mbz.pipeline.evaluate import evaluate_file  # noqa: E402
from mbz.pipeline.params import reduce_float_params  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a packed model (.mbz with 'arch' metadata)")
    ap.add_argument("-o", "--out", required=True, help="the reduced .mbz (written atomically)")
    ap.add_argument("--scale-bits", type=int, default=8, help="significant bits of each weight scale (24 = keep)")
    ap.add_argument("--bias-bits", type=int, default=8, help="bits of the per-tensor bias grid (0 = keep)")
    ap.add_argument("--data", default="jpeg", help="evaluation data (see `mbz eval --help`); 'none' skips it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log", default=None, help="JSONL to append the result to (default: OUT's folder/reduce_log.jsonl)")
    a = ap.parse_args()
    with mbz.open(a.file) as r:
        meta = dict(r.metadata)
        sd = r.decode_all()
    new, report = reduce_float_params(sd, a.scale_bits or None, a.bias_bits or None)
    meta["reduced_params"] = {"from": os.path.basename(a.file), "scale_bits": a.scale_bits, "bias_bits": a.bias_bits}
    if "top1_qat_eval" in meta:  # that figure was of the model before this step
        meta["reduced_params"]["top1_qat_eval_before"] = meta.pop("top1_qat_eval")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    mbz.save(new, a.out, metadata=meta)
    row = {"file": a.file, "out": a.out, "scale_bits": a.scale_bits, "bias_bits": a.bias_bits,
           "bytes_before": os.path.getsize(a.file), "bytes_after": os.path.getsize(a.out),
           "largest_rel_change": max((v["max_rel_to_range"] for v in report.values()), default=0.0)}
    if a.data != "none":
        row["data"] = a.data
        row["device"] = a.device
        from mbz.pipeline.data import load_dataset
        ds = load_dataset(a.data, "test")  # decoded once for both evaluations
        row["top1_before"] = evaluate_file(a.file, ds, a.device)["top1"]
        row["top1_after"] = evaluate_file(a.out, ds, a.device)["top1"]
    print(json.dumps(row), flush=True)
    if a.data == "none":
        return 0
    log = a.log or os.path.join(os.path.dirname(os.path.abspath(a.out)), "reduce_log.jsonl")
    with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
