"""Sweep-format runs made from the later baselines (results/baseline2, results/baseline3): one reader for the
frontier table and REPORT.md.

Rows come from the runs.jsonl of every folder in FOLDERS (sweep rows: top-1 of the packed model on the device
the runner used, the GPU but for CPU-only runs, drop against the baseline the runner evaluated) and from their
reduced/reduce_log.jsonl (tools/reduce_params.py: top-1 before and after on the CPU, drop against the CPU top-1
of the folder's own baseline, its cpu_eval.json).
"""
from __future__ import annotations

import json
import os

# folder -> (method label, the baseline folder it was pruned from and distilled from)
FOLDERS = {"final": ("baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep", "baseline2"),
           "final_a4": ("baseline2: prune+QAT+KD, 8 ep/level + 14 QAT ep", "baseline2"),
           "final200": ("baseline2: prune+QAT+KD, 6 ep/level, 36 at the kept level + 20 QAT ep", "baseline2"),
           "final200_lr": ("baseline2: capped prune chain, 6 ep/level, 36 at the kept level + QAT at lr 0.01",
                           "baseline2"),
           "final200_restart": ("baseline2: capped prune chain, 6 ep/level, 36 + a second 60-ep cycle at the kept "
                                "level + QAT at lr 0.01", "baseline2"),
           "b3": ("baseline3: prune+QAT+KD, 8 ep/level + 14 QAT ep", "baseline3"),
           "b3_r60": ("baseline3: prune+QAT+KD, 8 ep/level, a second 60-ep cycle at the kept level + 14 QAT ep",
                      "baseline3"),
           "b3_200k/ptq": ("baseline3: capped prune chain, 6 ep/level, 36 + a second 60-ep cycle at the kept level "
                           "+ PTQ (no QAT)", "baseline3"),
           "b3_200k/qat": ("baseline3: capped prune chain, 6 ep/level, 36 + a second 60-ep cycle at the kept level "
                           "+ QAT+KD (epochs and lr in the run name)", "baseline3"),
           "b3_200k/replicate": ("baseline3: the recipe of b3_200k/qat again from scratch (a second pruned model)",
                                 "baseline3"),
           **{f"b3_a4_dense/call{i}": ("baseline3: dense QAT+KD, 20 QAT ep", "baseline3") for i in (1, 2, 3)}}


def _jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def baseline_top1(results: str, base: str, name: str = "cpu_eval.json") -> float | None:
    """top-1 recorded in results/<base>/<name> (cpu_eval.json: fp32 on the CPU; baseline.json: in training)."""
    p = os.path.join(results, base, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)["top1"]


def later_runs(results: str, cpu: dict | None = None) -> list[dict]:
    """Rows {run, method, baseline, sparsity, wbits, abits, file_bytes, top1, drop, cpu_top1, cpu_drop}.

    top1/drop are the GPU figures (None for reduced files), cpu_top1/cpu_drop the CPU ones where
    measured: `cpu` ({normalized path: top-1}, e.g. from cpu_eval.jsonl) or reduce_params' "before".
    Runs made on the CPU (device "cpu" in runs.jsonl) carry their figure as cpu_top1 only.
    A folder's soup/ holds tools/qat_resume.py runs of a soup of its QAT runs; those rows carry no
    baseline, so their GPU drop is against the one the folder's sweep runner measured.
    """
    cpu = cpu or {}
    out = []
    for d, (label, base) in FOLDERS.items():
        base_cpu = baseline_top1(results, base)
        if base_cpu is None:
            continue
        base_gpu = baseline_top1(results, base, "baseline.json")
        sweep_base = next((r["baseline_top1"] for r in _jsonl(os.path.join(results, d, "runs.jsonl"))), base_gpu)
        for sub, models in (("", "models"), ("soup", "")):
            here = os.path.join(d, sub) if sub else d
            # soup_log.jsonl (tools/soup.py): how many runs went into each soup that qat_resume started from
            n_in = {s["out"]: len(s["files"]) for s in _jsonl(os.path.join(results, here, "soup_log.jsonl"))}
            for r in _jsonl(os.path.join(results, here, "runs.jsonl")):
                f = os.path.normpath(os.path.join(results, here, models, r["name"] + ".mbz"))
                c = r["config"]
                if sub:  # qat_resume rows
                    of = f"{n_in[r['resumed_from']]} of " if r.get("resumed_from") in n_in else ""
                    method = f"{label}; uniform soup of {of}its QAT runs + {c['epochs']} QAT ep at lr {c['lr']:g}"
                    top1, drop = r["top1_packed"], round(sweep_base - r["top1_packed"], 2) if sweep_base else None
                else:
                    method, top1, drop = label, r["top1"], round(r["baseline_top1"] - r["top1"], 2)
                if r.get("device") == "cpu" and f not in cpu:  # a run made on the CPU: its figure is the CPU one
                    cpu = {**cpu, f: top1}
                    top1 = drop = None
                out.append({"run": f"{here}/{r['name']}", "file": f, "method": method, "baseline": base,
                            "sparsity": c["sparsity"],
                            "wbits": c["wbits"], "abits": c["abits"], "file_bytes": r["file_bytes"], "top1": top1,
                            "drop": drop, "cpu_top1": cpu.get(f),
                            "cpu_drop": round(base_cpu - cpu[f], 2) if f in cpu else None})
            for r in _jsonl(os.path.join(results, here, "reduced", "reduce_log.jsonl")):
                name = os.path.splitext(os.path.basename(r["out"]))[0]
                src = next(x for x in out if x["run"] == f"{here}/{name}")
                if src["cpu_top1"] is None:  # reduce_params.py evaluated the original on the CPU too
                    src["cpu_top1"], src["cpu_drop"] = r["top1_before"], round(base_cpu - r["top1_before"], 2)
                out.append({**src, "run": f"{here}/reduced/{name}",
                            "file": os.path.normpath(os.path.join(results, here, "reduced", name + ".mbz")),
                            "method": f"{src['method']}, scales {r['scale_bits']} bits + biases {r['bias_bits']} bits",
                            "file_bytes": os.path.getsize(os.path.join(results, here, "reduced", name + ".mbz")),
                            "top1": None, "drop": None, "cpu_top1": r["top1_after"],
                            "cpu_drop": round(base_cpu - r["top1_after"], 2)})
    return out


def source_of(rows: list[dict], path: str) -> dict | None:
    """The row whose file has the same bytes as `path` (e.g. the shipped example: which run, which baseline)."""
    with open(path, "rb") as f:
        data = f.read()
    for r in rows:
        if os.path.exists(r["file"]) and os.path.getsize(r["file"]) == len(data):
            with open(r["file"], "rb") as f:
                if f.read() == data:
                    return r
    return None


def worst_drop(r: dict) -> float | None:
    """The larger of the GPU and CPU drops that were measured."""
    ds = [d for d in (r["drop"], r["cpu_drop"]) if d is not None]
    return max(ds) if ds else None
