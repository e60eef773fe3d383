"""The recorded results, read through results/index.json: no folder name is written in this module.

index.json lists the baseline folder, the folders of recipe runs (`runs`), the sweep, the shipped
copies and the targets.  A folder of runs holds any of:

* runs.jsonl: one row per run (sweep format: `top1` of the packed model on the device in `device`;
  finetune rows carry `top1_packed` and `resumed_from` instead);
* cpu_eval.jsonl: `mbz eval --json` rows of its files on the CPU;
* reduced/reduce_log.jsonl: `mbz reduce` rows (CPU top-1 before and after, bytes after);
* soup_log.jsonl: `mbz soup` rows (which runs went into each soup).

Every drop is against the one baseline: the CPU top-1 of results/<baseline>/cpu_eval.json.
Nothing here evaluates a model; it only reads numbers and file sizes.
"""
from __future__ import annotations

import json
import os

from ..errors import UsageError

INDEX = "index.json"


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_index(results: str) -> dict:
    """results/index.json; UsageError if it is missing or not JSON."""
    p = os.path.join(results, INDEX)
    if not os.path.isfile(p):
        raise UsageError(f"{p}: no such file (the index of results/ that `mbz report` reads)")
    try:
        return read_json(p)
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None


def baseline(results: str, index: dict) -> dict:
    """The baseline's record (baseline.json) with `cpu_top1` (cpu_eval.json) and `dir` added."""
    d = os.path.join(results, index["baseline"]["dir"])
    b = read_json(os.path.join(d, "baseline.json"))
    return {**b, "cpu_top1": read_json(os.path.join(d, "cpu_eval.json"))["top1"], "dir": index["baseline"]["dir"],
            "recipe": index["baseline"].get("recipe")}


def _soup_sizes(folder: str) -> dict:
    """{soup file name: how many runs went into it} from soup_log.jsonl."""
    return {os.path.basename(s["out"]): len(s["files"]) for s in read_jsonl(os.path.join(folder, "soup_log.jsonl"))}


def recipe_runs(results: str, index: dict, base_cpu: float) -> list[dict]:
    """One row per recorded file of the recipe folders, in index order:

    {run, dir, group, recipe, method, stage, sparsity, wbits, abits, kd, epochs, lr, file_bytes, kept,
     gpu_top1, cpu_top1, gpu_drop, cpu_drop, device}
    run: folder-relative name (e.g. "<dir>/reduced/NAME"); kept: its .mbz is committed;
    stage: "QAT", "PTQ", "soup + finetune", or the same with ", reduced".
    """
    out = []
    for entry in index["runs"]:
        d = entry["dir"]
        folder = os.path.join(results, d)
        soups = _soup_sizes(folder)
        cpu = {os.path.splitext(os.path.basename(r["file"]))[0]: r["top1"]
               for r in read_jsonl(os.path.join(folder, "cpu_eval.jsonl"))}
        here = []
        for r in read_jsonl(os.path.join(folder, "runs.jsonl")):
            c = r["config"]
            finetune = "top1_packed" in r
            top1 = r["top1_packed"] if finetune else r["top1"]
            on_cpu = r.get("device") == "cpu"
            epochs = c.get("epochs", c.get("qat_epochs"))
            if finetune:
                n = soups.get(os.path.basename(r.get("resumed_from", "")))
                stage = f"soup of {n} + {epochs} ep" if n else f"soup + {epochs} ep"
            else:
                stage = "PTQ" if epochs == 0 else "QAT"
            row = {"run": f"{d}/{r['name']}", "name": r["name"], "dir": d, "group": entry["group"],
                   "recipe": entry.get("recipe"), "method": entry["method"], "stage": stage,
                   "sparsity": c["sparsity"], "wbits": c["wbits"], "abits": c["abits"], "kd": c.get("kd"),
                   "epochs": epochs, "lr": c.get("lr"), "file_bytes": r["file_bytes"],
                   "kept": os.path.exists(os.path.join(folder, r.get("mbz", r["name"] + ".mbz"))),
                   "device": r.get("device"),
                   "gpu_top1": None if on_cpu else top1, "cpu_top1": top1 if on_cpu else cpu.get(r["name"])}
            here.append(row)
        for r in read_jsonl(os.path.join(folder, "reduced", "reduce_log.jsonl")):
            name = os.path.splitext(os.path.basename(r["out"]))[0]
            src = next((x for x in here if x["name"] == name), None)
            if src is None:
                raise UsageError(f"{folder}/reduced/reduce_log.jsonl: {name} has no row in runs.jsonl")
            if src["cpu_top1"] is None:
                src["cpu_top1"] = r["top1_before"]
            here.append({**src, "run": f"{d}/reduced/{name}", "stage": src["stage"] + ", reduced",
                         "file_bytes": r["bytes_after"], "scale_bits": r["scale_bits"], "bias_bits": r["bias_bits"],
                         "kept": os.path.exists(os.path.join(folder, "reduced", name + ".mbz")),
                         "gpu_top1": None, "cpu_top1": r["top1_after"]})
        out += here
    for r in out:
        r["gpu_drop"] = None if r["gpu_top1"] is None else round(base_cpu - r["gpu_top1"], 2)
        r["cpu_drop"] = None if r["cpu_top1"] is None else round(base_cpu - r["cpu_top1"], 2)
    return out


