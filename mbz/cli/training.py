"""Verbs: train, finetune, soup, reduce (the pipeline's single steps; `mbz compress` chains them)."""
from __future__ import annotations

import json
import os
import sys

from ..pipeline.recipe import PIPELINE_MODELS
from .common import (DATA_HELP, add_data, add_force, device_of, input_file, output_dir, output_file,
                     refuse_inference_only, show_progress)


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")




def _mbz_output(path: str) -> None:
    from ..errors import UsageError
    if not path.endswith(".mbz"):
        raise UsageError(f"{path}: the output must end in .mbz")


def _check_limit(limit: int) -> None:
    from ..errors import UsageError
    if limit < 0:
        raise UsageError(f"--limit {limit}: must be >= 1 (or 0: every test image)")


def _evaluate(path: str, ds, device: str, quiet: bool, state_dict=None) -> float:
    """Top-1 of a packed model, with a progress bar on a terminal (a line otherwise)."""
    from ..pipeline.evaluate import evaluate_file
    bar = tick = None
    if show_progress(quiet):
        from tqdm import tqdm
        bar = tqdm(total=len(ds), unit="img", desc=f"eval {os.path.basename(path)}", leave=False)

        def tick(done, total):
            bar.n = done
            bar.refresh()
    elif not quiet:
        print(f"evaluating {path} on {len(ds)} images ({device}) ...", file=sys.stderr, flush=True)
    try:
        return evaluate_file(path, ds, device, state_dict=state_dict, progress=tick)["top1"]
    finally:
        if bar is not None:
            bar.close()


