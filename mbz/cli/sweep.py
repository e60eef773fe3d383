"""`mbz sweep run | agent | finalize | replay | charts | repack`: wandb sweep files, here or through wandb."""
from __future__ import annotations

import os
from dataclasses import fields

from .common import DATA_HELP, input_file, output_dir

SWEEP_HELP = ("Sweep files are wandb's own YAML (program, method, metric, parameters): `wandb sweep FILE` "
              "schedules them on many machines, whose `wandb agent` runs `mbz sweep agent` once per configuration "
              "(the files' `command`); `mbz sweep run` runs the same files here, one configuration at a time, "
              "without wandb. A configuration is sparsity, wbits, abits, granularity, fold_bn, entropy, qat_epochs, "
              "kd and lr; every configuration of one sparsity starts from the same pruned model (cached under "
              "OUT/cache), and configurations that differ only in the entropy stage share one training.")


def _usage(e) -> Exception:
    from ..errors import UsageError
    return UsageError(str(e))


def _add_prune(p) -> None:
    g = p.add_argument_group("pruning chain (the starting point of every configuration with sparsity > 0)")
    g.add_argument("--prune-epochs", type=int, default=5, help="fine-tuning epochs per pruning step (default 5)")
    g.add_argument("--prune-lr", type=float, default=0.05, help="peak learning rate while pruning (default 0.05)")
    g.add_argument("--prune-kd", type=float, default=0.5, help="distillation weight while pruning (default 0.5; 0: off)")
    g.add_argument("--prune-final-epochs", type=int, default=0, metavar="EPOCHS",
                   help="fine-tuning epochs at each sparsity the sweep keeps (the steps on the way there get "
                        "--prune-epochs; 0: --prune-epochs everywhere)")
    g.add_argument("--prune-restart", type=int, default=0, metavar="EPOCHS",
                   help="then a second cosine cycle of EPOCHS at each kept sparsity, from the chain's cached model "
                        "with its zeros held (cached separately: a chain already run is reused)")
    g.add_argument("--caps", default="", metavar="CAPS_JSON",
                   help="caps.json of `mbz sensitivity`: per-layer sparsity caps for the chain (run names do not "
                        "include it: give such a sweep its own --out)")
    g.add_argument("--train-seed", type=int, default=0, help="seed of the pruning and QAT training (default 0)")


def _runner_kw(a) -> dict:
    if a.caps:
        input_file(a.caps, "--caps")
    return dict(prune_epochs=a.prune_epochs, prune_lr=a.prune_lr, prune_kd=a.prune_kd,
                prune_final_epochs=a.prune_final_epochs, prune_restart=a.prune_restart, caps=a.caps,
                train_seed=a.train_seed)


# ------------------------------------------------------------------------------------------------ run
def cmd_run(a) -> int:
    from ..pipeline.sweep_run import run_sweep
    for p in a.sweep:
        input_file(p, "sweep file")
    input_file(a.baseline, "--baseline")
    output_dir(a.out)
    try:
        r = run_sweep(a.sweep, a.out, a.baseline, a.data, jobs=a.jobs, count=a.count, seed=a.seed, where=a.where,
                      time_budget=a.time_budget, subset=a.subset, **_runner_kw(a))
    except ValueError as e:
        raise _usage(e) from None
    if r["left"]:
        print(f"{r['left']} configurations left: run the same command again to continue", flush=True)
    else:
        print(f"all {r['configs']} configurations recorded in {a.out} (next: mbz sweep finalize {a.out} "
              f"{' '.join(a.sweep)})", flush=True)
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run every configuration of sweep files here, no wandb needed (resumable)",
                       description="Run the configurations of one or more sweep files here (GPU), one after another "
                                   "or in --jobs processes sharing the GPU: the pruning chain first (cached), then "
                                   "QAT, pack, evaluate and measure each configuration. Writes OUT/models/NAME.mbz, "
                                   "one JSON line per run in OUT/runs*.jsonl (config, top-1 of the packed file, "
                                   "bytes by category, compression ratios) and every epoch in OUT/train_log*.jsonl. "
                                   "Configurations already recorded are skipped, so the same command continues a "
                                   "sweep that a time limit stopped. " + SWEEP_HELP)
    p.add_argument("sweep", nargs="+", help="wandb sweep YAML file(s)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (made if missing; reused to resume)")
    p.add_argument("--baseline", required=True, help="fp32 baseline checkpoint (.pt or .mbz; also the teacher)")
    p.add_argument("--data", default="jpeg", help=DATA_HELP)
    p.add_argument("--jobs", type=int, default=1, help="worker processes sharing the GPU (default 1)")
    p.add_argument("--count", type=int, default=0, help="random sweeps: number of draws (default: run_cap)")
    p.add_argument("--seed", type=int, default=0, help="random sweeps: seed of the draws")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="run only configurations with this value (e.g. sparsity=0.8); repeatable")
    _add_prune(p)
    p.add_argument("--subset", type=int, default=0, metavar="N", help="train on N images (CPU smoke tests)")
    p.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                   help="start no configuration after this many seconds (0: no limit)")
    p.set_defaults(fn=cmd_run)


