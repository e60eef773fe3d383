"""Runs made from the second baseline (results/baseline2): one reader for the frontier table and REPORT.md.

Rows come from results/{final,final_a4,final200,final200_lr,final200_restart}/runs.jsonl (sweep rows: top-1 of the packed model on the
GPU, drop against the baseline the runner evaluated) and from their reduced/reduce_log.jsonl
(tools/reduce_params.py: top-1 before and after on the CPU, drop against baseline2's CPU top-1).
"""
from __future__ import annotations

import json
import os

FOLDERS = {"final": "baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep",
           "final_a4": "baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep",
           "final200": "baseline2: prune+QAT+KD, 6 ep/level, 36 at the kept level + 20 QAT ep",
           "final200_lr": "baseline2: capped prune chain, 6 ep/level, 36 at the kept level + QAT at lr 0.01",
           "final200_restart": "baseline2: capped prune chain, 6 ep/level, 36 + a second 60-ep cycle at the kept level "
                               "+ QAT at lr 0.01"}


def _jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _baseline2_top1(results: str, name: str) -> float | None:
    p = os.path.join(results, "baseline2", name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)["top1"]


def baseline2_cpu_top1(results: str) -> float | None:
    return _baseline2_top1(results, "cpu_eval.json")


def later_runs(results: str, cpu: dict | None = None) -> list[dict]:
    """Rows {run, method, sparsity, wbits, abits, file_bytes, top1, drop, cpu_top1, cpu_drop}.

    top1/drop are the GPU figures (None for reduced files), cpu_top1/cpu_drop the CPU ones where
    measured: `cpu` ({normalized path: top-1}, e.g. from cpu_eval.jsonl) or reduce_params' "before".
    A folder's soup/ holds tools/qat_resume.py runs of a soup of its QAT runs; those rows carry no
    baseline, so their GPU drop is against the one the folder's sweep runner measured.
    """
    base_cpu = baseline2_cpu_top1(results)
    if base_cpu is None:
        return []
    base_gpu = _baseline2_top1(results, "baseline.json")
    cpu = cpu or {}
    out = []
    for d, label in FOLDERS.items():
        sweep_base = next((r["baseline_top1"] for r in _jsonl(os.path.join(results, d, "runs.jsonl"))), base_gpu)
        for sub, models in (("", "models"), ("soup", "")):
            here = os.path.join(d, sub) if sub else d
            for r in _jsonl(os.path.join(results, here, "runs.jsonl")):
                f = os.path.normpath(os.path.join(results, here, models, r["name"] + ".mbz"))
                c = r["config"]
                if sub:  # qat_resume rows
                    method = f"{label}; uniform soup of its QAT runs + {c['epochs']} QAT ep at lr {c['lr']:g}"
                    top1, drop = r["top1_packed"], round(sweep_base - r["top1_packed"], 2) if sweep_base else None
                else:
                    method, top1, drop = label, r["top1"], round(r["baseline_top1"] - r["top1"], 2)
                out.append({"run": f"{here}/{r['name']}", "method": method, "sparsity": c["sparsity"],
                            "wbits": c["wbits"], "abits": c["abits"], "file_bytes": r["file_bytes"], "top1": top1,
                            "drop": drop, "cpu_top1": cpu.get(f),
                            "cpu_drop": round(base_cpu - cpu[f], 2) if f in cpu else None})
            for r in _jsonl(os.path.join(results, here, "reduced", "reduce_log.jsonl")):
                name = os.path.splitext(os.path.basename(r["out"]))[0]
                src = next(x for x in out if x["run"] == f"{here}/{name}")
                if src["cpu_top1"] is None:  # reduce_params.py evaluated the original on the CPU too
                    src["cpu_top1"], src["cpu_drop"] = r["top1_before"], round(base_cpu - r["top1_before"], 2)
                out.append({**src, "run": f"{here}/reduced/{name}",
                            "method": f"{src['method']}, scales {r['scale_bits']} bits + biases {r['bias_bits']} bits",
                            "file_bytes": os.path.getsize(os.path.join(results, here, "reduced", name + ".mbz")),
                            "top1": None, "drop": None, "cpu_top1": r["top1_after"],
                            "cpu_drop": round(base_cpu - r["top1_after"], 2)})
    return out


def worst_drop(r: dict) -> float | None:
    """The larger of the GPU and CPU drops that were measured."""
    ds = [d for d in (r["drop"], r["cpu_drop"]) if d is not None]
    return max(ds) if ds else None
