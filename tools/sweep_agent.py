#!/usr/bin/env python
"""One sweep configuration, as `wandb agent` runs it (the sweep files' `program`).

    wandb sweep sweeps/mnv2_grid.yaml        # prints a sweep ID
    MBZ_BASELINE=base.pt wandb agent ENTITY/PROJECT/ID   # on each GPU machine

The agent passes --sparsity=0.9 --wbits=4 ...; the run logs its config, top-1,
compression ratios, file bytes and bytes by category, and the .mbz as an artifact.
Without wandb (or with --no-wandb) it only appends to OUT/runs.jsonl, which
`tools/sweep.py replay` turns into wandb runs later.
"""
import argparse
import os
import sys
from dataclasses import fields

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.pipeline.sweep import RunConfig, read_jsonl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(RunConfig):
        ap.add_argument(f"--{f.name}", default=None, help=f"default {f.default}")
    ap.add_argument("--out", default=os.environ.get("MBZ_SWEEP_OUT", "runs/sweep"))
    ap.add_argument("--baseline", default=os.environ.get("MBZ_BASELINE", "runs/baseline/baseline.pt"))
    ap.add_argument("--data", default=os.environ.get("MBZ_DATA_SPEC", "jpeg"))
    ap.add_argument("--no-wandb", action="store_true")
    a = ap.parse_args()
    cfg = RunConfig.from_dict({f.name: getattr(a, f.name) for f in fields(RunConfig)
                               if getattr(a, f.name) is not None})
    run = None
    if not a.no_wandb:
        try:
            import wandb
            from mbz.pipeline.wandb_log import mode
            run = wandb.init(config={f.name: getattr(cfg, f.name) for f in fields(cfg)},
                             mode=mode(), name=cfg.name, job_type="sweep")
        except ImportError:
            print("wandb not installed: recording to JSONL only", flush=True)
    from mbz.pipeline.sweep_run import SweepRunner
    runner = SweepRunner(a.out, a.baseline, a.data)
    row = runner.run(cfg)
    if run is not None:
        from mbz.pipeline.wandb_log import log_run
        hist = [h for h in read_jsonl(runner.log_path) if h.get("run") == cfg.name]
        log_run(run, row, hist, os.path.join(a.out, row["mbz"]))
        run.finish()
    print(f"{cfg.name}: top-1 {row['top1']:.2f}, {row['file_bytes']:,} B")


if __name__ == "__main__":
    main()
