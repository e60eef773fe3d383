#!/usr/bin/env python3
"""`mbz pack CKPT --wbits 4 [--step-1d S] [--bn-affine] --best`: file bytes, and the cost of quantizing the 1-D tensors.

    # choose S on held-out TRAINING images (no test image): output error against the dense model
    python tools/bench_w4_1d.py CKPT --steps 0,0.005,0.01,0.02,0.04 --split val \\
        --out results/ratedist/w4_step1d_select.json
    # then evaluate the chosen S (and the plain --wbits 4 file) once on the test set
    python tools/bench_w4_1d.py CKPT --steps 0,0.02 --split test --out results/ratedist/w4_step1d_test.json
    # the same with each BatchNorm rewritten as its eval-mode affine first (pack --bn-affine), beside the plain rows
    python tools/bench_w4_1d.py CKPT --steps 0.01,0.02 --bn-affine both --split val --out ...

Every row packs the checkpoint as `mbz pack CKPT -o F --wbits 4 --step-1d S --best --arch ARCH` does (S 0:
the 1-D tensors stay exact, the plain `--wbits 4` file; with `--bn-affine yes` every BatchNorm is first
rewritten as the affine map it computes in eval mode, mbz.models.registry.bn_affine_state_dict); the 4-bit weight codes and scales are the same in
every row (checked: the decoded weight tensors are compared with the S=0 file's).  Reported: the real file
bytes, the bytes of the 1-D tensors, and on `--split val` the KL divergence from the dense model's softmax
(batchmean), the agreement of the top-1 class with the dense model's (%) and top-1 against the labels over
the last N of the 5,000 held-out training images (mbz.pipeline.baseline.split_val; the reference was trained
on them, so top-1 there says little); on `--split test` top-1 over the 10,000 test images (CPU).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--arch", default="mobilenet_v2_cifar")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--steps", default="0,0.01,0.02", help="relative steps of the 1-D tensors (0: exact)")
    ap.add_argument("--split", choices=("val", "test"), required=True)
    ap.add_argument("--n", type=int, default=5000, help="held-out images used with --split val")
    ap.add_argument("--data", default="npz:/work/shared/data")
    ap.add_argument("--bn-affine", choices=("no", "yes", "both"), default="no",
                    help="rewrite each BatchNorm as its eval-mode affine before packing (pack --bn-affine): "
                         "no, yes, or both (a row of each per step)")
    ap.add_argument("--keep", help="keep the packed files in this folder")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()

    import mbz
    from mbz import api, load_model
    from mbz.checkpoint import as_state_dict, read_object
    from mbz.models import arch_for_pack, build_model
    from mbz.models.registry import bn_affine_state_dict
    from mbz.pipeline.baseline import split_val
    from mbz.pipeline.data import load_dataset, normalize

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if a.split == "val":
        ds = split_val(load_dataset(a.data, "train"), 5000)[1]
        x, y = normalize(ds.images[-a.n:]), ds.labels[-a.n:]
        split = f"last {a.n} of the 5,000 held-out training images (split_val)"
    else:
        ds = load_dataset(a.data, "test")
        x, y = normalize(ds.images), ds.labels
        split = f"test set ({len(ds)} images)"
    sd = as_state_dict(read_object(a.checkpoint))
    arch, _ = arch_for_pack(sd, a.arch)

    def logits(model):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)])

    dense = build_model(arch)
    dense.load_state_dict(sd)
    l0 = logits(dense)
    out_dir = a.keep or tempfile.mkdtemp(prefix="w4_1d")
    os.makedirs(out_dir, exist_ok=True)
    rows, ref_w = [], None
    one_d = [k for k, t in sd.items() if t.is_floating_point() and t.dim() == 1]
    affine = bn_affine_state_dict(sd, arch)[0] if a.bn_affine != "no" else None
    variants = {"no": [False], "yes": [True], "both": [False, True]}[a.bn_affine]
    for s, aff in [(float(v), f) for v in a.steps.split(",") for f in variants]:
        path = os.path.join(out_dir, f"w{a.wbits}_1d{s:g}{'_bnaffine' if aff else ''}_best.mbz")
        if os.path.exists(path):
            os.remove(path)
        t = time.time()
        rep = api.save(affine if aff else sd, path, wbits=a.wbits, step_1d=s if s > 0 else None, arch=arch, profile="best", rans=True)
        t_pack = time.time() - t
        got = mbz.load(path)
        w = {k: v for k, v in got.items() if v.dim() >= 2}
        if ref_w is None:
            ref_w = w
        same_w = all(torch.equal(w[k], ref_w[k]) for k in ref_w)
        by = {r.name: r for r in rep.tensors}
        err = [by[k].error for k in one_d if by[k].error]
        lq = logits(load_model(path))
        row = {"step_1d": s, "bn_affine": aff, "file_bytes": rep.file_bytes, "one_d_bytes": sum(by[k].stored_bytes for k in one_d),
               "one_d_tensors": len(one_d), "one_d_quantized": sum(1 for k in one_d if by[k].quantized),
               "min_sqnr_db_1d": round(min((e["sqnr_db"] for e in err), default=float("inf")), 1),
               "weights_equal_plain": same_w, "split": a.split,
               "top1": round(float((lq.argmax(1) == y).float().mean()) * 100, 2),
               "agree_dense": round(float((lq.argmax(1) == l0.argmax(1)).float().mean()) * 100, 2),
               "kl_dense": round(F.kl_div(F.log_softmax(lq, 1), F.log_softmax(l0, 1), log_target=True,
                                          reduction="batchmean").item(), 5),
               "pack_s": round(t_pack, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"command": "python tools/bench_w4_1d.py " + " ".join(sys.argv[1:]), "checkpoint": a.checkpoint,
           "arch": arch, "split": split, "device": "cpu", "dense_top1": round(float((l0.argmax(1) == y).float().mean()) * 100, 2),
           "rows": rows}
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
