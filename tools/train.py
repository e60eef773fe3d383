#!/usr/bin/env python
"""Train the fp32 MobileNet-v2 baseline on CIFAR-10 (GPU; a tiny CPU run with --subset).

    python tools/train.py --data jpeg --out runs/baseline --epochs 150 --time-budget 540

Writes OUT/baseline.pt (state_dict), OUT/train_log.jsonl, OUT/curves.png,
OUT/baseline.json; with --time-budget it stops early, saves OUT/resume.pt and
continues from it when run again with the same --out.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.pipeline.data import MEAN, STD, ArrayDataset, load_dataset  # noqa: E402
from mbz.pipeline.train import TrainConfig, plot_curves, train  # noqa: E402
from mbz.checkpoint import read_checkpoint  # noqa: E402
from mbz.models import arch_of, build_model, mobilenet_v2_cifar  # noqa: E402


VAL_SEED = 2024


def split_val(ds, n: int):
    """(train, val): a fixed permutation of `ds` (seed VAL_SEED), its last n images held out."""
    if not 0 < n < len(ds):
        raise SystemExit(f"--val {n}: need 0 < N < {len(ds)}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(VAL_SEED))
    pick = lambda idx, tag: ArrayDataset(ds.images[idx], ds.labels[idx], ds.classes, f"{ds.source}[{tag}]")  # noqa: E731
    return pick(perm[:-n], f"train-{n}"), pick(perm[-n:], f"val{n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="jpeg", help="jpeg | npz:PATH | cifar10:ROOT | folder:ROOT")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.0, help="weight EMA decay (0: off)")
    ap.add_argument("--no-trivial", action="store_true", help="plain crop+flip augmentation only")
    ap.add_argument("--cutout", type=int, default=0)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="",
                    help="start from this checkpoint (.pt or .mbz; e.g. one thinned by tools/prune_channels.py) "
                         "instead of random weights; its shapes set the architecture")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the training step (CUDA; the first epoch pays for compilation)")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode with --compile (reduce-overhead replays CUDA graphs)")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="do not let cuDNN time its convolution algorithms (CUDA; on by default)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture the whole training step as one CUDA graph and replay it (CUDA; not with --compile)")
    ap.add_argument("--warmup", type=float, default=2.0, help="epochs of linear learning-rate warm-up")
    ap.add_argument("--val", type=int, default=0,
                    help="hold the last N of a fixed permutation of the training images out and evaluate on them "
                         "instead of the test set (which is then not loaded)")
    ap.add_argument("--eval-every", type=int, default=1,
                    help="evaluate on the test set every N epochs (and after the last); each costs GPU time")
    ap.add_argument("--subset", type=int, default=0, help="train/test on N images (CPU smoke test)")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; stop early and save OUT/resume.pt")
    ap.add_argument("--fit-budget", type=float, default=0,
                    help="seconds of training: after warm-up, lower --epochs so the cosine schedule ends in time")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    tr = load_dataset(a.data, "train")
    if a.val:
        tr, te = split_val(tr, a.val)
    else:
        te = load_dataset(a.data, "test")
    if a.subset:
        tr, te = tr.subset(a.subset), te.subset(max(100, a.subset // 5))
    print(f"data: {len(tr)} train / {len(te)} {'val' if a.val else 'test'} from {tr.source} in {time.time() - t0:.1f}s",
          flush=True)
    cfg = TrainConfig(epochs=a.epochs, batch=min(a.batch, len(tr)), lr=a.lr, wd=a.wd, label_smoothing=a.label_smoothing,
                      ema=a.ema, trivial=not a.no_trivial, cutout=a.cutout, seed=a.seed,
                      fit_budget=a.fit_budget, compile=a.compile, compile_mode=a.compile_mode,
                      cudnn_benchmark=not a.no_cudnn_benchmark, eval_every=a.eval_every,
                      cuda_graph=a.cuda_graph, warmup=a.warmup)
    if a.init:
        init = read_checkpoint(a.init)
        arch = arch_of(init, a.dropout)
        model = build_model(arch)
        model.load_state_dict(init)
    else:
        arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": a.width_mult, "dropout": a.dropout}
        model = mobilenet_v2_cifar(width_mult=a.width_mult, dropout=a.dropout)
    log = os.path.join(a.out, "train_log.jsonl")
    resume = os.path.join(a.out, "resume.pt")
    if not os.path.exists(resume) and os.path.exists(log):
        os.remove(log)
    r = train(model, tr, te, cfg, log_path=log, ckpt_path=resume, time_budget=a.time_budget or None, desc="baseline")
    plot_curves(log, os.path.join(a.out, "curves.png"), runs=["baseline"],
                title="MobileNet-v2 baseline, CIFAR-10 (JPEG q75 export)")
    if not r["complete"]:
        print(f"stopped at epoch {len(r['history'])}/{a.epochs} (time budget); run again to resume", flush=True)
        return
    sd = {k: v.detach().cpu() for k, v in r["model"].state_dict().items()}
    torch.save(sd, os.path.join(a.out, "baseline.pt"))
    if os.path.exists(resume):
        os.remove(resume)
    last = r["history"][-1]
    summary = {"top1": last.get("test_acc"), "test_loss": last.get("test_loss"), "epochs": cfg.epochs,
               "eval_on": f"val: last {a.val} of the training images (seed {VAL_SEED})" if a.val else "test",
               "config": r["config"], "arch": arch, "init": a.init or None,
               "data": tr.source, "normalization": {"mean": MEAN, "std": STD},
               "train_seconds": sum(h["epoch_s"] for h in r["history"]),
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    with open(os.path.join(a.out, "baseline.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: summary[k] for k in ("top1", "epochs", "train_seconds", "device")}), flush=True)


if __name__ == "__main__":
    main()
