#!/usr/bin/env python
"""Prune, fold BN, quantize-aware fine-tune and pack MobileNet-v2 variants from a baseline.

    python tools/compress.py --baseline runs/baseline/baseline.pt --out runs/compress \
        --prune 0.8,0.9,0.95 --qat "s0.9_w4_a8,s0.9_w4_a4,s0.95_w4_a8"

A QAT name s<S>_w<W>_a<A> means: start from the model pruned to sparsity S, W-bit
weights (32 = float), A-bit activations (32 = float).  Pruning is gradual and
global (magnitude), each level fine-tuned --prune-epochs with masks enforced.
Writes OUT/<name>.mbz, OUT/<name>.pt, OUT/compress_log.jsonl, OUT/results.jsonl.
"""
import argparse
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.codecs.filters import zstd_available  # noqa: E402
from mbz.pipeline.compress import QatConfig, prune_schedule, qat_run  # noqa: E402
from mbz.pipeline.sweep_run import load_caps  # noqa: E402
from mbz.pipeline.data import load_dataset  # noqa: E402
from mbz.pipeline.train import TrainConfig  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402
from mbz.models import arch_of, mobilenet_v2_cifar  # noqa: E402


def parse_name(name: str, epochs: int, lr: float) -> QatConfig:
    m = re.fullmatch(r"s([0-9.]+)_w(\d+)_a(\d+)", name)
    if not m:
        raise SystemExit(f"bad QAT name {name!r}: expected s<sparsity>_w<bits>_a<bits>")
    return QatConfig(name, float(m.group(1)), int(m.group(2)), int(m.group(3)), epochs, lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--data", default="jpeg")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prune", default="0.9", help="comma-separated sparsity levels, reached in this order")
    ap.add_argument("--prune-epochs", type=int, default=4)
    ap.add_argument("--prune-lr", type=float, default=0.05)
    ap.add_argument("--caps", default="", help="caps.json of tools/sensitivity.py (per-layer sparsity caps)")
    ap.add_argument("--qat", required=True, help="comma-separated names s<S>_w<W>_a<A>")
    ap.add_argument("--qat-epochs", type=int, default=12)
    ap.add_argument("--qat-lr", type=float, default=0.02)
    ap.add_argument("--subset", type=int, default=0, help="CPU smoke test on N images")
    ap.add_argument("--time-budget", type=float, default=0, help="skip remaining QAT runs past this many seconds")
    ap.add_argument("--no-pt", action="store_true", help="do not write OUT/<name>.pt (the fp32 export)")
    a = ap.parse_args()
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr, te = load_dataset(a.data, "train"), load_dataset(a.data, "test")
    if a.subset:
        tr, te = tr.subset(a.subset), te.subset(max(100, a.subset // 5))
    tr, te = tr.to(dev), te.to(dev)
    base = read_checkpoint(a.baseline)
    arch_kw = arch_of(base)
    log = os.path.join(a.out, "compress_log.jsonl")
    results = os.path.join(a.out, "results.jsonl")
    qats = [parse_name(n, a.qat_epochs, a.qat_lr) for n in a.qat.split(",") if n]
    levels = sorted({float(x) for x in a.prune.split(",") if x} | {q.sparsity for q in qats} - {0.0})
    pruned = {0.0: base}
    model = mobilenet_v2_cifar(**arch_kw).to(dev)
    model.load_state_dict(base)
    base_cfg = TrainConfig(batch=min(512, len(tr)))
    for s, sd, _ in prune_schedule(model, tr, te, levels, a.prune_epochs, a.prune_lr, log, dev, base_cfg,
                                   caps=load_caps(a.caps)):
        pruned[s] = sd
        print(f"pruned to {s:.2f} at {time.time() - t0:.0f}s", flush=True)
    for q in qats:
        if a.time_budget and time.time() - t0 > a.time_budget:
            print(f"time budget reached: skipping {q.name}", flush=True)
            continue
        r = qat_run(pruned[q.sparsity], q, tr, te, a.out, log, dev, arch_kw, pack=True, zstd=zstd_available(),
                    save_pt=not a.no_pt)
        with open(results, "a") as f:
            f.write(json.dumps({k: v for k, v in r.items() if k != "sparsity_layers"}) + "\n")
        with open(os.path.join(a.out, f"{q.name}.layers.json"), "w") as f:
            json.dump(r["sparsity_layers"], f)
        print(json.dumps({k: r.get(k) for k in ("name", "top1_qat_eval", "top1_packed", "file_bytes", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
