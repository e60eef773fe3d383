#!/usr/bin/env python
"""Activation memory of a packed model: per layer, total and peak, fp32 vs packed integers (batch 1 and B).

    python tools/measure_activations.py examples/mobilenetv2_cifar10.mbz --out results/activations

The method is in mbz/pipeline/activations.py.  Also checks that holding activations
as packed bytes changes no logit.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mbz  # noqa: E402
from mbz.pipeline.activations import measure  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--out", default="results/activations")
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    model = mbz.load_model(a.file)
    res = {"file": a.file, "command": f"python tools/measure_activations.py {a.file} --out {a.out} --batch {a.batch}"}
    g = torch.Generator().manual_seed(0)
    for b in (1, a.batch):
        x = torch.randn(b, 3, 32, 32, generator=g)
        with torch.no_grad():
            ref = model(x)
        m = measure(model, x)
        m["logits_unchanged"] = bool(torch.equal(m.pop("output"), ref))
        res[f"batch{b}"] = m
    with open(os.path.join(a.out, "activations.json"), "w") as f:
        json.dump(res, f, indent=1)
    b1, bb = res["batch1"], res[f"batch{a.batch}"]
    L = [f"# Activation memory of {a.file}", "", f"Command: `{res['command']}`", "",
         "Measured by packing every inter-layer activation with mbz's bit packer during a real inference "
         "(method: mbz/pipeline/activations.py). Logits identical to the unpacked run: "
         f"{b1['logits_unchanged'] and bb['logits_unchanged']}.", "",
         "| batch | all activations fp32 | packed | ratio | peak live fp32 | peak live packed | ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ("batch1", f"batch{a.batch}"):
        r = res[k]
        L.append(f"| {r['batch']} | {r['total_fp32_bytes']:,} | {r['total_packed_bytes']:,} | {r['total_ratio']:.2f}x | "
                 f"{r['peak_fp32_bytes']:,} | {r['peak_packed_bytes']:,} | {r['peak_ratio']:.2f}x |")
    L += ["", "Per layer (batch 1): measured packed bytes and the graph figure numel x bits / 8.", "",
          "| activation | numel | bits | fp32 bytes | packed bytes (measured) | graph bytes |", "|---|---:|---:|---:|---:|---:|"]
    for r in b1["layers"]:
        L.append(f"| {r['name']} | {r['numel']:,} | {r['bits']} | {r['fp32_bytes']:,} | {r['packed_bytes']:,} | {r['graph_bytes']:,} |")
    with open(os.path.join(a.out, "activations.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L[:9]))


if __name__ == "__main__":
    main()
