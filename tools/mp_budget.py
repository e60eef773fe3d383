"""Print the --budget of a mixed-precision plan: the uniform-width bytes of a scan plus a margin.

    python tools/mp_budget.py runs/200k_scan/scan.jsonl --bits 4 --extra 16000
"""
import argparse
import sys

sys.path.insert(0, ".")
from mbz.pipeline.mixed import plan_bytes, read_scan, uniform_plan  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("scan", help="scan.jsonl of mbz mixed-precision")
ap.add_argument("--bits", type=int, default=4, help="the uniform width the budget starts from (4)")
ap.add_argument("--extra", type=int, default=16000, help="bytes added to it (16000)")
a = ap.parse_args()
_, rows = read_scan(a.scan)
print(plan_bytes(rows, uniform_plan(rows, a.bits)) + a.extra)
