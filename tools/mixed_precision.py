#!/usr/bin/env python3
"""Mixed precision by sensitivity against uniform bits at equal bytes (PTQ, on the CPU).

    python tools/mixed_precision.py /work/shared/data/reference_mnv2_cifar10_fp32.pt \\
        --data npz:/work/shared/data --val 5000 --images 512 --out results/mixed_precision --files runs/mixed

1. Scan (mbz.pipeline.mixed.scan_bits): BatchNorm folded, each conv / linear weight alone quantized
   at each --bits width; cross-entropy and top-1 on --images images of the validation split (the last
   --val training images of the fixed permutation, as `data: {val: N}` in a recipe) and the packed
   bytes of that layer.  OUT/scan.jsonl (header line, then one row per layer and width); reused when
   it exists with the same settings.
2. Plans: uniform --uniform widths; mixed (mbz.pipeline.mixed.allocate) at the scanned weight bytes
   of the uniform widths --mixed (3.5: half-way between the 3- and 4-bit plans).  OUT/plans/NAME.json.
3. Each plan: PTQ file (BatchNorm folded, weights on their grids, biases fp16, activations fp32)
   written to --files/NAME.mbz; its real size, top-1 and loss on --val-images images of the
   validation split that the scan did not use, and top-1 on the test set, evaluated once (rows in OUT/frontier.jsonl; a plan already there is not
   evaluated again).  OUT/frontier.png, OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch


def log(s: str) -> None:
    print(time.strftime("%H:%M:%S"), s, flush=True)


def read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="jpeg")
    ap.add_argument("--val", type=int, default=5000, help="training images held out (the recipe's data.val)")
    ap.add_argument("--images", type=int, default=512, help="validation images the scan evaluates on")
    ap.add_argument("--bits", default="2,3,4,5,6,8")
    ap.add_argument("--uniform", default="3,4,5,6,8", help="uniform widths evaluated")
    ap.add_argument("--mixed", default="2.5,3,3.5,4,5",
                    help="mixed plans at the scanned bytes of these uniform widths (x.5: half-way between two)")
    ap.add_argument("--val-images", type=int, default=1000,
                    help="validation images (not among the scanned ones) each plan is evaluated on")
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", required=True, help="folder for the PTQ .mbz files (not committed)")
    ap.add_argument("--test-images", type=int, default=0, help="0: the whole test set (a dry run: a few)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scan-only", action="store_true")
    ap.add_argument("--only", default="", help="evaluate only these plans (comma-separated names; several processes "
                                               "may share the work, each appending its rows)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import mbz
    from mbz.checkpoint import read_checkpoint
    from mbz.models import pipeline_arch
    from mbz.pipeline.baseline import load_splits
    from mbz.pipeline.evaluate import evaluate_file
    from mbz.pipeline.mixed import (allocate, folded_model, mean_bits, plan_bytes, predicted_dloss, ptq_metadata,
                                    ptq_state_dict, scan_bits, uniform_plan)
    bits = [int(x) for x in a.bits.split(",")]
    uniform = [int(x) for x in a.uniform.split(",")]
    mixed_at = [float(x) for x in a.mixed.split(",")]
    os.makedirs(os.path.join(a.out, "plans"), exist_ok=True)
    os.makedirs(a.files, exist_ok=True)
    command = "python tools/mixed_precision.py " + " ".join(sys.argv[1:])
    sd = read_checkpoint(a.checkpoint)
    arch = pipeline_arch({"name": "mobilenet_v2_cifar"}, sd)
    model = folded_model(sd, arch)
    _, val = load_splits(a.data, 0, a.val)
    scan_ds = val.subset(a.images, seed=1)
    perm = torch.randperm(len(val), generator=torch.Generator().manual_seed(1))   # as subset(): scan images first
    held = perm[a.images:a.images + a.val_images]
    val_ds = type(val)(val.images[held], val.labels[held], val.classes, f"{val.source}[{len(held)} not scanned]")
    settings = {"checkpoint": os.path.basename(a.checkpoint), "val": a.val, "images": a.images, "bits": bits,
                "data": val.source}
    scan_path = os.path.join(a.out, "scan.jsonl")
    rows = read_jsonl(scan_path)
    if rows and rows[0].get("settings") == settings:
        head, rows = rows[0], rows[1:]
        log(f"scan: {len(rows)} rows from {scan_path}")
    else:
        t = time.time()
        n = [0]

        def progress(items):
            for it in items:
                n[0] += 1
                if n[0] % 12 == 1:
                    log(f"scan {n[0]}/{len(items)}: {it[0]} at {it[1]} bits")
                yield it
        base, rows = scan_bits(model, scan_ds, bits, progress=progress)
        head = {"command": command, "settings": settings, "base": base, "seconds": round(time.time() - t, 1),
                "note": "one layer quantized at a time (BatchNorm folded, others fp32); loss: mean cross-entropy"}
        tmp = scan_path + ".tmp"
        with open(tmp, "w") as f:
            for r in [head, *rows]:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, scan_path)
        log(f"scan: {len(rows)} rows in {head['seconds']} s")
    if a.scan_only:
        return 0
    base_loss = head["base"]["loss"]
    numel = {r["name"]: r["numel"] for r in rows}
    plans = {}
    ubytes = {b: plan_bytes(rows, uniform_plan(rows, b)) for b in bits}
    for b in uniform:
        plans[f"uniform_w{b}"] = ("uniform", uniform_plan(rows, b))
    for x in mixed_at:
        lo, hi = math.floor(x), math.ceil(x)
        budget = (ubytes[lo] + ubytes[hi]) // 2 if lo != hi else ubytes[lo]
        plans[f"mixed_w{x:g}"] = ("mixed", allocate(rows, base_loss, budget))
    for name, (kind, p) in plans.items():
        with open(os.path.join(a.out, "plans", f"{name}.json"), "w") as f:
            json.dump({"kind": kind, "scanned_bytes": plan_bytes(rows, p),
                       "predicted_dloss": predicted_dloss(rows, base_loss, p), "mean_bits": mean_bits(p, numel),
                       "layer_bits": p}, f, indent=1)
    frontier_path = os.path.join(a.out, "frontier.jsonl")
    done = {r["plan"]: r for r in read_jsonl(frontier_path)}
    _, test = load_splits(a.data, 0, 0)
    if a.test_images:
        test = test.subset(a.test_images)
    for name, (kind, p) in sorted(plans.items(), key=lambda kv: plan_bytes(rows, kv[1][1])):
        if name in done or (a.only and name not in a.only.split(",")):
            continue
        t = time.time()
        qsd = ptq_state_dict(model, p)
        path = os.path.join(a.files, f"{name}.mbz")
        meta = ptq_metadata(arch, p, 32, {"mixed_precision": {"kind": kind, "scan": "scan.jsonl",
                                                               "scanned_bytes": plan_bytes(rows, p)},
                                          "dataset": "CIFAR-10 (JPEG q75 export)"})
        rep = mbz.save(qsd, path, metadata=meta)
        ev_val = evaluate_file(path, val_ds)
        ev_test = evaluate_file(path, test)
        row = {"plan": name, "kind": kind, "file_bytes": rep.file_bytes, "scanned_weight_bytes": plan_bytes(rows, p),
               "mean_bits": round(mean_bits(p, numel), 3), "predicted_dloss": round(predicted_dloss(rows, base_loss, p), 4),
               "val_top1": ev_val["top1"], "val_loss": round(ev_val["loss"], 4), "test_top1": ev_test["top1"],
               "val_images": len(val_ds), "test_images": len(test), "seconds": round(time.time() - t, 1)}
        with open(frontier_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        log(f"{name}: {row['file_bytes']:,} B, val {row['val_top1']:.2f} (loss {row['val_loss']}), "
            f"test {row['test_top1']:.2f}")
    done = {r["plan"]: r for r in read_jsonl(frontier_path)}
    write_outputs(a.out, list(done.values()), command, head)
    return 0


def write_outputs(out: str, rows: list, command: str, head: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["file_bytes"])
    lines = ["| plan | kind | mean bits | file bytes | val top-1 | val loss | test top-1 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['plan']} | {r['kind']} | {r['mean_bits']:.2f} | {r['file_bytes']:,} | {r['val_top1']:.2f} | "
                     f"{r['val_loss']:.4f} | {r['test_top1']:.2f} |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, style in (("uniform", "o-"), ("mixed", "s-")):
        rs = [r for r in rows if r["kind"] == kind]
        ax.plot([r["file_bytes"] / 1000 for r in rs], [r["test_top1"] for r in rs], style, label=f"{kind} bits")
        for r in rs:
            ax.annotate(f"{r['mean_bits']:.2f}b", (r["file_bytes"] / 1000, r["test_top1"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("file size (KB, every byte)")
    ax.set_ylabel("top-1 (%), CIFAR-10 (JPEG q75 export) test set")
    ax.set_title("MobileNet-v2 PTQ (BN folded, fp32 activations): per-layer bits\nfrom a sensitivity scan vs uniform "
                 "bits", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "frontier.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