def worst_drop(r: dict) -> float | None:
    """The larger of the GPU and CPU drops that were measured."""
    ds = [d for d in (r["gpu_drop"], r["cpu_drop"]) if d is not None]
    return max(ds) if ds else None


def accuracy(r: dict) -> float:
    """The CPU figure where there is one (what `mbz eval` gives a user), else the GPU one."""
    return r["cpu_top1"] if r["cpu_top1"] is not None else r["gpu_top1"]


def meets(r: dict, target: dict) -> bool:
    """A target holds for a row if it fits the size / activation bits and every measured drop is within."""
    if "max_bytes" in target and r["file_bytes"] > target["max_bytes"]:
        return False
    if "abits" in target and r["abits"] != target["abits"]:
        return False
    w = worst_drop(r)
    return w is not None and w <= target["max_drop"]


def shipped(results: str, root: str, index: dict, rows: list[dict]) -> list[dict]:
    """The shipped files with the row of the file they copy, and whether the bytes are identical."""
    out = []
    for s in index["shipped"]:
        path, copy = os.path.join(root, s["file"]), os.path.join(results, s["copy_of"])
        run = os.path.splitext(s["copy_of"])[0]
        row = next((r for r in rows if r["run"] == run), None)
        if row is None:
            raise UsageError(f"results/{INDEX}: shipped {s['file']} copies {s['copy_of']}, which no recorded row names")
        with open(path, "rb") as f:
            data = f.read()
        identical = os.path.exists(copy) and open(copy, "rb").read() == data
        out.append({**s, "row": row, "bytes": len(data), "identical": identical})
    return out


def sweep(results: str, index: dict) -> dict:
    """The sweep's rows, its teacher's record and the repeated runs."""
    s = index["sweep"]
    d = os.path.join(results, s["dir"])
    return {**s, "rows": read_jsonl(os.path.join(d, "runs.jsonl")),
            "prune_log": read_jsonl(os.path.join(d, "prune_log.jsonl")),
            "teacher_record": read_json(os.path.join(results, s["teacher"])),
            "repeat_rows": read_jsonl(os.path.join(results, s["repeat"], "runs.jsonl"))}


def networks(results: str, index: dict) -> list[dict]:
    """index 'networks' entries with their seed table (seeds.json: one row per seed, mean / min / max), the
    seed-0 CPU evaluation (seed0/cpu_eval.json) and the structured-pruning point (structured/summary.json,
    tools/structured_table.py) where present."""
    out = []
    for n in index.get("networks", []):
        d = os.path.join(results, n["dir"])
        cpu = os.path.join(d, "seed0", "cpu_eval.json")
        st = os.path.join(d, "structured", "summary.json")
        out.append({**n, "seeds": read_json(os.path.join(d, "seeds.json")),
                    "cpu_eval": read_json(cpu) if os.path.exists(cpu) else None,
                    "structured": read_json(st) if os.path.exists(st) else None})
    return out
