"""Write the format 1.2 golden file of float32 quantized scales (golden_v1_2_qscales.mbz / .json).

    python tools/make_golden_v1_2_qscales.py --out /tmp/golden   # look at what the encoder writes now
    python tools/make_golden_v1_2_qscales.py --force             # replace tests/data/golden_v1_2_qscales.*

Format 1.2 lets a quantized dtype's SCALES be float32 (`sb` = 4, spec §5.3.1) when every float64 scale is a
float32 value.  The file holds a qint8 per-channel tensor (float32-valued scales, as torch.ao's observers make
them, sparse codes) and a quint8 per-tensor one stored that way, and a qint8 per-channel tensor whose scales
are not float32 values (stored as float64, `sb` = 8).  tests/test_golden.py checks that the committed file
keeps decoding to golden_v1_2_qscales.json, forever.
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
    g = torch.Generator().manual_seed(12)
    w = torch.randn(6, 4, 3, 3, generator=g)
    w[w.abs() < 0.5] = 0
    s32 = (torch.rand(6, generator=g) / 50 + 1e-3).double()          # float32 values held as float64
    s64 = torch.rand(5, generator=g).double() / 50 + 1e-3             # not float32 values
    return {"conv.weight": torch.quantize_per_channel(w, s32, torch.zeros(6, dtype=torch.long), 0, torch.qint8),
            "fc.weight": torch.quantize_per_channel(torch.randn(5, 7, generator=g), s64,
                                                    torch.zeros(5, dtype=torch.long), 0, torch.qint8),
            "act": torch.quantize_per_tensor(torch.rand(3, 4, generator=g), 0.0078125, 3, torch.quint8)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(HERE), help="folder (default: tests/data)")
    ap.add_argument("--force", action="store_true", help="replace golden_v1_2_qscales.* if they exist")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "golden_v1_2_qscales.mbz")
    expect_path = os.path.join(a.out, "golden_v1_2_qscales.json")
    for p in (path, expect_path):
        if os.path.exists(p) and not a.force:
            ap.error(f"{p} exists; pass --force to replace it (the committed file is never replaced for an encoder change)")
    mbz.save(golden_checkpoint(), path, metadata={"purpose": "golden file of format 1.2 (float32 quantized scales)"})
    with open(expect_path, "w") as f:
        json.dump(leaves(mbz.load_checkpoint(path)), f, indent=1, sort_keys=True)
    with mbz.open(path) as r:
        print(path, r.layout.file_size, "bytes", [(x.name, x.dtype.name, x.params.get("sb", 4)) for x in r.layout.records])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
