#!/usr/bin/env python
"""Run a wandb sweep file locally, finish it on a CPU machine, replay it into wandb, draw its charts.

    # on a GPU (no wandb needed): every configuration, 4 processes sharing the GPU, resumable
    python tools/sweep.py run sweeps/mnv2_grid.yaml --out results/sweep --baseline B.pt --data jpeg --jobs 4
    # on a CPU machine with zstandard: merge worker files, apply the entropy stage where it was skipped
    python tools/sweep.py finalize results/sweep sweeps/mnv2_grid.yaml sweeps/mnv2_options.yaml
    # wandb runs (offline unless logged in; `wandb sync wandb/offline-run-*` uploads them)
    python tools/sweep.py replay results/sweep --project mbz-mnv2-cifar10
    # PNG charts: parallel coordinates (wandb's axes), frontier, bytes by category
    python tools/sweep.py charts results/sweep

Distributed instead: `wandb sweep sweeps/mnv2_grid.yaml`, then `wandb agent ID` on each
machine; the agent runs tools/sweep_agent.py once per configuration.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.pipeline.sweep import expand, load_sweep, read_jsonl, shard  # noqa: E402


def _configs(paths, count=None, seed=0):
    out, seen = [], set()
    for p in paths:
        for c in expand(load_sweep(p), count, seed):
            if c.name not in seen:
                seen.add(c.name)
                out.append(c)
    return out


def cmd_run(a):
    from mbz.pipeline.sweep_run import SweepRunner
    configs = _configs(a.sweep, a.count, a.seed)
    for cond in a.where:
        k, _, v = cond.partition("=")
        configs = [c for c in configs if str(getattr(c, k)) == v]
    t0 = time.time()
    if a.shard:
        i, n = (int(x) for x in a.shard.split("/"))
        configs = shard(configs, i, n)
    worker = f"w{a.shard.split('/')[0]}" if a.shard else ""
    r = SweepRunner(a.out, a.baseline, a.data, a.prune_epochs, a.prune_lr, a.prune_kd, a.subset, worker=worker,
                    caps=a.caps, prune_final_epochs=a.prune_final_epochs, prune_restart=a.prune_restart)
    todo = [c for c in configs if c.name not in r.done()]
    print(f"{len(configs)} configurations, {len(todo)} to run{' (shard ' + a.shard + ')' if a.shard else ''}",
          flush=True)
    if not todo:
        return
    done = r.done()
    r.prepare({c.sparsity for c in todo if r.sibling(c, done) is None})
    if a.jobs > 1 and not a.shard:
        base = [sys.executable, os.path.abspath(__file__), "run", *a.sweep, "--out", a.out, "--baseline", a.baseline,
                "--data", a.data, "--prune-epochs", str(a.prune_epochs), "--prune-lr", str(a.prune_lr),
                "--prune-kd", str(a.prune_kd), "--subset", str(a.subset), "--seed", str(a.seed), "--caps", a.caps,
                "--prune-final-epochs", str(a.prune_final_epochs), "--prune-restart", str(a.prune_restart)]
        if a.count:
            base += ["--count", str(a.count)]
        for cond in a.where:
            base += ["--where", cond]
        if a.time_budget:
            base += ["--time-budget", str(max(1.0, a.time_budget - (time.time() - t0)))]
        procs = [subprocess.Popen(base + ["--shard", f"{i}/{a.jobs}"]) for i in range(a.jobs)]
        rc = [p.wait() for p in procs]
        if any(rc):
            raise SystemExit(f"worker exit codes {rc}")
        return
    for k, c in enumerate(todo):
        if a.time_budget and time.time() - t0 > a.time_budget:
            print(f"time budget reached: {len(todo) - k} configurations left for the next call", flush=True)
            break
        row = r.run(c)
        print(f"[{k + 1}/{len(todo)}] {c.name}: top-1 {row['top1']:.2f}, {row['file_bytes']:,} B, "
              f"{row['seconds']:.0f}s", flush=True)


def cmd_finalize(a):
    from mbz.pipeline.sweep_run import finalize
    order = [c.name for c in _configs(a.sweep)] if a.sweep else None
    rows = finalize(a.dir, order)
    print(f"{len(rows)} runs in {os.path.join(a.dir, 'runs.jsonl')}")


def cmd_replay(a):
    from mbz.pipeline.wandb_log import mode, replay
    rows = read_jsonl(os.path.join(a.dir, "runs.jsonl"))
    if not rows:
        raise SystemExit(f"{a.dir}/runs.jsonl: no runs (run `finalize` first)")
    hist = {}
    for h in read_jsonl(os.path.join(a.dir, "train_log.jsonl")):
        hist.setdefault(h["run"], []).append(h)
    m = mode(a.mode)
    dirs = replay(rows, hist, a.dir, a.project, a.group or os.path.basename(os.path.normpath(a.dir)), m, a.wandb_dir)
    where = os.path.join(a.wandb_dir or ".", "wandb", "offline-run-*")
    print(f"{len(dirs)} wandb runs written ({m})" + (f"; upload with: wandb sync {where}" if m == "offline" else ""))


def cmd_charts(a):
    from mbz.report.charts import sweep_charts
    for p in sweep_charts(a.dir, a.baseline_json):
        print(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every configuration of one or more sweep files here (resumable)")
    r.add_argument("sweep", nargs="+", help="wandb sweep YAML file(s)")
    r.add_argument("--out", required=True)
    r.add_argument("--baseline", required=True, help="fp32 baseline checkpoint (also the distillation teacher)")
    r.add_argument("--data", default="jpeg", help="jpeg | npz:DIR | cifar10:ROOT | folder:ROOT")
    r.add_argument("--jobs", type=int, default=1, help="worker processes sharing the GPU")
    r.add_argument("--shard", default="", help=argparse.SUPPRESS)
    r.add_argument("--count", type=int, default=0, help="random sweeps: number of draws (else run_cap)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="run only configurations with this value (e.g. sparsity=0.8); repeatable")
    r.add_argument("--prune-epochs", type=int, default=5, help="fine-tuning epochs per pruning step")
    r.add_argument("--prune-lr", type=float, default=0.05)
    r.add_argument("--prune-kd", type=float, default=0.5, help="distillation weight while pruning (0: off)")
    r.add_argument("--prune-final-epochs", type=int, default=0,
                   help="fine-tuning epochs at each sparsity the sweep keeps (the steps on the way there get "
                        "--prune-epochs; 0: --prune-epochs everywhere)")
    r.add_argument("--prune-restart", type=int, default=0, metavar="EPOCHS",
                   help="then a second cosine cycle of EPOCHS at each kept sparsity, from the chain's cached model "
                        "with its zeros held (cached separately: a chain already run is reused)")
    r.add_argument("--caps", default="", help="caps.json of tools/sensitivity.py: per-layer sparsity caps for the "
                   "pruning chain (run names do not include it: give such a sweep its own --out)")
    r.add_argument("--subset", type=int, default=0, help="train on N images (CPU smoke tests)")
    r.add_argument("--time-budget", type=float, default=0, help="start no configuration after this many seconds")
    r.set_defaults(fn=cmd_run)
    f = sub.add_parser("finalize", help="merge worker files, apply skipped entropy stages (needs zstandard)")
    f.add_argument("dir")
    f.add_argument("sweep", nargs="*", help="sweep files, for the row order")
    f.set_defaults(fn=cmd_finalize)
    p = sub.add_parser("replay", help="write one wandb run per recorded run")
    p.add_argument("dir")
    p.add_argument("--project", default="mbz-mnv2-cifar10")
    p.add_argument("--group", default="")
    p.add_argument("--mode", default="auto", choices=["auto", "offline", "online", "disabled"])
    p.add_argument("--wandb-dir", default=None, help="where offline runs go (default ./wandb)")
    p.set_defaults(fn=cmd_replay)
    c = sub.add_parser("charts", help="parallel coordinates, frontier and bytes-by-category PNGs")
    c.add_argument("dir")
    c.add_argument("--baseline-json", default="results/baseline/baseline.json")
    c.set_defaults(fn=cmd_charts)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
