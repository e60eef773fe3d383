"""Regenerate tests/data/golden_v1.mbz and its expected hashes (run only when the format changes).

    python tests/make_golden.py
"""
import hashlib
import json
import os

import torch

import mbz

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


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


def digest(t: torch.Tensor) -> str:
    b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(b).hexdigest()


if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    sd = golden_state_dict()
    path = os.path.join(HERE, "golden_v1.mbz")
    mbz.save(sd, path, metadata={"purpose": "golden file; must keep decoding"})
    expect = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": digest(v)} for k, v in sd.items()}
    with open(os.path.join(HERE, "golden_v1.json"), "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes", [x.encoding.name for x in r.layout.records])
