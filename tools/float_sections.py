"""What byte-plane zstd buys on float32 weight sections, and what it costs to decode (the default profile's 1/2 rule).

    python tools/float_sections.py --out results/format_inputs/float_sections.json

For each float32 tensor of 4096 elements or more of the dense fp32 reference MobileNet-v2 and of a random-init
torchvision ResNet-18 (10 classes): the saving of SHUFFLE_ZSTD (level 1, as the default profile's trial) and the
single-thread decode speed of the section (MB/s of decoded bytes, median of 5), against a plain copy of the bytes.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from mbz.codecs.filters import FILTERS, unfilter
from mbz.spec import Filter, Role

REFERENCE = os.environ.get("MBZ_REFERENCE", "/work/shared/data/reference_mnv2_cifar10_fp32.pt")


def measure(sd: dict) -> dict:
    raw = stored = 0
    dec = copy = 0.0
    savings = []
    for t in sd.values():
        if t.dtype != torch.float32 or t.numel() < 4096:
            continue
        b = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        z = FILTERS[Filter.SHUFFLE_ZSTD].encode(b, 4, 1)
        ts, tc = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            unfilter(Role.RAW, Filter.SHUFFLE_ZSTD, z, len(b), 4)
            ts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            np.array(b, copy=True)
            tc.append(time.perf_counter() - t0)
        dec += statistics.median(ts)
        copy += statistics.median(tc)
        raw += len(b)
        stored += len(z)
        savings.append(1 - len(z) / len(b))
    return {"tensors": len(savings), "bytes": raw, "shuffle_zstd1_bytes": stored, "saving": 1 - stored / raw,
            "saving_per_tensor_min_median_max": [min(savings), statistics.median(savings), max(savings)],
            "decode_MB_per_s": raw / 1e6 / dec, "plain_copy_MB_per_s": raw / 1e6 / copy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torchvision
    torch.manual_seed(0)
    res = {"command": "python tools/float_sections.py --out " + a.out, "cpus": os.cpu_count(),
           "resnet18_random_init": measure(torchvision.models.resnet18(num_classes=10).state_dict())}
    if os.path.exists(REFERENCE):
        res["mobilenet_v2_reference"] = measure(torch.load(REFERENCE, map_location="cpu", weights_only=True))
    print(json.dumps(res, indent=1))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