def _append(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _teacher(path: str, device):
    from ..checkpoint import read_checkpoint
    from ..models import arch_of, build_model
    input_file(path, "baseline (the distillation teacher)")
    sd = read_checkpoint(path)
    m = build_model(arch_of(sd))
    m.load_state_dict(sd)
    return m.to(device).eval()


# ----------------------------------------------------------------------------------------------- train
def cmd_train(a) -> int:
    from ..errors import UsageError
    from ..pipeline.baseline import existing_outputs, train_baseline
    from ..pipeline.train import TrainConfig
    if a.init:
        input_file(a.init, "--init checkpoint")
        refuse_inference_only(a.init, "--init")
    device = device_of(a.device)
    if a.cuda_graph and a.compile:
        raise UsageError("--cuda-graph and --compile exclude each other")
    for name in ("epochs", "batch", "eval_every"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(a, name)}: must be >= 1")
    for name, zero in (("subset", "every image"), ("val", "no validation split")):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name} {getattr(a, name)}: must be >= 0 (0: {zero})")
    cfg = TrainConfig(epochs=a.epochs, batch=a.batch, lr=a.lr, wd=a.wd, label_smoothing=a.label_smoothing,
                      ema=a.ema, trivial=not a.no_trivial, cutout=a.cutout, seed=a.seed, fit_budget=a.fit_budget,
                      compile=a.compile, compile_mode=a.compile_mode, cudnn_benchmark=not a.no_cudnn_benchmark,
                      eval_every=a.eval_every, cuda_graph=a.cuda_graph, warmup=a.warmup)
    arch = {"name": a.arch or "mobilenet_v2_cifar", "num_classes": 10}
    if a.init:
        from .analysis import _file_arch
        recorded = _file_arch(a.init)
        if recorded is not None:
            if a.arch and recorded.get("name") != a.arch:
                raise UsageError(f"--arch {a.arch}: {a.init} holds a {recorded.get('name')} (its 'arch' metadata); "
                                 f"leave --arch out or name that network")
            arch = dict(recorded)
        elif a.arch not in (None, "mobilenet_v2_cifar"):
            raise UsageError(f"{a.init}: no 'arch' metadata; a {a.arch} checkpoint must be a .mbz made with "
                             f"mbz pack --arch {a.arch} (or mbz.save(..., arch=...))")
    if arch["name"] == "mobilenet_v2_cifar":
        arch.update(width_mult=a.width_mult, dropout=a.dropout)
    new_dir = not os.path.exists(a.out)
    output_dir(a.out)
    if not a.force and "baseline.pt" in existing_outputs(a.out):
        raise UsageError(f"{a.out}: holds a finished baseline (baseline.pt); pass --force to train a new one")
    try:
        r = train_baseline(a.out, a.data, cfg, arch, init=a.init or None, val=a.val, subset=a.subset,
                           time_budget=a.time_budget, quiet=a.quiet, device=device, clear=a.force)
    except BaseException:
        if new_dir and os.path.isdir(a.out) and not os.listdir(a.out):
            os.rmdir(a.out)  # refused before anything was written: leave no empty folder
        raise
    if not r["complete"]:
        print(f"stopped at epoch {r['epochs_done']}/{r['epochs']} (time budget; state in {a.out}/resume.pt): "
              f"run the same command again to continue", flush=True)
        return 0
    s = r["summary"]
    print(json.dumps({k: s[k] for k in ("top1", "epochs", "train_seconds", "device")}), flush=True)
    print(f"wrote {a.out}/baseline.mbz, baseline.pt, baseline.json, train_log.jsonl, curves.png")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train the fp32 baseline (GPU; resumable across commands with --time-budget)",
        description="Train MobileNet-v2 (CIFAR variant: stride 1 in the stem and the first stride-2 block; --arch for "
                    "ResNet-18 or VGG-11/16-BN with CIFAR stems) from "
                    "random weights or from --init: SGD + Nesterov, linear warm-up then cosine, label smoothing, "
                    "augmentation on the device (crop + flip, TrivialAugment-style op, optional cutout), bf16 on "
                    "CUDA. One JSONL line and a progress update per epoch. Writes OUT/baseline.mbz (lossless, "
                    "with 'arch' metadata: `mbz eval` and every --baseline take it), OUT/baseline.pt, "
                    "OUT/baseline.json (top-1, settings, seconds), OUT/train_log.jsonl and OUT/curves.png. "
                    "With --time-budget it stops between epochs and leaves OUT/resume.pt: the same command "
                    "continues from there (other settings are refused).")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (made if missing; its parent must exist)")
    add_data(p)
    p.add_argument("--epochs", type=int, default=150, help="epochs (default 150)")
    p.add_argument("--batch", type=int, default=512, help="batch size (default 512)")
    p.add_argument("--lr", type=float, default=0.4, help="peak learning rate (default 0.4)")
    p.add_argument("--wd", type=float, default=1e-4, help="weight decay on conv / linear weights (default 1e-4)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=2.0, help="epochs of linear learning-rate warm-up (default 2)")
    p.add_argument("--ema", type=float, default=0.0, help="weight EMA decay (0: off)")
    p.add_argument("--no-trivial", action="store_true", help="plain crop + flip augmentation only")
    p.add_argument("--cutout", type=int, default=0, help="cutout square side in pixels (0: off)")
    p.add_argument("--arch", default=None, choices=PIPELINE_MODELS,
                   help="network (default mobilenet_v2_cifar); a .mbz given to --init sets it from its 'arch'")
    p.add_argument("--width-mult", type=float, default=1.0, help="MobileNet-v2 width multiplier (default 1.0)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of Python, NumPy, torch and CUDA (default 0)")
    p.add_argument("--init", default="", metavar="CKPT",
                   help="start from this checkpoint (.pt or .mbz, e.g. one thinned by `mbz prune-channels`) "
                        "instead of random weights; its shapes set the architecture")
    p.add_argument("--val", type=int, default=0, metavar="N",
                   help="hold the last N of a fixed permutation of the training images out and evaluate on them "
                        "instead of the test set (which is then not loaded; default 0: no validation split)")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="evaluate every N epochs and after the last (default 1)")
    p.add_argument("--subset", type=int, default=0, metavar="N",
                   help="train on N images, test on max(100, N/5) (CPU smoke test; default 0: every image)")
    p.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                   help="stop between epochs before this many seconds and save OUT/resume.pt (0: no limit)")
    p.add_argument("--fit-budget", type=float, default=0, metavar="SECONDS",
                   help="seconds of training: after warm-up, lower --epochs so that the cosine schedule ends in "
                        "time (the epoch count then depends on the GPU's speed; not resumable)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (CUDA; the first epoch pays for compilation)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="do not let cuDNN time its algorithms (CUDA)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph and replay it (CUDA; not with --compile)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--force", action="store_true", help="delete a finished or half-done baseline in OUT first")
    p.add_argument("-q", "--quiet", action="store_true", help="fewer messages")
    p.set_defaults(fn=cmd_train)


# -------------------------------------------------------------------------------------------- finetune
def cmd_finetune(a) -> int:
    from ..errors import UsageError
    from ..pipeline.baseline import load_splits
    from ..pipeline.compress import qat_resume
    input_file(a.file, "packed QAT model")
    refuse_inference_only(a.file, "finetune")
    output_file(a.output, inputs=[a.file, a.baseline], force=a.force)
    _mbz_output(a.output)
    if a.kd and not a.baseline:
        raise UsageError("--kd > 0 needs --baseline (the fp32 teacher); or pass --kd 0")
    if a.epochs < 0:
        raise UsageError(f"--epochs {a.epochs}: must be >= 0")
    dev = device_of(a.device)
    teacher = _teacher(a.baseline, dev) if a.kd else None
    folder = os.path.dirname(os.path.abspath(a.output))
    name = os.path.basename(a.output)[:-len(".mbz")]
    log = a.log or os.path.join(folder, "train_log.jsonl")
    tr, te = load_splits(a.data, a.subset)
    ckpt = os.path.join(folder, f"{name}.resume.pt")
    try:
        res = qat_resume(a.file, name, a.epochs, a.lr, a.kd, tr, te, folder, log, dev, teacher=teacher,
                         seed=a.seed, ckpt_path=ckpt, time_budget=a.time_budget or None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if res is None:
        print(f"stopped by the time budget (state in {ckpt}): run the same command again to continue", flush=True)
        return 0
    if os.path.exists(ckpt):
        os.remove(ckpt)
    res["resumed_from"] = a.file
    _append(os.path.join(folder, "runs.jsonl"), res)
    print(f"{a.output}: top-1 {res['top1_packed']:.2f} (packed, {dev.type}), {res['file_bytes']:,} B", flush=True)
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="more QAT epochs for a packed quantized model (e.g. a soup), GPU",
        description="Continue quantization-aware training of a packed QAT model (a .mbz with arch.folded_bn and "
                    "'compression' metadata, as `mbz compress` and `mbz soup` write). Everything comes from the "
                    "file: architecture, zero pattern (held by masks), weight bits and granularity, steps (the "
                    "file's exact grids) and activation ranges; with --epochs 0 it writes the same tensors. "
                    "Writes OUTPUT (.mbz), appends a line per epoch to --log and one result line to runs.jsonl "
                    "in OUTPUT's folder. Top-1 is measured on the training device.")
    p.add_argument("file", help="a packed QAT model (.mbz)")
    p.add_argument("-o", "--output", required=True, help="the fine-tuned model (.mbz; its folder must exist)")
    p.add_argument("--epochs", type=int, default=4, help="QAT epochs (default 4)")
    p.add_argument("--lr", type=float, default=0.005, help="peak learning rate (default 0.005)")
    p.add_argument("--kd", type=float, default=0.5, help="distillation weight (default 0.5; 0: off, no --baseline)")
    p.add_argument("--baseline", default=None, help="the fp32 teacher checkpoint (.pt or .mbz)")
    add_data(p)
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--subset", type=int, default=0, metavar="N", help="train on N images (CPU smoke test)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                   help="stop between epochs before this many seconds (state in OUTPUT's folder; run again)")
    p.add_argument("--log", default=None, help="per-epoch JSONL (default: OUTPUT's folder/train_log.jsonl)")
    add_force(p)
    p.set_defaults(fn=cmd_finetune)


