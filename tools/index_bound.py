#!/usr/bin/env python3
"""How far a file's sparse indices are from two entropy bounds of its zero masks.

    python tools/index_bound.py examples/mobilenetv2_cifar10.mbz -o results/format/index_bound_400k.json

For every conv/linear weight with at least 1,000 positions: (a) the i.i.d. bound, n * H(density)
per tensor; (b) a per-row model, sum over output channels of m * H(row density), plus 8 bits
per row to send the densities.  Compared with the file's 'indices' bytes (every index byte of
the file, mbz accounting).  If (b) is not well below (a), a context coder for the masks has
little to gain over what the file already does.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import mbz


def h2(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def bounds(sd: dict) -> dict:
    iid = rows = 0.0
    n = 0
    for name, t in sd.items():
        if not name.endswith("weight") or t.dim() < 2 or t.numel() < 1000:
            continue
        m = (t != 0).reshape(t.shape[0], -1).numpy().astype(np.float64)
        iid += m.size * float(h2(np.array(m.mean())))
        rows += float((m.shape[1] * h2(m.mean(axis=1))).sum()) + 8 * m.shape[0]
        n += m.size
    return {"positions": n, "iid_bytes": round(iid / 8), "per_row_bytes": round(rows / 8)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("-o", "--out", default=None, help="JSON to write (atomically)")
    a = ap.parse_args(argv)
    with mbz.open(a.file) as r:
        row = {"file": a.file, "index_bytes_in_file": r.accounting()["categories"]["indices"], **bounds(r.decode_all())}
    print(json.dumps(row))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".tmp", "w") as f:
            json.dump(row, f, indent=1)
        os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
