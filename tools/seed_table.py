"""Per-seed table of a recipe run with several seeds (`mbz compress` summaries), with mean / min / max.

Reads DIR/seed*/summary.json (and baseline.json beside it), writes DIR/seeds.json and prints a
Markdown table: baseline top-1 (validation, then the one test evaluation), the final file's bytes,
its top-1 (validation, test), the drop against its own baseline on the test set, and the ratio of
the fp32 checkpoint's bytes (torch.save of the architecture's state_dict) to the file's bytes.

    python tools/seed_table.py results/resnet18_cifar [--stage reduce/NAME] [--force]
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shlex
import statistics
import sys

import torch


def fp32_checkpoint_bytes(arch: dict) -> int:
    """Bytes of torch.save(state_dict) of `arch` in fp32 (what a user's dense checkpoint weighs)."""
    from mbz.models import build_model
    buf = io.BytesIO()
    torch.save(build_model(arch).state_dict(), buf)
    return buf.tell()


def rows(root: str, stage: str | None) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "seed*", "summary.json"))):
        d = os.path.dirname(path)
        with open(path) as f:
            s = json.load(f)
        with open(os.path.join(d, "baseline.json")) as f:
            b = json.load(f)
        models = [m for m in s["models"] if stage is None or m["stage"] == stage]
        m = models[-1]
        out.append({"seed": int(os.path.basename(d)[4:]), "arch": b["arch"], "device": m["device"],
                    "baseline_val": list(s["baseline_top1"].values())[0], "baseline_test": s["baseline_top1_test"],
                    "stage": m["stage"], "file_bytes": m["file_bytes"], "top1_val": m["top1"],
                    "top1_test": m["top1_test"], "drop_test": round(s["baseline_top1_test"] - m["top1_test"], 2)})
    return out


def aggregate(rs: list[dict], key: str) -> dict:
    """{'mean' (2 decimals), 'min', 'max'} of rs[*][key]."""
    v = [r[key] for r in rs]
    return {"mean": round(statistics.mean(v), 2), "min": min(v), "max": max(v)}


def write_seeds_json(root: str, out: dict, force: bool, prog: str) -> bool:
    """Write ROOT/seeds.json atomically; False (and a line on stderr) when it exists and not `force`."""
    dst = os.path.join(root, "seeds.json")
    if os.path.exists(dst) and not force:
        print(f"{prog}: {dst} exists (--force to overwrite)", file=sys.stderr)
        return False
    tmp = dst + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    os.replace(tmp, dst)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder with seed*/summary.json")
    ap.add_argument("--stage", help="the stage whose file is reported (default: the summary's last model)")
    ap.add_argument("--force", action="store_true", help="overwrite ROOT/seeds.json")
    a = ap.parse_args(argv)
    rs = rows(a.root, a.stage)
    if not rs:
        print(f"seed_table: no seed*/summary.json under {a.root}", file=sys.stderr)
        return 2
    ref = fp32_checkpoint_bytes(rs[0]["arch"])
    for r in rs:
        r["fp32_checkpoint_bytes"] = ref
        r["ratio_vs_fp32"] = round(ref / r["file_bytes"], 1)

    out = {"command": "python tools/seed_table.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "seeds": len(rs), "data": "CIFAR-10 (JPEG q75 export)",
           "selection": "every choice on 5,000 training images held out; the test set evaluated once per file",
           "rows": rs, **{k: aggregate(rs, k) for k in ("baseline_test", "top1_test", "drop_test", "file_bytes", "ratio_vs_fp32")}}
    if not write_seeds_json(a.root, out, a.force, "seed_table"):
        return 2
    print("| seed | baseline top-1 val / test | file bytes | top-1 val / test | drop (test) | x smaller than fp32 .pt |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rs:
        print(f"| {r['seed']} | {r['baseline_val']:.2f} / {r['baseline_test']:.2f} | {r['file_bytes']:,} | "
              f"{r['top1_val']:.2f} / {r['top1_test']:.2f} | {r['drop_test']:.2f} | {r['ratio_vs_fp32']} |")
    d = out["drop_test"]
    print(f"\n{len(rs)} seed{'s' if len(rs) != 1 else ''}: drop mean {d['mean']:.2f} (min {d['min']:.2f}, max {d['max']:.2f}); "
          f"fp32 checkpoint {ref:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
