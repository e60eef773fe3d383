"""Write the ARANS golden file (golden_v1_2_arans.mbz) and its expected hashes (golden_v1_2_arans.json).

    python tools/make_golden_arans.py --out /tmp/golden      # look at what the encoder writes now
    python tools/make_golden_arans.py --force                # replace tests/data/golden_v1_2_arans.* (format change only)

The file holds tensors whose sections the ARANS filter (format_spec.md §5.8) codes: 2-D weight codes
with the row / column zero-flag context and several lanes, 1-D signed codes, a bitmap mask, delta
entries and float32 per-channel scales (kind FLOAT32), all written by `mbz.save(..., profile="best")`.
tests/test_golden.py checks that the committed file keeps decoding to the hashes in the JSON file
and that it still exercises those features.  Uses the installed mbz package (or PYTHONPATH).
"""
import argparse
import json
import os

import torch

import mbz
from mbz.compare import tensor_digest as digest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
NAME = "golden_v1_2_arans"


def golden_state_dict():
    g = torch.Generator().manual_seed(2122)
    # sparse 4-bit per-channel weights: rows of different densities, some empty; bfloat16-valued scales
    q = torch.round(torch.randn(96, 200, generator=g) * 2).clamp(-7, 7)
    keep = torch.rand(96, 200, generator=g) < torch.linspace(0.0, 0.6, 96)[:, None]
    s = (torch.rand(96, generator=g) * 0.1 + 0.01).bfloat16().float()
    s[::5] = 1.0
    sparse = torch.zeros(30000)
    sparse[torch.randint(0, 30000, (400,), generator=g)] = torch.round(torch.randn(400, generator=g) * 3) * 0.5
    sparse[sparse == 0] = 0.0
    return {
        "conv.weight": (q * keep * s[:, None]).reshape(96, 200, 1, 1) + 0.0,  # + 0.0: no negative zeros
        "sparse.weight": sparse.reshape(150, 200),
        "bias": torch.round(torch.randn(400, generator=g) * 40).clamp(-127, 127) * 0.01 + 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(HERE), help="folder (default: tests/data)")
    ap.add_argument("--force", action="store_true", help=f"replace {NAME}.mbz / .json if they exist")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path, expect_path = os.path.join(a.out, NAME + ".mbz"), os.path.join(a.out, NAME + ".json")
    for p in (path, expect_path):
        if os.path.exists(p) and not a.force:
            ap.error(f"{p} exists; pass --force to replace it (only for a format change)")
    sd = golden_state_dict()
    mbz.save(sd, path, metadata={"purpose": "golden file for the ARANS filter; must keep decoding"}, profile="best")
    expect = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": digest(v)} for k, v in sd.items()}
    with open(expect_path, "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes")
        for rec in r.layout.records:
            print(" ", rec.name, rec.params, [(s.role.name, s.filter.name, s.stored) for s in rec.sections])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