# ---------------------------------------------------------------------------------------------- agent
def cmd_agent(a) -> int:
    from ..pipeline.sweep import RunConfig, read_jsonl
    from ..pipeline.sweep_run import SweepRunner
    try:
        cfg = RunConfig.from_dict({f.name: getattr(a, f.name) for f in fields(RunConfig)
                                   if getattr(a, f.name) is not None})
    except ValueError as e:
        raise _usage(e) from None
    input_file(a.baseline, "--baseline (or $MBZ_BASELINE)")
    output_dir(a.out)
    run = None
    if not a.no_wandb:
        try:
            import wandb

            from ..pipeline.wandb_log import mode
            run = wandb.init(config={f.name: getattr(cfg, f.name) for f in fields(cfg)}, mode=mode(),
                             name=cfg.name, job_type="sweep")
        except ImportError:
            print("wandb not installed: recording to JSONL only", flush=True)
    kw = _runner_kw(a)
    runner = SweepRunner(a.out, a.baseline, a.data, seed=kw.pop("train_seed"), **kw)
    row = runner.run(cfg)
    if run is not None:
        from ..pipeline.wandb_log import log_run
        hist = [h for h in read_jsonl(runner.log_path) if h.get("run") == cfg.name]
        log_run(run, row, hist, os.path.join(a.out, row["mbz"]))
        run.finish()
    print(f"{cfg.name}: top-1 {row['top1']:.2f}, {row['file_bytes']:,} B")
    return 0


def _add_agent(sub) -> None:
    from ..pipeline.sweep import RunConfig
    p = sub.add_parser("agent", help="one sweep configuration, as `wandb agent` runs it (the sweep files' command)",
                       description="Run one configuration given as --sparsity=0.9 --wbits=4 ... (what `wandb agent` "
                                   "passes through the sweep file's `command: [mbz, sweep, agent, ${args}]`): prune "
                                   "(or reuse the cached pruned model in OUT/cache), QAT, pack, evaluate, then log "
                                   "config, top-1, compression ratios, file bytes and bytes by category to the wandb "
                                   "run, with the .mbz as an artifact. Without wandb (or with --no-wandb) it only "
                                   "appends to OUT/runs.jsonl, which `mbz sweep replay` turns into wandb runs later. "
                                   "--out, --baseline and --data default to $MBZ_SWEEP_OUT, $MBZ_BASELINE and "
                                   "$MBZ_DATA_SPEC, so that every agent machine sets them once.")
    for f in fields(RunConfig):
        p.add_argument(f"--{f.name}", default=None, help=f"sweep parameter (default {f.default})")
    p.add_argument("--out", default=os.environ.get("MBZ_SWEEP_OUT", "runs/sweep"), metavar="DIR",
                   help="sweep folder (default $MBZ_SWEEP_OUT or runs/sweep)")
    p.add_argument("--baseline", default=os.environ.get("MBZ_BASELINE", "runs/baseline/baseline.mbz"),
                   help="fp32 baseline (default $MBZ_BASELINE or runs/baseline/baseline.mbz)")
    p.add_argument("--data", default=os.environ.get("MBZ_DATA_SPEC", "jpeg"), help=DATA_HELP + " (default $MBZ_DATA_SPEC)")
    p.add_argument("--no-wandb", action="store_true", help="record to OUT/runs.jsonl only")
    _add_prune(p)
    p.set_defaults(fn=cmd_agent)


# ------------------------------------------------------------------------------------------- finalize
def cmd_finalize(a) -> int:
    from ..pipeline.sweep_run import finalize, sweep_configs
    if not os.path.isdir(a.dir):
        raise _usage(f"{a.dir}: no such folder (a sweep's --out)")
    for p in a.sweep:
        input_file(p, "sweep file")
    try:
        order = [c.name for c in sweep_configs(a.sweep)] if a.sweep else None
    except ValueError as e:
        raise _usage(e) from None
    rows = finalize(a.dir, order)
    if not rows:
        raise _usage(f"{a.dir}: no runs recorded (runs*.jsonl)")
    print(f"{len(rows)} runs in {os.path.join(a.dir, 'runs.jsonl')}")
    return 0


def _add_finalize(sub) -> None:
    p = sub.add_parser("finalize", help="merge worker files into runs.jsonl, re-pack each file with its entropy stage",
                       description="Merge the workers' OUT/runs.*.jsonl and train_log.*.jsonl into runs.jsonl and "
                                   "train_log.jsonl, and re-pack every .mbz with its configuration's entropy stage "
                                   "(lossless: tensors compared bit for bit, so top-1 stands; sizes are recomputed "
                                   "here, the size as run kept as file_bytes_as_run). Idempotent.")
    p.add_argument("dir", help="the sweep folder (--out of `mbz sweep run`)")
    p.add_argument("sweep", nargs="*", help="sweep files, for the order of the rows")
    p.set_defaults(fn=cmd_finalize)


