#!/usr/bin/env python3
"""Bytes vs top-1 of tools/rd_bench.py test rows, beside NNCodec's two points on the same checkpoint.

    python tools/rd_plot.py results/ratedist/test.json -o results/ratedist/rd_curve.png

NNCodec 2.1.3's points (issue 21): 488,974 B at 89.52% and 822,462 B at 90.30% (reference 90.46%).
Also prints, for each NNCodec point, the bytes of our curve at the same top-1 (linear interpolation
in log bytes between the two test rows around it) and their ratio.
"""
import argparse
import json
import math
import sys

NNCODEC = [(488974, 89.52), (822462, 90.30)]


def bytes_at(rows, acc):
    """Interpolated file bytes where the (bytes, top1) curve first reaches `acc`, or None."""
    pts = sorted((r["file_bytes"], r["top1"]) for r in rows)
    for (b0, a0), (b1, a1) in zip(pts, pts[1:]):
        if a0 < acc <= a1:
            f = (acc - a0) / (a1 - a0)
            return round(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0))))
    if pts and pts[0][1] >= acc:
        return None  # reached below the smallest size measured: not bracketed
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="rd_bench.py outputs (split test)")
    ap.add_argument("-o", "--out", help="PNG to write")
    ap.add_argument("--reference", type=float, default=90.46, help="top-1 of the dense checkpoint")
    a = ap.parse_args()
    rows = []
    for p in a.json:
        with open(p) as f:
            d = json.load(f)
        if d["rows"] and d["rows"][0]["split"] != "test":
            sys.exit(f"{p}: not a test-set run")
        rows += d["rows"]
    out = []
    for nb, acc in NNCODEC:
        ours = bytes_at(rows, acc)
        out.append({"nncodec_bytes": nb, "top1": acc, "ours_bytes": ours,
                    "ratio": round(ours / nb, 3) if ours else None})
    print(json.dumps(out))
    if a.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        pts = sorted((r["file_bytes"], r["top1"]) for r in rows)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] / 1000 for p in pts], [p[1] for p in pts], "o-", label="mbz pack --fold-bn --target-size")
        ax.plot([p[0] / 1000 for p in NNCODEC], [p[1] for p in NNCODEC], "s", color="C3", label="NNCodec 2.1.3")
        ax.axhline(a.reference, color="gray", lw=0.8, ls="--", label=f"dense fp32 ({a.reference}%)")
        ax.set_xlabel("file bytes (KB, everything counted)")
        ax.set_ylabel("top-1 % (CIFAR-10 JPEG q75 export test set, CPU)")
        ax.set_title("MobileNet-v2, no data, no training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.out, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
