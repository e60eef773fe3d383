#!/usr/bin/env python
"""Per-layer pruning sensitivity scan and the sparsity caps it implies.

    python tools/sensitivity.py CHECKPOINT --out results/sensitivity --images 1000 --tolerance 5
    python tools/sensitivity.py --recap --tolerance 10 --out results/sensitivity   # new caps, no rescan

Prunes each conv / linear weight alone (magnitude, no fine-tuning) at every --levels sparsity and
measures top-1 on --images *training* images (never the test set: the caps are a design
choice).  Writes OUT/sensitivity.jsonl (one row per layer and level), OUT/caps.json ({layer: the
highest level whose drop stays within --tolerance points}, only for layers that cannot take the
highest level) and OUT/sensitivity.png (drop per layer and level).  The drops are before any
fine-tuning, which recovers much of them: the tolerance flags the layers that collapse (the
stride-2 blocks of MobileNet-v2 lose tens of points at 90%), not every layer that moves.
Global pruning with caps still meets its target sparsity: the other layers make up the zeros.
Use the caps when pruning:

    python tools/sweep.py run SWEEP.yaml --caps OUT/caps.json --out runs/capped ...
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.pipeline.data import evaluate, load_dataset  # noqa: E402
from mbz.pipeline.sensitivity import LEVELS, caps_from, scan  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402
from mbz.models import arch_of, build_model  # noqa: E402


def plot(rows, baseline, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    names = list(dict.fromkeys(r["name"] for r in rows))
    levels = sorted({r["sparsity"] for r in rows})
    drop = np.full((len(names), len(levels)), np.nan)
    for r in rows:
        drop[names.index(r["name"]), levels.index(r["sparsity"])] = baseline - r["top1"]
    fig, ax = plt.subplots(figsize=(1.2 * len(levels) + 4, 0.18 * len(names) + 1.5))
    im = ax.imshow(np.clip(drop, 0, 10), aspect="auto", cmap="magma_r", vmin=0, vmax=10)
    ax.set_xticks(range(len(levels)), [f"{s:g}" for s in levels])
    ax.set_yticks(range(len(names)), [n.replace(".weight", "") for n in names], fontsize=6)
    ax.set_xlabel("sparsity of this layer alone (others dense)")
    fig.colorbar(im, ax=ax, label="top-1 drop (points, clipped at 10)")
    ax.set_title("Pruning sensitivity per layer, no fine-tuning\nCIFAR-10 (JPEG q75 export), training images",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="fp32 MobileNet-v2 state_dict (.pt or .mbz)")
    ap.add_argument("--recap", action="store_true",
                    help="only recompute OUT/caps.json from OUT/sensitivity.jsonl with this --tolerance")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="jpeg", help="jpeg | npz:PATH | cifar10:ROOT | folder:ROOT")
    ap.add_argument("--images", type=int, default=1000, help="training images to evaluate on (no augmentation)")
    ap.add_argument("--levels", default=",".join(f"{s:g}" for s in LEVELS), help="sparsities, comma-separated")
    ap.add_argument("--tolerance", type=float, default=5.0,
                    help="top-1 drop (points, before fine-tuning) a layer may cause at its cap")
    a = ap.parse_args()
    levels = [float(x) for x in a.levels.split(",") if x]
    if any(not 0 < s <= 1 for s in levels):
        ap.error("--levels must lie in (0, 1]")
    if a.recap:
        return recap(a.out, a.tolerance)
    if not a.checkpoint:
        ap.error("a CHECKPOINT is needed (or --recap)")
    os.makedirs(a.out, exist_ok=True)
    sd = read_checkpoint(a.checkpoint)
    model = build_model(arch_of(sd))
    model.load_state_dict(sd)
    model.eval()
    ds = load_dataset(a.data, "train").subset(a.images, seed=1)
    t0 = time.time()
    base = evaluate(model, ds)["top1"]
    try:
        from tqdm import tqdm
        progress = lambda items: tqdm(items, desc="scan", unit="eval")  # noqa: E731
    except ImportError:
        progress = None
    rows = scan(model, ds, levels, progress=progress)
    with open(os.path.join(a.out, "sensitivity.jsonl"), "w") as f:
        f.write(json.dumps({"command": "python tools/sensitivity.py " + " ".join(sys.argv[1:]), "baseline_top1": base,
                            "images": len(ds), "data": ds.source, "seconds": round(time.time() - t0, 1)}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    plot(rows, base, os.path.join(a.out, "sensitivity.png"))
    recap(a.out, a.tolerance)


def recap(out: str, tolerance: float) -> None:
    """OUT/caps.json from the scan in OUT/sensitivity.jsonl (its first line is the header)."""
    with open(os.path.join(out, "sensitivity.jsonl")) as f:
        head, *rows = [json.loads(line) for line in f]
    caps = caps_from(rows, head["baseline_top1"], tolerance)
    with open(os.path.join(out, "caps.json"), "w") as f:
        json.dump({"tolerance": tolerance, "baseline_top1": head["baseline_top1"], "caps": caps}, f, indent=1,
                  sort_keys=True)
    print(f"baseline top-1 {head['baseline_top1']:.2f} on {head['images']} training images; {len(caps)} of "
          f"{len(set(r['name'] for r in rows))} layers capped (tolerance {tolerance} points) -> "
          f"{os.path.join(out, 'caps.json')}", flush=True)


if __name__ == "__main__":
    main()
