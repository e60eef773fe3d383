"""Write the format 1.1 golden file (golden_v1_1.mbz) and what it decodes to (golden_v1_1.json).

    python tools/make_golden_v1_1.py --out /tmp/golden       # look at what the encoder writes now
    python tools/make_golden_v1_1.py --force                 # replace tests/data/golden_v1_1.* (format change only)

The file holds what format 1.1 added: a structure tree (epoch, nested dicts, lists, tuples,
a dtype, torch.Size, a Parameter, a BIGINT), quantized tensors (qint8 per channel with
sparse codes, quint8 per tensor), float8 / uint16 / complex64 tensors, a sparse COO tensor,
and shared storage (one record named twice, VIEW alias records).  tests/test_golden.py
checks that the committed file keeps decoding to the leaves in golden_v1_1.json, forever.
"""
import argparse
import json
import os
import warnings

import torch

import mbz
from mbz.compare import fingerprint as leaves

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
warnings.filterwarnings("ignore")


def golden_checkpoint():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(8, 3, 3, 3, generator=g)
    w[w.abs() < 0.7] = 0
    qw = torch.quantize_per_channel(w, torch.rand(8, generator=g).double() / 20 + 0.01,
                                    torch.zeros(8, dtype=torch.long), 0, torch.qint8)
    act = torch.quantize_per_tensor(torch.rand(2, 5, generator=g), 0.02, 17, torch.quint8)
    base = torch.randn(60, generator=g)
    emb = torch.randn(10, 4, generator=g)
    model = {"conv.weight": qw, "act": act, "emb.weight": emb, "head.weight": emb,
             "a": base[:30].view(5, 6), "b": base[30:].view(6, 5),
             "f8": torch.randn(16, generator=g).to(torch.float8_e4m3fn),
             "u16": torch.tensor([0, 1, 65535, 300], dtype=torch.uint16),
             "c64": torch.randn(3, generator=g, dtype=torch.complex64),
             "sp": torch.sparse_coo_tensor(torch.tensor([[0, 2], [1, 0]]), torch.tensor([1.5, -2.0]), (3, 2)),
             "p": torch.nn.Parameter(torch.randn(3, generator=g)),
             "fc._packed_params.dtype": torch.qint8}
    return {"epoch": 12, "model": model, "extra": [1.5, "x", None, True, (2, 3), torch.Size([4, 5]), 1 << 70],
            "opt": {"state": {0: {"momentum_buffer": torch.randn(4, generator=g)}}, "param_groups": [{"lr": 0.1}]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(HERE), help="folder (default: tests/data)")
    ap.add_argument("--force", action="store_true", help="replace golden_v1_1.mbz / .json if they exist")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path, expect_path = os.path.join(a.out, "golden_v1_1.mbz"), os.path.join(a.out, "golden_v1_1.json")
    for p in (path, expect_path):
        if os.path.exists(p) and not a.force:
            ap.error(f"{p} exists; pass --force to replace it (the committed file is never replaced for an encoder change)")
    ck = golden_checkpoint()
    mbz.save(ck, path, metadata={"purpose": "golden file of format 1.1; must keep decoding"})
    back = mbz.load_checkpoint(path)
    with open(expect_path, "w") as f:
        json.dump(leaves(back), f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes", [(x.name, x.dtype.name, x.encoding.name) for x in r.layout.records])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
