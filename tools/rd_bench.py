#!/usr/bin/env python3
"""Rate-distortion points of a dense checkpoint: `mbz pack --target-size` then top-1, no data used for packing.

    # choose the knobs on held-out TRAINING images (the last 5,000 of the fixed permutation of
    # `mbz train --val 5000` / recipe data.val, mbz.pipeline.baseline.split_val)
    python tools/rd_bench.py CKPT --arch mobilenet_v2_cifar --targets 488000,822000 \\
        --size-exp 0.4,0.5,0.6 --split val --out results/ratedist/select.json
    # then evaluate the chosen setting once on the test set
    python tools/rd_bench.py CKPT --arch mobilenet_v2_cifar --targets 488000 --size-exp 0.5 \\
        --split test --out results/ratedist/test.json

For every target and every setting (size exponent x dead zone) the checkpoint is
packed exactly as `mbz pack CKPT -o F --arch ARCH --fold-bn --step-channel --target-size T
--size-exp E --deadzone Z [--best] [--bias-correct]` does (mbz.api.save_to_size on the BatchNorm-folded state_dict),
the file is read back with mbz.load_model and evaluated on the split (CPU).  Every row holds the real
file bytes.  `--keep DIR` keeps the files.  `--fold none` packs the state_dict as it is.
"""
import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import torch


def floats(s):
    return [float(x) for x in s.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--arch", required=True, help="architecture (mbz pack --arch)")
    ap.add_argument("--targets", required=True, help="byte budgets, comma-separated")
    ap.add_argument("--size-exp", default="0.5", help="allocation exponents to try, comma-separated")
    ap.add_argument("--deadzone", default="0", help="dead zones to try, comma-separated")
    ap.add_argument("--per-tensor", action="store_true", help="one step per tensor (default: per output channel)")
    ap.add_argument("--no-gain", action="store_true", help="mbz pack --no-gain")
    ap.add_argument("--bias-correct", action="store_true", help="mbz pack --bias-correct (needs --fold bn)")
    ap.add_argument("--fold", choices=("bn", "none"), default="bn")
    ap.add_argument("--best", action="store_true", help="mbz pack --best (RANS wherever smaller)")
    ap.add_argument("--split", choices=("val", "test"), required=True,
                    help="val: the last --val training images of the fixed permutation (choosing); test: the test set")
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--data", default="npz:/work/shared/data")
    ap.add_argument("--keep", help="keep the packed files in this folder")
    ap.add_argument("--reuse", action="store_true",
                    help="a file already in --keep of the same setting is evaluated as it is, not packed again "
                         "(e.g. the file chosen on --split val, then evaluated once with --split test)")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()

    from mbz import api, load_model
    from mbz.checkpoint import as_state_dict, read_object
    from mbz.models import arch_for_pack
    from mbz.models.biascorr import bias_fixes
    from mbz.models.registry import fold_state_dict
    from mbz.pipeline.baseline import split_val
    from mbz.pipeline.data import evaluate, load_dataset

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    if a.split == "val":
        ds = split_val(load_dataset(a.data, "train"), a.val)[1]
        split = f"{a.val} held-out training images (last {a.val} of split_val's fixed permutation)"
    else:
        ds = load_dataset(a.data, "test")
        split = f"test set ({len(ds)} images)"
    print(f"data: {split}, {time.time() - t0:.0f} s", flush=True)
    sd = as_state_dict(read_object(a.checkpoint))
    arch, _ = arch_for_pack(sd, a.arch)
    fix = None
    if a.fold == "bn":
        folded, farch = fold_state_dict(sd, arch)
        if a.bias_correct:
            fix = bias_fixes(sd, arch, folded)
        sd, arch = folded, farch
    out_dir = a.keep or tempfile.mkdtemp(prefix="rd_bench")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for target, e, z in itertools.product([int(t) for t in a.targets.split(",")], floats(a.size_exp),
                                          floats(a.deadzone)):
        path = os.path.join(out_dir, f"rd_{target}_e{e:g}_z{z:g}{'_best' if a.best else ''}{'_bc' if fix else ''}.mbz")
        t = time.time()
        if a.reuse and a.keep and os.path.exists(path):
            file_bytes, t_pack = os.path.getsize(path), None
        else:
            if os.path.exists(path):
                os.remove(path)
            rep = api.save_to_size(sd, path, target, deadzone=z, step_channel=not a.per_tensor, size_exp=e,
                                   arch=arch, step_gain=not a.no_gain, profile="best" if a.best else "default",
                                   rans=a.best, **({"bias_fix": fix} if fix else {}))
            file_bytes, t_pack = rep.file_bytes, round(time.time() - t, 1)
        model = load_model(path)
        r = evaluate(model, ds, batch=100)
        row = {"target_bytes": target, "file_bytes": file_bytes, "size_exp": e, "deadzone": z,
               "per_channel": not a.per_tensor, "gain": not a.no_gain, "fold_bn": a.fold == "bn", "best": a.best,
               "bias_correct": bool(fix),
               "top1": round(r["top1"], 2), "loss": round(r["loss"], 4), "n": r["n"], "split": a.split,
               "pack_s": t_pack}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"command": "python tools/rd_bench.py " + " ".join(sys.argv[1:]), "checkpoint": a.checkpoint,
           "arch": arch, "split": split, "device": "cpu", "rows": rows}
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
