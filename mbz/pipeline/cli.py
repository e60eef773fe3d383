"""`mbz eval`: top-1 of a packed model plus its size figures."""
from __future__ import annotations

import json


def evaluate_file(path: str, ds, device: str = "cpu", state_dict: dict | None = None) -> dict:
    """evaluate() of the model rebuilt from a .mbz file, with the preprocessing its metadata records
    (`state_dict`: other tensors for the same model, e.g. a soup's weights before re-snapping)."""
    import torch

    from .. import api
    from .data import MEAN, STD, evaluate
    model = api.load_model(path)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    with api.open(path) as r:
        pre = r.metadata.get("preprocess", {})
    dev = torch.device(device)
    return evaluate(model.to(dev), ds, device=dev, mean=tuple(pre.get("mean", MEAN)), std=tuple(pre.get("std", STD)))


def cmd_eval(a) -> int:
    from .. import api
    from ..summary import summarize
    from .data import load_dataset
    with api.open(a.file) as r:
        s = summarize(r, decode=False)
        arch = r.metadata.get("arch", {})
    ds = load_dataset(a.data, "test")
    if a.limit:
        ds = ds.subset(a.limit)
    ev = evaluate_file(a.file, ds, a.device)
    abits = arch.get("act_bits", 32)
    out = {"file": a.file, "data": ds.source, "n": ev["n"], "top1": ev["top1"], "file_bytes": s["file_bytes"],
           "file_mb": s["file_mb"], "model_compression_ratio": s["model_compression_ratio"],
           "weight_compression_ratio": s["weight_compression_ratio"],
           "activation_bits": abits, "activation_compression_ratio": 32 / abits,
           "categories": s["categories"]}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{a.file}: top-1 {ev['top1']:.2f}% on {ev['n']} images of {ds.source}")
    print(f"file {s['file_bytes']:,d} bytes ({s['file_mb']:.4f} MB, every byte counted); "
          f"model CR {s['model_compression_ratio']:.2f}x, weight CR {s['weight_compression_ratio']:.2f}x, "
          f"activations {abits}-bit = {32 / abits:.1f}x vs fp32 (per-tensor quantizers in the file's metadata)")
    print("bytes by category: " + ", ".join(f"{k} {v:,d}" for k, v in s["categories"].items() if v))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="top-1 of a packed model (rebuilt with mbz.load_model) and its size figures")
    p.add_argument("file")
    p.add_argument("--data", default="jpeg", help="jpeg (the shared CIFAR-10 JPEG q75 export, or $MBZ_DATA), "
                   "npz:PATH, cifar10:ROOT (torchvision, downloads) or folder:ROOT")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=0, help="evaluate on a random subset of N images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)
