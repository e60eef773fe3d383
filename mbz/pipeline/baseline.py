"""The fp32 baseline: data, model, resumable training and the files it leaves in a folder.

`train_baseline(out, ...)` writes
  OUT/baseline.pt      the trained state_dict (torch.save)
  OUT/baseline.mbz     the same tensors packed losslessly, with 'arch' and 'preprocess' metadata
                       (`mbz eval` takes it; so does every --baseline / --init)
  OUT/baseline.json    top-1, the training settings, architecture, data, seconds, device
  OUT/train_log.jsonl  one line per epoch;  OUT/curves.png  loss / accuracy per epoch
With a time budget it stops between epochs and leaves OUT/resume.pt (model, optimizer, epoch,
random state) and OUT/train_args.json; run again with the same settings and it continues.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import torch

from ..checkpoint import read_checkpoint
from ..errors import UsageError
from ..models import build_model, pipeline_arch
from .data import MEAN, STD, ArrayDataset, load_dataset
from .train import TrainConfig, plot_curves, train

VAL_SEED = 2024
PREPROCESS = {"mean": list(MEAN), "std": list(STD), "input_size": [3, 32, 32], "input_bits": 8}
OUTPUTS = ("baseline.pt", "baseline.mbz", "baseline.json", "train_log.jsonl", "curves.png", "resume.pt",
           "train_args.json")


def split_val(ds: ArrayDataset, n: int):
    """(train, val): a fixed permutation of `ds` (seed VAL_SEED), its last n images held out."""
    if not 0 < n < len(ds):
        raise UsageError(f"--val {n}: need 0 < N < {len(ds)} (the training images)")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(VAL_SEED))

    def pick(idx, tag):
        return ArrayDataset(ds.images[idx], ds.labels[idx], ds.classes, f"{ds.source}[{tag}]")
    return pick(perm[:-n], f"train-{n}"), pick(perm[-n:], f"val{n}")


def load_splits(data: str, subset: int = 0, val: int = 0):
    """(train, test) of `data`; `val` holds training images out instead of the test set; `subset`: N
    training and max(100, N // 5) test images (smoke tests)."""
    tr = load_dataset(data, "train")
    if val:
        tr, te = split_val(tr, val)
    else:
        te = load_dataset(data, "test")
    if subset:
        tr, te = tr.subset(subset), te.subset(max(100, subset // 5))
    return tr, te


def initial_model(arch: dict, init: str | None = None):
    """(model, arch): random weights of `arch`, or the checkpoint `init` (.pt or .mbz), whose shapes set it."""
    if init:
        sd = read_checkpoint(init)
        arch = pipeline_arch(arch, sd)
        model = build_model(arch)
        model.load_state_dict(sd)
        return model, arch
    arch = dict(arch, name=arch.get("name", "mobilenet_v2_cifar"))
    return build_model(arch), arch


def existing_outputs(out: str) -> list[str]:
    return [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]


def clear_outputs(out: str) -> None:
    for n in existing_outputs(out):
        os.remove(os.path.join(out, n))


def _device_name(device) -> str:
    """The name recorded in baseline.json: the GPU's name, or 'cpu'."""
    d = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"


def train_baseline(out: str, data: str, cfg: TrainConfig, arch: dict, init: str | None = None, val: int = 0,
                   subset: int = 0, time_budget: float = 0.0, metadata: dict | None = None,
                   title: str = "MobileNet-v2 baseline, CIFAR-10 (JPEG q75 export)", quiet: bool = False,
                   splits=None, device=None, clear: bool = False) -> dict:
    """Train (or continue training) the baseline in folder `out`; returns {'complete', 'epochs_done', 'summary'}.
    `device`: a torch.device (None: CUDA when present, else the CPU).

    Refuses (UsageError) to continue a run in `out` that was started with other settings, and to
    overwrite a finished one: clear the folder first (`clear_outputs`) to start again.  `splits`: the
    (train, test) datasets already loaded (else read from `data`).  `clear`: start again, deleting what a
    finished or half-done run left in `out` (`clear_outputs`) once the data and the model have loaded."""
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    args = {"data": data, "config": asdict(cfg), "arch": arch, "init": init, "val": val, "subset": subset}
    args_path, resume = os.path.join(out, "train_args.json"), os.path.join(out, "resume.pt")
    if os.path.exists(os.path.join(out, "baseline.pt")) and not clear:
        raise UsageError(f"{out}: holds a finished baseline (baseline.pt); pass --force to train a new one")
    if os.path.exists(resume) and not clear:
        before = json.load(open(args_path)) if os.path.exists(args_path) else None
        if before != json.loads(json.dumps(args)):
            changed = sorted(k for k in args if (before or {}).get(k) != json.loads(json.dumps(args))[k])
            raise UsageError(f"{out}: a run with other settings ({', '.join(changed) or 'unknown'}) is half done "
                             f"there (resume.pt); pass --force to start again")
    tr, te = splits if splits is not None else load_splits(data, subset, val)
    if not quiet:
        print(f"data: {len(tr)} train / {len(te)} {'val' if val else 'test'} from {tr.source} "
              f"in {time.time() - t0:.1f}s", flush=True)
    cfg.batch = min(cfg.batch, len(tr))
    model, arch = initial_model(arch, init)
    if clear:
        clear_outputs(out)
    if not os.path.exists(resume):  # a new run, once its data and model are there: nothing is written before
        for n in ("train_log.jsonl", "curves.png"):
            if os.path.exists(os.path.join(out, n)):
                os.remove(os.path.join(out, n))
        with open(args_path, "w") as f:
            json.dump(args, f, indent=1)
    log = os.path.join(out, "train_log.jsonl")
    left = time_budget - (time.time() - t0) if time_budget else None
    r = train(model, tr, te, cfg, log_path=log, ckpt_path=resume, time_budget=left, desc="baseline", device=device)
    plot_curves(log, os.path.join(out, "curves.png"), runs=["baseline"], title=title)
    if not r["complete"]:
        return {"complete": False, "epochs_done": len(r["history"]), "epochs": cfg.epochs}
    sd = {k: v.detach().cpu() for k, v in r["model"].state_dict().items()}
    last = r["history"][-1]
    summary = {"top1": last.get("test_acc"), "test_loss": last.get("test_loss"), "epochs": cfg.epochs,
               "eval_on": f"val: last {val} of the training images (seed {VAL_SEED})" if val else "test",
               "config": r["config"], "arch": arch, "init": init or None,
               "data": tr.source, "normalization": {"mean": MEAN, "std": STD},
               "train_seconds": round(sum(h["epoch_s"] for h in r["history"]), 2),
               "device": _device_name(device),
               "torch": torch.__version__}
    import mbz
    meta = {"arch": arch, "preprocess": PREPROCESS, "top1_train_eval": summary["top1"],
            "dataset": "CIFAR-10 (JPEG q75 export)", **(metadata or {})}
    mbz.save(sd, os.path.join(out, "baseline.mbz"), metadata=meta)
    tmp = os.path.join(out, "baseline.pt.tmp")
    torch.save(sd, tmp)
    os.replace(tmp, os.path.join(out, "baseline.pt"))
    with open(os.path.join(out, "baseline.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for p in (resume, args_path):
        if os.path.exists(p):
            os.remove(p)
    return {"complete": True, "epochs_done": cfg.epochs, "epochs": cfg.epochs, "summary": summary}
