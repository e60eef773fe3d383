#!/usr/bin/env python
"""Structured pruning of a MobileNet-v2 checkpoint: remove a share of every block's hidden channels.

    python tools/prune_channels.py CHECKPOINT --ratios 0.125,0.25,0.5 --out results/channels

For each ratio it writes OUT/thin_r{ratio}.mbz (lossless; `mbz.load_model` rebuilds the thinner
blocks from the file's 'arch' metadata) and a row of OUT/channels.jsonl: parameters, file bytes
and top-1 on the test set without fine-tuning, with and without bias compensation.  The layers
per block go to OUT/thin_r{ratio}.layers.json.  Channels are ranked on --calib training images.
Recover the accuracy by fine-tuning on a GPU, e.g.:

    python tools/train.py --init OUT/thin_r0.25.mbz --lr 0.05 --epochs 30 --out runs/thin25

then use the result as a sweep's --baseline (magnitude pruning and QAT run on the thinner layers).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mbz  # noqa: E402
from mbz.pipeline import channels  # noqa: E402
from mbz.pipeline.data import evaluate, load_dataset, normalize  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402
from mbz.models import arch_of, build_model, guess_arch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="fp32 MobileNet-v2 state_dict with BatchNorm (.pt or .mbz)")
    ap.add_argument("--ratios", default="0.125,0.25,0.5", help="shares of hidden channels to remove, comma-separated")
    ap.add_argument("--multiple", type=int, default=8, help="kept channels per block are a multiple of this")
    ap.add_argument("--data", default="jpeg", help="jpeg | npz:PATH | cifar10:ROOT | folder:ROOT")
    ap.add_argument("--calib", type=int, default=2048, help="training images that rank the channels")
    ap.add_argument("--test", type=int, default=0, help="evaluate on this many test images (0: all)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ratios = [float(r) for r in a.ratios.split(",") if r]
    if any(not 0 <= r < 1 for r in ratios):
        ap.error("--ratios must lie in [0, 1)")
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    sd = read_checkpoint(a.checkpoint)
    arch = arch_of(sd)
    model = build_model(arch)
    model.load_state_dict(sd)
    tr, te = load_dataset(a.data, "train"), load_dataset(a.data, "test")
    if a.test:
        te = te.subset(a.test)
    calib = normalize(tr.subset(a.calib).images)
    t0 = time.time()
    stats = channels.channel_stats(model, calib)
    base_top1 = evaluate(model, te)["top1"]
    print(f"baseline top-1 {base_top1:.2f} on {len(te)} test images; channel statistics in {time.time() - t0:.1f}s",
          flush=True)
    rows = []
    for r in ratios:
        keep = channels.choose_channels(sd, stats, r, a.multiple)
        row = {"ratio": r, "checkpoint": a.checkpoint, "calib_images": len(calib), "test_images": len(te),
               "baseline_top1": base_top1, "params_before": sum(v.numel() for v in sd.values())}
        for comp in (False, True):
            thin = channels.thin_state_dict(sd, keep, stats if comp else None)
            m = build_model(arch_of(thin))
            m.load_state_dict(thin)
            row["top1_compensated" if comp else "top1_plain"] = evaluate(m, te)["top1"]
        path = os.path.join(a.out, f"thin_r{r:g}.mbz")
        rep = mbz.save(thin, path, arch=guess_arch(thin), metadata={"structured_pruning": {"ratio": r, "source": os.path.basename(a.checkpoint),
                                                                     "bias_compensation": True}})
        layers = channels.report(sd, thin)
        with open(os.path.join(a.out, f"thin_r{r:g}.layers.json"), "w") as f:
            json.dump(layers, f, indent=1)
        row.update(params_after=sum(v.numel() for v in thin.values()), file=os.path.basename(path),
                   file_bytes=rep.file_bytes, hidden=arch_of(thin).get("hidden"),
                   fine_tuned=False)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("ratio", "params_after", "file_bytes", "top1_plain", "top1_compensated")}),
              flush=True)
    with open(os.path.join(a.out, "channels.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.write(json.dumps({"command": "python tools/prune_channels.py " + " ".join(sys.argv[1:])}) + "\n")


if __name__ == "__main__":
    main()
