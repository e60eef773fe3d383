"""Lossless pack of a pruned, unquantized fp32 checkpoint (what torch.nn.utils.prune tutorials leave).

    python tools/bench_pruned_fp32.py --out results/format_inputs/pruned_fp32.json

torchvision ResNet-18 (10 classes, random init, seed 0), every conv / linear weight pruned 80% with
prune.l1_unstructured (X_orig / X_mask pairs, no prune.remove), torch.save'd, then `mbz pack` (default
profile) and `mbz pack --best`: bytes on disk, ratio to the fp32 tensors, pack seconds (one run each, CLI
in-process), load seconds (mbz.load, median of --repeats), the bytes by layout of the RAW tensors, every tensor
bit-identical to X_orig * X_mask (mbz verify).  `--remove`: prune.remove after pruning, the plain weights
users save after a tutorial (about half the pruned weights are then -0.0, kept bit for bit):

    python tools/bench_pruned_fp32.py --remove --out results/format_inputs/pruned_fp32_removed.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torchvision
from torch.nn.utils import prune

import mbz
from mbz.cli import main as mbz_cli


def load_seconds(path: str, repeats: int) -> float:
    """Median wall seconds of mbz.load(path)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mbz.load(path)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 3)


def bytes_by_layout(path: str) -> dict:
    """{'ENCODING LAYOUT': [tensors, stored section bytes]} of a file."""
    out = {}
    with mbz.open(path) as r:
        for rec, row in zip(r.layout.records, r.describe()):
            key = f"{row['encoding']} {row['layout']}"
            n, b = out.get(key, (0, 0))
            out[key] = (n + 1, b + sum(s.stored for s in rec.sections))
    return {k: list(v) for k, v in sorted(out.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON output")
    ap.add_argument("--amount", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=5, help="mbz.load runs per file (median)")
    ap.add_argument("--remove", action="store_true",
                    help="prune.remove after pruning (plain weights; about half the pruned ones become -0.0)")
    a = ap.parse_args()
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(mod, "weight", a.amount)
            if a.remove:
                prune.remove(mod, "weight")
    res = {"command": "python tools/bench_pruned_fp32.py " + " ".join(sys.argv[1:]),
           "load_average_start": os.getloadavg(), "model": f"torchvision resnet18(num_classes=10), random init (seed 0), conv/linear weights "
                    f"{a.amount:.0%} L1-unstructured pruned, "
                    + ("prune.remove'd (plain weights)" if a.remove else "masks kept (no prune.remove)"),
           "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        pt = os.path.join(tmp, "pruned.pt")
        torch.save(m.state_dict(), pt)
        res["torch_save_bytes"] = os.path.getsize(pt)
        res["negative_zeros"] = sum(int(((t == 0) & torch.signbit(t)).sum()) for t in m.state_dict().values()
                                    if t.is_floating_point())
        res["fp32_tensor_bytes"] = sum(t.numel() * t.element_size() for n, t in m.state_dict().items()
                                       if not n.endswith("_mask"))
        for name, extra in (("default", []), ("best", ["--best"])):
            out = os.path.join(tmp, f"{name}.mbz")
            t = time.perf_counter()
            assert mbz_cli(["pack", pt, "-o", out, "-q", *extra]) == 0
            sec = time.perf_counter() - t
            assert mbz_cli(["verify", out, pt]) == 0
            b = os.path.getsize(out)
            res[name] = {"bytes": b, "ratio_vs_fp32": round(res["fp32_tensor_bytes"] / b, 2), "pack_s": round(sec, 1),
                         "load_s": load_seconds(out, a.repeats), "by_layout": bytes_by_layout(out), "bit_exact": True}
            print(name, res[name])
    res["load_average_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
