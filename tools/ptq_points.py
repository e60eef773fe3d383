#!/usr/bin/env python
"""CPU frontier points: the fp32 baseline packed losslessly, and post-training weight quantization of it.

    python tools/ptq_points.py --baseline .devdata/baseline.pt --out results/ptq

(.devdata/baseline.pt is the baseline of results/baseline/, trained by tools/train.py on the GPU.)
Top-1 on CIFAR-10 (JPEG q75 export); activations stay fp32 in these points.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mbz  # noqa: E402
from mbz.pipeline.data import evaluate, load_dataset  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", default="results/ptq")
    ap.add_argument("--bits", default="8,6")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sd = read_checkpoint(a.baseline)
    te = load_dataset("jpeg", "test")
    arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 1.0, "dropout": 0.2}
    rows = []
    for bits in [None] + [int(b) for b in a.bits.split(",")]:
        name = "fp32_lossless" if bits is None else f"ptq_w{bits}_a32"
        path = os.path.join(a.out, name + ".mbz")
        rep = mbz.save(sd, path, wbits=bits, metadata={"arch": arch})
        top1 = evaluate(mbz.load_model(path), te, device=torch.device("cpu"))["top1"]
        rows.append({"name": name, "file_bytes": rep.file_bytes, "top1_packed": top1,
                     "config": {"sparsity": 0.0, "wbits": bits or 32, "abits": 32, "method": "PTQ" if bits else "none"}})
        print(rows[-1], flush=True)
        if bits is None:
            os.remove(path)  # 7.7 MB: not kept in the repository, the figure is
    with open(os.path.join(a.out, "results.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
