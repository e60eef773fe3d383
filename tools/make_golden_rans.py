"""Write the RANS golden file (golden_v1_1_rans.mbz) and its expected hashes (golden_v1_1_rans.json).

    python tools/make_golden_rans.py --out /tmp/golden      # look at what the encoder writes now
    python tools/make_golden_rans.py --force                # replace tests/data/golden_v1_1_rans.* (format change only)

The file holds tensors whose integer sections the RANS filter (format_spec.md §5.7) codes in
both alphabets (DIRECT, CLASSES), with left and upper-neighbour contexts, several lanes and
signed, unsigned, mask and delta streams.  tests/test_golden.py checks that the committed file
keeps decoding to the hashes in the JSON file and that it still exercises those features.
Uses the installed mbz package.
"""
import argparse
import json
import os

import torch

import mbz
from mbz.compare import tensor_digest as digest
from mbz.encoder import RANS_PROFILES

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
NAME = "golden_v1_1_rans"


def golden_state_dict():
    g = torch.Generator().manual_seed(2121)
    # sparse 4-bit per-channel weights with structure: rows of different densities (mask + codes)
    q = torch.round(torch.randn(48, 96, generator=g) * 2).clamp(-7, 7)
    keep = torch.rand(48, 96, generator=g) < torch.linspace(0.05, 0.9, 48)[:, None]
    s = torch.rand(48, generator=g) * 0.05 + 0.01
    # dense 12-bit codes (CLASSES alphabet), 3-bit unsigned-looking codes, a long sparse vector (deltas)
    wide = torch.round(torch.randn(64, 64, generator=g) * 300).clamp(-2047, 2047) * 0.001
    small = torch.randint(0, 3, (40, 50), generator=g).float() * 0.25
    sparse = torch.zeros(20000)
    sparse[torch.randint(0, 20000, (300,), generator=g)] = torch.round(torch.randn(300, generator=g) * 3) * 0.5
    sparse[sparse == 0] = 0.0
    cols = torch.rand(128, generator=g) < 0.5               # column-pruned: the upper neighbour predicts zeros
    colw = torch.round(torch.randn(64, 128, generator=g) * 1.5).clamp(-7, 7) * cols * 0.125
    return {
        "colpruned.weight": colw,
        "conv.weight": (q * keep * s[:, None]).reshape(48, 96, 1, 1),
        "wide.weight": wide,
        "small.weight": small,
        "sparse.weight": sparse.reshape(100, 200),
        "bias": torch.round(torch.randn(300, generator=g) * 40) * 0.01,
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
    assert "default" in RANS_PROFILES
    sd = golden_state_dict()
    mbz.save(sd, path, metadata={"purpose": "golden file for the RANS filter; must keep decoding"}, profile="default")
    expect = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": digest(v)} for k, v in sd.items()}
    with open(expect_path, "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes", r.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
