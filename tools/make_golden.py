"""Write a golden file (golden_v1.mbz) and its expected hashes (golden_v1.json) with today's encoder.

    python tools/make_golden.py --out /tmp/golden          # look at what the encoder writes now
    python tools/make_golden.py --force                    # replace tests/data/golden_v1.* (format change only)

tests/test_golden.py checks that the committed tests/data/golden_v1.mbz keeps decoding to the
hashes in golden_v1.json, forever.  The encoder may choose other encodings for the same tensors
than the one that wrote the committed file (the bytes differ, the decoded tensors do not), so
the committed file is never replaced for that: only a new format version needs a new golden
file, and the old one stays.  Uses the installed mbz package.
"""
import argparse
import json
import os

import torch

import mbz
from mbz.compare import tensor_digest as digest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")


def golden_state_dict():
    g = torch.Generator().manual_seed(1234)
    q = torch.randint(-7, 8, (8, 4, 3, 3), generator=g).float()
    q[torch.rand(q.shape, generator=g) < 0.6] = 0
    s = torch.rand(8, generator=g) * 0.1 + 0.01
    neg = torch.randint(-3, 4, (5, 6), generator=g).float() * 0.5
    neg[neg == 0] = -0.0
    sparse = torch.zeros(3000)
    sparse[torch.randint(0, 3000, (20,), generator=g)] = 1.5
    table = torch.randn(5, generator=g)
    return {
        "conv.weight": q * s[:, None, None, None],                               # AFFINE channel, bitmap
        "neg.weight": neg,                                                        # AFFINE with NEGZERO
        "sparse.weight": sparse.reshape(30, 100),                                 # AFFINE delta
        "cb.weight": table[torch.randint(0, 5, (40, 40), generator=g)],           # CODEBOOK
        "bn.running_var": torch.rand(8, generator=g),                             # RAW fp32
        "bn.num_batches_tracked": torch.tensor(123, dtype=torch.int64),           # RAW int64
        "half": torch.randn(4, 4, generator=g).half(),                            # RAW fp16
        "flags": torch.tensor([True, False, True]),                               # RAW bool
        "empty": torch.zeros(0, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(HERE), help="folder (default: tests/data)")
    ap.add_argument("--force", action="store_true", help="replace golden_v1.mbz / .json if they exist")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path, expect_path = os.path.join(a.out, "golden_v1.mbz"), os.path.join(a.out, "golden_v1.json")
    for p in (path, expect_path):
        if os.path.exists(p) and not a.force:
            ap.error(f"{p} exists; pass --force to replace it (see the note above: usually you should not)")
    sd = golden_state_dict()
    mbz.save(sd, path, metadata={"purpose": "golden file; must keep decoding"})
    expect = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": digest(v)} for k, v in sd.items()}
    with open(expect_path, "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes", [x.encoding.name for x in r.layout.records])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