# ------------------------------------------------------------------------------------------------ soup
def cmd_soup(a) -> int:
    from ..errors import UsageError
    from ..pipeline.soup import soup_files
    if len(a.files) < 2:
        raise UsageError("give at least two files to average")
    for f in a.files:
        input_file(f, "packed model")
    _mbz_output(a.output)
    output_file(a.output, inputs=a.files, force=a.force)
    device_of(a.device)
    _check_limit(a.limit)
    log = a.log or os.path.join(os.path.dirname(os.path.abspath(a.output)), "soup_log.jsonl")
    if a.data != "none" and (os.path.isdir(log) or not os.path.isdir(os.path.dirname(os.path.abspath(log)))):
        raise UsageError(f"--log {log}: {'a folder' if os.path.isdir(log) else 'its folder does not exist'}; "
                         "give a file name in an existing folder")
    ds = None
    if a.data != "none":  # read the data first: a bad --data fails before any writing
        from ..pipeline.data import load_dataset
        ds = load_dataset(a.data, "test")
        if a.limit:
            ds = ds.subset(min(a.limit, len(ds)))
    try:
        row = soup_files(a.files, a.output, a.steps, zstd=not a.no_zstd)
    except ValueError as e:
        raise UsageError(str(e)) from None
    avg = row.pop("float_average")
    if ds is not None:
        row.update(data=a.data, device=a.device, top1=_evaluate(a.output, ds, a.device, a.quiet))
        if a.float_average:  # the soup's architecture and activation ranges, the weights before re-snapping
            row["top1_float_average"] = _evaluate(a.output, ds, a.device, a.quiet, state_dict=avg)
        _append(log, row)
    print(json.dumps(row), flush=True)
    return 0