# --------------------------------------------------------------------------------------------- replay
def cmd_replay(a) -> int:
    from ..pipeline.sweep import read_jsonl
    from ..pipeline.wandb_log import mode, replay
    rows = read_jsonl(os.path.join(a.dir, "runs.jsonl"))
    if not rows:
        raise _usage(f"{a.dir}/runs.jsonl: no runs (run `mbz sweep finalize {a.dir}` first)")
    hist = {}
    for h in read_jsonl(os.path.join(a.dir, "train_log.jsonl")):
        hist.setdefault(h["run"], []).append(h)
    m = mode(a.mode)
    dirs = replay(rows, hist, a.dir, a.project, a.group or os.path.basename(os.path.normpath(a.dir)), m, a.wandb_dir)
    where = os.path.join(a.wandb_dir or ".", "wandb", "offline-run-*")
    print(f"{len(dirs)} wandb runs written ({m})" + (f"; upload with: wandb sync {where}" if m == "offline" else ""))
    return 0


def _add_replay(sub) -> None:
    p = sub.add_parser("replay", help="write one wandb run per recorded run (offline unless logged in)",
                       description="Turn a finalized sweep folder into wandb runs: per-epoch history, the summary "
                                   "figures (top1, drop, file_bytes, model_cr, weight_cr, act_cr, bytes/CATEGORY) "
                                   "and the .mbz as an artifact; in the project's sweep view, the parallel-coordinates "
                                   "panel over sparsity / wbits / abits -> top1 / file_kb shows the trade-off. "
                                   "Offline unless logged in (WANDB_API_KEY or `wandb login`); `wandb sync` uploads "
                                   "offline runs later.")
    p.add_argument("dir", help="the sweep folder")
    p.add_argument("--project", default="mbz-mnv2-cifar10", help="wandb project (default mbz-mnv2-cifar10)")
    p.add_argument("--group", default="", help="wandb group (default: the folder's name)")
    p.add_argument("--mode", default="auto", choices=["auto", "offline", "online", "disabled"])
    p.add_argument("--wandb-dir", default=None, help="where offline runs go (default ./wandb)")
    p.set_defaults(fn=cmd_replay)


# --------------------------------------------------------------------------------------------- charts
def cmd_charts(a) -> int:
    from ..pipeline.sweep import read_jsonl
    from ..report.charts import sweep_charts
    if not read_jsonl(os.path.join(a.dir, "runs.jsonl")):
        raise _usage(f"{a.dir}/runs.jsonl: no runs (run `mbz sweep finalize {a.dir}` first)")
    for p in sweep_charts(a.dir, a.baseline_json):
        print(p)
    return 0


def _add_charts(sub) -> None:
    p = sub.add_parser("charts", help="parallel-coordinates and frontier PNGs of a sweep folder",
                       description="Draw DIR/parallel_coordinates.png (the axes of wandb's panel: sparsity, wbits, "
                                   "abits, file KB, top-1) and DIR/frontier.png (file KB vs top-1) from DIR/runs.jsonl.")
    p.add_argument("dir", help="the sweep folder")
    p.add_argument("--baseline-json", default="results/baseline/baseline.json",
                   help="baseline.json whose top1 is drawn as the reference line")
    p.set_defaults(fn=cmd_charts)


# --------------------------------------------------------------------------------------------- repack
def cmd_repack(a) -> int:
    from ..pipeline.sweep_run import repack_dir
    if not os.path.isdir(a.src):
        raise _usage(f"{a.src}: no such folder")
    if os.path.abspath(a.src) == os.path.abspath(a.dst):
        raise _usage(f"{a.dst}: the output folder is the input folder; choose another")
    output_dir(a.dst)
    try:
        repack_dir(a.src, a.dst)
    except FileNotFoundError as e:
        raise _usage(e) from None
    return 0


def _add_repack(sub) -> None:
    p = sub.add_parser("repack", help="copy a run folder, re-packing its .mbz files with zstd (lossless)",
                       description="For files written where zstandard was missing: re-pack every .mbz that SRC's "
                                   "results.jsonl or runs.jsonl names into DST with the entropy stage (tensors "
                                   "checked bit-identical), update file_bytes (the size as run kept as "
                                   "file_bytes_gpu_nozstd) and copy the other JSON / JSONL files.")
    p.add_argument("src", help="a run folder (`mbz finetune` / sweep output)")
    p.add_argument("dst", help="the folder to write (made if missing)")
    p.set_defaults(fn=cmd_repack)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="wandb sweeps: run / agent / finalize / replay / charts / repack",
                       description=SWEEP_HELP + " Typical: `mbz sweep run sweeps/mnv2_grid.yaml --out DIR "
                                   "--baseline B.mbz` (GPU), `mbz sweep finalize DIR sweeps/mnv2_grid.yaml`, "
                                   "`mbz sweep replay DIR`, `mbz sweep charts DIR`.")
    s = p.add_subparsers(dest="sweep_cmd", required=True, metavar="STEP")
    for add in (_add_run, _add_agent, _add_finalize, _add_replay, _add_charts, _add_repack):
        add(s)
