#!/usr/bin/env python3
"""Average the weights of several QAT runs of one pruned model ("uniform soup"), pack and evaluate.

    python tools/soup.py results/final200_lr/models/*.mbz -o results/final200_lr/soup/soup3.mbz \
        --data npz:.devdata --float-average

The inputs must share every tensor name, shape and zero pattern (copies of one pruned model
fine-tuned apart); see mbz/pipeline/soup.py for how weights are put back on their grids.
One JSON line (inputs, bytes, top-1, the largest re-snapping error; with --float-average also
the top-1 of the average before re-snapping) is appended to --log.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mbz  # noqa: E402
from mbz.pipeline.evaluate import evaluate_file  # noqa: E402
from mbz.pipeline.soup import average_state_dicts, soup_metadata, soup_state_dicts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="packed models (.mbz) fine-tuned from one pruned model")
    ap.add_argument("-o", "--out", required=True, help="the averaged model (.mbz, written atomically)")
    ap.add_argument("--data", default="jpeg", help="evaluation data (see `mbz eval --help`); 'none' skips it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", choices=["mse", "mean"], default="mse",
                    help="per-channel steps of the averaged weights: least rounding error, or the inputs' mean")
    ap.add_argument("--no-zstd", action="store_true",
                    help="no entropy stage (a copy to carry to a GPU machine without zstandard, e.g. for qat_resume)")
    ap.add_argument("--float-average", action="store_true",
                    help="also evaluate the plain average before re-snapping (weights off their grids, not stored)")
    ap.add_argument("--log", default=None, help="JSONL to append the result to (default: OUT's folder/soup_log.jsonl)")
    a = ap.parse_args(argv)
    if len(a.files) < 2:
        ap.error("give at least two files")
    sds, metas = [], []
    for f in a.files:
        with mbz.open(f) as r:
            metas.append(dict(r.metadata))
            sds.append(r.decode_all())
    sd, report = soup_state_dicts(sds, a.steps)
    meta = soup_metadata(metas, [os.path.basename(f) for f in a.files])
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    mbz.save(sd, a.out, metadata=meta, zstd=not a.no_zstd)
    row = {"files": a.files, "out": a.out, "steps": a.steps, "bytes": os.path.getsize(a.out),
           "bytes_inputs": [os.path.getsize(f) for f in a.files],
           "largest_rms_snap": max((v["rms_snap"] for v in report.values()), default=0.0)}
    if a.data != "none":
        from mbz.pipeline.data import load_dataset
        ds = load_dataset(a.data, "test")
        row.update(data=a.data, device=a.device, top1=evaluate_file(a.out, ds, a.device)["top1"])
        if a.float_average:  # the soup's architecture and activation ranges, the weights before re-snapping
            row["top1_float_average"] = evaluate_file(a.out, ds, a.device, average_state_dicts(sds))["top1"]
    print(json.dumps(row), flush=True)
    if a.data != "none":
        log = a.log or os.path.join(os.path.dirname(os.path.abspath(a.out)), "soup_log.jsonl")
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
