"""Runs made from the second baseline (results/baseline2): one reader for the frontier table and REPORT.md.

Rows come from results/{final,final_a4,final200,final200_lr}/runs.jsonl (sweep rows: top-1 of the packed model on the
GPU, drop against the baseline the runner evaluated) and from their reduced/reduce_log.jsonl
(tools/reduce_params.py: top-1 before and after on the CPU, drop against baseline2's CPU top-1).
"""
from __future__ import annotations

import json
import os

FOLDERS = {"final": "baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep",
           "final_a4": "baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep",
           "final200": "baseline2: prune+QAT+KD, 6 ep/level, 36 at the kept level + 20 QAT ep",
           "final200_lr": "baseline2: capped prune chain, 6 ep/level, 36 at the kept level + QAT at lr 0.01"}


def _jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def baseline2_cpu_top1(results: str) -> float | None:
    p = os.path.join(results, "baseline2", "cpu_eval.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)["top1"]


def later_runs(results: str, cpu: dict | None = None) -> list[dict]:
    """Rows {run, method, sparsity, wbits, abits, file_bytes, top1, drop, cpu_top1, cpu_drop}.

    top1/drop are the GPU figures (None for reduced files), cpu_top1/cpu_drop the CPU ones where
    measured: `cpu` ({normalized path: top-1}, e.g. from cpu_eval.jsonl) or reduce_params' "before".
    """
    base_cpu = baseline2_cpu_top1(results)
    if base_cpu is None:
        return []
    cpu = cpu or {}
    out = []
    for d, label in FOLDERS.items():
        for r in _jsonl(os.path.join(results, d, "runs.jsonl")):
            f = os.path.normpath(os.path.join(results, d, "models", r["name"] + ".mbz"))
            c = r["config"]
            out.append({"run": f"{d}/{r['name']}", "method": label, "sparsity": c["sparsity"], "wbits": c["wbits"],
                        "abits": c["abits"], "file_bytes": r["file_bytes"], "top1": r["top1"],
                        "drop": round(r["baseline_top1"] - r["top1"], 2), "cpu_top1": cpu.get(f),
                        "cpu_drop": round(base_cpu - cpu[f], 2) if f in cpu else None})
        for r in _jsonl(os.path.join(results, d, "reduced", "reduce_log.jsonl")):
            name = os.path.splitext(os.path.basename(r["out"]))[0]
            src = next(x for x in out if x["run"] == f"{d}/{name}")
            if src["cpu_top1"] is None:  # reduce_params.py evaluated the original on the CPU too
                src["cpu_top1"], src["cpu_drop"] = r["top1_before"], round(base_cpu - r["top1_before"], 2)
            out.append({**src, "run": f"{d}/reduced/{name}",
                        "method": f"{src['method']}, scales {r['scale_bits']} bits + biases {r['bias_bits']} bits",
                        "file_bytes": os.path.getsize(os.path.join(results, d, "reduced", name + ".mbz")),
                        "top1": None, "drop": None, "cpu_top1": r["top1_after"],
                        "cpu_drop": round(base_cpu - r["top1_after"], 2)})
    return out


def worst_drop(r: dict) -> float | None:
    """The larger of the GPU and CPU drops that were measured."""
    ds = [d for d in (r["drop"], r["cpu_drop"]) if d is not None]
    return max(ds) if ds else None
