#!/usr/bin/env python3
"""More QAT epochs for a packed quantized model, e.g. a soup of runs (tools/soup.py), on the GPU.

    python tools/qat_resume.py results/final200_lr/soup/soup3.mbz --name soup3_e4 --epochs 4 --lr 0.005 \\
        --kd 0.5 --baseline BASELINE.pt --data npz:.devdata --out runs/soup

Architecture, zero pattern, weight bits / granularity, steps and activation ranges all come
from the file (mbz.pipeline.compress.qat_resume); --baseline is only the distillation teacher.
Writes OUT/NAME.mbz (packed, zstd where available), appends the per-epoch log to
OUT/train_log.jsonl and one result line to OUT/runs.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mbz.codecs.filters import zstd_available  # noqa: E402
from mbz.pipeline.compress import qat_resume  # noqa: E402
from mbz.pipeline.data import load_dataset  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402
from mbz.models import arch_of, mobilenet_v2_cifar  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a packed QAT model (.mbz with arch.folded_bn and 'compression' metadata)")
    ap.add_argument("--name", required=True, help="run name: OUT/NAME.mbz")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--kd", type=float, default=0.5, help="distillation weight (0: off, no --baseline needed)")
    ap.add_argument("--baseline", default=None, help="fp32 teacher checkpoint (.pt or .mbz)")
    ap.add_argument("--data", default="jpeg", help="jpeg | npz:DIR | cifar10:ROOT | folder:ROOT")
    ap.add_argument("--out", required=True)
    ap.add_argument("--subset", type=int, default=0, help="train/test on N images (CPU smoke test)")
    a = ap.parse_args(argv)
    if a.kd and not a.baseline:
        ap.error("--kd > 0 needs --baseline (the teacher)")
    os.makedirs(a.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr, te = load_dataset(a.data, "train"), load_dataset(a.data, "test")
    if a.subset:
        tr, te = tr.subset(a.subset), te.subset(a.subset)
    teacher = None
    if a.kd:
        base = read_checkpoint(a.baseline)
        teacher = mobilenet_v2_cifar(**arch_of(base))
        teacher.load_state_dict(base)
    res = qat_resume(a.file, a.name, a.epochs, a.lr, a.kd, tr, te, a.out, os.path.join(a.out, "train_log.jsonl"),
                     device, teacher=teacher, zstd=zstd_available())
    res["resumed_from"] = a.file
    print(f"{a.name}: top-1 {res['top1_packed']:.2f} (packed), {res['file_bytes']:,} B", flush=True)
    with open(os.path.join(a.out, "runs.jsonl"), "a") as f:
        f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
