"""Write the format 1.2 golden file of the BITMAP layout of RAW (golden_v1_2_raw_bitmap.mbz / .json).

    python tools/make_golden_v1_2_raw_bitmap.py --out /tmp/golden   # look at what the encoder writes now
    python tools/make_golden_v1_2_raw_bitmap.py --force             # replace tests/data/golden_v1_2_raw_bitmap.*
    python tools/make_golden_v1_2_raw_bitmap.py --nz                # tests/data/golden_v1_2_raw_bitmap_nz.*

`--nz`: the negative zeros of BITMAP RAW (param nz, a NEGZERO section, spec §5.2): float32, float16,
bfloat16 and float64 tensors as `prune.remove` leaves them (about half the zeros -0.0), one without any -0.0.

Format 1.2 lets a RAW tensor store only its elements whose bits are not all zero, after a MASK section
(spec §5.2).  The file holds pruned float32 (with -0.0 and NaN payloads), float16, bfloat16, int16 and bool
tensors in that layout, one large enough for its stored elements to go through byte-plane zstd, and a dense
float32 tensor in plain RAW beside them.  tests/test_golden.py checks that the committed file keeps decoding
to golden_v1_2_raw_bitmap.json, forever.
"""
import argparse
import json
import os

import torch

import mbz
from mbz.compare import fingerprint as leaves

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")


def pruned(shape, amount: float, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=g)
    x[torch.rand(shape, generator=g) < amount] = 0
    return x


def golden_checkpoint():
    g = torch.Generator().manual_seed(34)
    conv = pruned((16, 8, 3, 3), 0.8, g)
    bits = conv.view(torch.int32).reshape(-1)
    bits[1], bits[2], bits[5] = -(1 << 31), 0x7FC01234, 0x7F800001  # -0.0, NaN payloads (stored elements)
    return {"conv.weight": conv,
            "fc.weight": pruned((10, 300), 0.9, g),
            "half.weight": pruned((32, 20), 0.75, g).half(),
            "bf16.weight": pruned((32, 20), 0.75, g).bfloat16(),
            "counts": (pruned((200,), 0.9, g) * 1000).to(torch.int16),
            "keep": pruned((300,), 0.95, g) != 0,
            "bias": torch.randn(10, generator=g)}


def golden_checkpoint_nz():
    g = torch.Generator().manual_seed(35)
    out = {}
    for name, dt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16), ("f64", torch.float64)):
        x = torch.randn(24, 20, generator=g)
        x[torch.rand(x.shape, generator=g) < 0.8] = 0
        x = x.to(dt) * torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0).to(dt)  # 0 x -1 = -0.0
        out[f"{name}.weight"] = x
    out["plus.weight"] = out["f32.weight"].abs()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(HERE), help="folder (default: tests/data)")
    ap.add_argument("--force", action="store_true", help="replace golden_v1_2_raw_bitmap.* if they exist")
    ap.add_argument("--nz", action="store_true", help="write golden_v1_2_raw_bitmap_nz.* (negative zeros) instead")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    stem = "golden_v1_2_raw_bitmap_nz" if a.nz else "golden_v1_2_raw_bitmap"
    path = os.path.join(a.out, stem + ".mbz")
    expect_path = os.path.join(a.out, stem + ".json")
    for p in (path, expect_path):
        if os.path.exists(p) and not a.force:
            ap.error(f"{p} exists; pass --force to replace it (the committed file is never replaced for an "
                     f"encoder change)")
    ck = golden_checkpoint_nz() if a.nz else golden_checkpoint()
    mbz.save(ck, path, metadata={"purpose": "golden file of format 1.2 (BITMAP layout of RAW"
                                            + (", negative zeros)" if a.nz else ")")})
    with open(expect_path, "w") as f:
        json.dump(leaves(mbz.load_checkpoint(path)), f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes")
        for rec, row in zip(r.layout.records, r.describe()):
            print(f"  {rec.name}: {row['encoding']} {row['layout']} {row['filters']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
