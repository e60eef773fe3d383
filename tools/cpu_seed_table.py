"""Per-seed table of a MobileNet-v2 recipe against a size and accuracy target, from each seed's CPU evaluation.

Reads ROOT/seed*/cpu_eval.json (`mbz eval FILE --json` of the seed's final file on the CPU) and
ROOT/seed*/summary.json (the recipe run), writes ROOT/seeds.json (the rows, mean / min / max, how many
seeds meet the target; read by the report through results/index.json 'recipe_seeds') and prints a
Markdown table.  The target: top-1 >= BASELINE - MAX_DROP and file bytes <= MAX_BYTES.

    python tools/cpu_seed_table.py results/mnv2_200k_soup3 --baseline 92.67 --max-bytes 200000 \\
        --recipe recipes/mnv2_200k_soup3.yaml --baseline-note "results/baseline/baseline.mbz ..." [--force]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys

from seed_table import aggregate, write_seeds_json  # tools/ beside this script


def rows(root: str, floor: float, max_bytes: int) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "seed*", "cpu_eval.json"))):
        d = os.path.dirname(path)
        with open(path) as f:
            ev = json.load(f)
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        last = s["models"][-1]
        out.append({"seed": int(os.path.basename(d)[4:]), "stage": last["stage"],
                    "file": os.path.relpath(os.path.join(d, os.path.basename(ev["file"])), os.path.dirname(root)),
                    "file_bytes": ev["file_bytes"], f"top1_{last['device']}": last.get("top1"),
                    "top1_cpu": ev["top1"],
                    "meets_target": ev["top1"] >= floor and ev["file_bytes"] <= max_bytes})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder with seed*/cpu_eval.json and seed*/summary.json")
    ap.add_argument("--baseline", type=float, required=True, help="the baseline's top-1 (%%) the drop is measured from")
    ap.add_argument("--baseline-note", default="", help="what the baseline is (written into seeds.json)")
    ap.add_argument("--max-drop", type=float, default=1.0, help="points below the baseline allowed (default 1.0)")
    ap.add_argument("--max-bytes", type=int, required=True, help="file size allowed, bytes")
    ap.add_argument("--recipe", required=True, help="the recipe the seeds ran (written into seeds.json)")
    ap.add_argument("--force", action="store_true", help="overwrite ROOT/seeds.json")
    a = ap.parse_args(argv)
    floor = round(a.baseline - a.max_drop, 2)
    rs = rows(a.root, floor, a.max_bytes)
    if not rs:
        print(f"cpu_seed_table: no seed*/cpu_eval.json under {a.root}", file=sys.stderr)
        return 2
    for r in rs:
        r["drop_cpu"] = round(a.baseline - r["top1_cpu"], 2)

    out = {"command": "python tools/cpu_seed_table.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "recipe": a.recipe, "data": "CIFAR-10 (JPEG q75 export), 10,000 test images, each file evaluated once (CPU)",
           "baseline": a.baseline_note or f"{a.baseline:.2f}%",
           "target": f"top1 >= {floor:.2f} (baseline - {a.max_drop}) and <= {a.max_bytes:,} B",
           "rows": rs, "top1_cpu": aggregate(rs, "top1_cpu"), "file_bytes": aggregate(rs, "file_bytes"),
           "seeds_meeting_target": sum(r["meets_target"] for r in rs)}
    if not write_seeds_json(a.root, out, a.force, "cpu_seed_table"):
        return 2
    print("| seed | file bytes | top-1 (CPU) | drop | target met |")
    print("| --- | --- | --- | --- | --- |")
    for r in rs:
        print(f"| {r['seed']} | {r['file_bytes']:,} | {r['top1_cpu']:.2f} | {r['drop_cpu']:.2f} | "
              f"{'yes' if r['meets_target'] else 'no'} |")
    t = out["top1_cpu"]
    print(f"\n{len(rs)} seeds: top-1 mean {t['mean']:.2f} (min {t['min']:.2f}, max {t['max']:.2f}); "
          f"{out['seeds_meeting_target']} of {len(rs)} meet {out['target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
