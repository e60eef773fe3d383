"""Price a mixed-precision scan's rows again (each layer's bytes on the grid it rounds to, as `mbz
mixed-precision` now does) and make a plan from it: how results/mnv2_200k_mp/plans/scan_seed2.jsonl and
seed2.json were made from the GPU scan scan_seed2_gpu.jsonl.  The old price is kept as `bytes_gpu_scan`.

    python tools/reprice_scan.py runs/200k_s2/restart/s0.93_c1.mbz results/mnv2_200k_mp/plans/scan_seed2_gpu.jsonl \\
        --out scan_seed2.jsonl --plan seed2.json --bits 4 --extra 17400
"""
import argparse
import json

from mbz.pipeline import mixed

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("checkpoint", help="the model the scan was made of (fp32, BatchNorm not folded)")
ap.add_argument("scan", help="scan.jsonl of mbz mixed-precision")
ap.add_argument("--out", required=True, help="the scan with its bytes priced again (JSONL)")
ap.add_argument("--plan", required=True, help="the plan JSON for the budget below")
ap.add_argument("--bits", type=int, default=4, help="the uniform width the budget starts from (4)")
ap.add_argument("--extra", type=int, required=True, help="bytes added to that width's scanned bytes")
a = ap.parse_args()
sd, arch = mixed.model_of(a.checkpoint)
params = dict(mixed.folded_model(sd, arch).named_parameters())
total = sum(p.numel() * 4 for p in params.values())
head, rows = mixed.read_scan(a.scan)
for r in rows:
    r["bytes_gpu_scan"] = r["bytes"]
    w = params[r["name"]]
    r["bytes"] = mixed.packed_bytes(r["name"], w, total, mixed.ptq_codes(w, r["bits"]))
with open(a.out, "w") as f:
    for x in [head] + rows:
        f.write(json.dumps(x) + "\n")
budget = mixed.plan_bytes(rows, mixed.uniform_plan(rows, a.bits)) + a.extra
plan = mixed.allocate(rows, head["base"]["loss"], budget)
doc = {"budget_bytes": budget, "scanned_bytes": mixed.plan_bytes(rows, plan),
       "predicted_dloss": mixed.predicted_dloss(rows, head["base"]["loss"], plan),
       "mean_bits": mixed.mean_bits(plan, {r["name"]: r["numel"] for r in rows}), "scan": head["settings"],
       "layer_bits": plan}
with open(a.plan, "w") as f:
    json.dump(doc, f, indent=1)
print(f"{a.plan}: {doc['scanned_bytes']:,} of {budget:,} B, mean {doc['mean_bits']:.2f} bits")