def _add_soup(sub) -> None:
    p = sub.add_parser(
        "soup", help="average QAT runs of one pruned model (a uniform model soup), pack and evaluate",
        description="Average the weights of packed models fine-tuned from one pruned model (they must share every "
                    "tensor name, shape and zero pattern: refused where more than 2% (and 32) of a weight tensor's "
                    "entries are zero in one input and of ordinary size in another, i.e. pruned, not rounded to zero "
                    "by QAT, or where its cosine similarity with the first input's is below 0.5; names may come in "
                    "any order; inputs of one width and granularity: per tensor or per channel, symmetric, from `mbz compress`, `finetune` or `pack --wbits`). "
                    "Each quantized weight is put back on a grid of its bits and granularity (--steps), pruned zeros "
                    "stay zero, biases and activation ranges are averaged. "
                    "Writes OUTPUT (.mbz) and, unless --data none, evaluates it and appends one JSON line (inputs, "
                    "bytes, top-1, largest re-snapping error) to --log. A soup usually needs a few QAT epochs "
                    "afterwards: `mbz finetune OUTPUT`.")
    p.add_argument("files", nargs="+", help="packed models (.mbz) fine-tuned from one pruned model")
    p.add_argument("-o", "--output", required=True, help="the averaged model (.mbz, written atomically)")
    p.add_argument("--data", default="jpeg", help=DATA_HELP + "; 'none' skips the evaluation")
    p.add_argument("--device", default="cpu", help="evaluation device: cpu (default) or cuda[:N]")
    p.add_argument("--limit", type=int, default=0, help="evaluate on a random subset of N test images")
    p.add_argument("--steps", choices=["mse", "mean"], default="mse",
                   help="per-channel steps of the averaged weights: least rounding error (default) or the mean "
                        "of the inputs' steps")
    p.add_argument("--no-zstd", action="store_true", help="no entropy stage (same tensors, a larger file)")
    p.add_argument("--float-average", action="store_true",
                   help="also evaluate the plain average before re-snapping (weights off their grids, not stored)")
    p.add_argument("--log", default=None, help="JSONL to append the result to (default: OUTPUT's folder/soup_log.jsonl)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_force(p)
    p.set_defaults(fn=cmd_soup)


# ---------------------------------------------------------------------------------------------- reduce
def cmd_reduce(a) -> int:
    from ..errors import UsageError
    from ..pipeline.params import reduce_file
    input_file(a.file, "packed model")
    _mbz_output(a.output)
    output_file(a.output, inputs=[a.file], force=a.force)
    if not 1 <= a.scale_bits <= 24:
        raise UsageError(f"--scale-bits {a.scale_bits}: must be 1..24 (24 keeps the scales)")
    if a.bias_bits and not 2 <= a.bias_bits <= 16:
        raise UsageError(f"--bias-bits {a.bias_bits}: must be 2..16, or 0 to keep the biases")
    device_of(a.device)
    _check_limit(a.limit)
    ds = None
    if a.data != "none":
        from ..pipeline.data import load_dataset
        ds = load_dataset(a.data, "test")
        if a.limit:
            ds = ds.subset(min(a.limit, len(ds)))
    row = reduce_file(a.file, a.output, a.scale_bits, a.bias_bits)
    if ds is not None:
        row.update(data=a.data, device=a.device, top1_before=_evaluate(a.file, ds, a.device, a.quiet),
                   top1_after=_evaluate(a.output, ds, a.device, a.quiet))
        _append(a.log or os.path.join(os.path.dirname(os.path.abspath(a.output)), "reduce_log.jsonl"), row)
    print(json.dumps(row), flush=True)
    return 0


def _add_reduce(sub) -> None:
    p = sub.add_parser(
        "reduce", help="hold a packed model's weight scales and biases at reduced precision, re-pack, evaluate",
        description="Round every weight scale of a packed model to --scale-bits significant bits (codes "
                    "unchanged) and put every bias on a per-tensor grid of --bias-bits bits; activation quantizers "
                    "and all other metadata are kept ('reduced_params' records the step). The result is a "
                    "different model: unless --data none, both files are evaluated on the same data and device and "
                    "one JSON line (bytes and top-1 before / after, largest change) is appended to --log.")
    p.add_argument("file", help="a packed model (.mbz with 'arch' metadata)")
    p.add_argument("-o", "--output", required=True, help="the reduced model (.mbz, written atomically)")
    p.add_argument("--scale-bits", type=int, default=8, help="significant bits of each weight scale (default 8; 24 = keep)")
    p.add_argument("--bias-bits", type=int, default=8, help="bits of the per-tensor bias grid (default 8; 0 = keep)")
    p.add_argument("--data", default="jpeg", help=DATA_HELP + "; 'none' skips the evaluation")
    p.add_argument("--device", default="cpu", help="evaluation device: cpu (default) or cuda[:N]")
    p.add_argument("--limit", type=int, default=0, help="evaluate on a random subset of N test images")
    p.add_argument("--log", default=None, help="JSONL to append to (default: OUTPUT's folder/reduce_log.jsonl)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_force(p)
    p.set_defaults(fn=cmd_reduce)


def register(sub) -> None:
    _add_train(sub)
    _add_finetune(sub)
    _add_soup(sub)
    _add_reduce(sub)
