#!/usr/bin/env python3
"""Choose rate-distortion settings on held-out training images by the output error against the dense model.

    python tools/rd_select.py CKPT --arch mobilenet_v2_cifar --targets 486000,819000 \\
        --size-exp 0.5,0.6 --bias-correct 0,1 --n 2000 --out results/ratedist/select_output_error.json

For every estimated byte budget x size exponent x bias correction (0/1) the BatchNorm-folded checkpoint is
quantized at the step whose estimate (mbz.ratedist.estimate_bytes: order-0 entropy of the codes, which the
`--best` profile's file comes within ~0.5% of) is 0.995 x the budget -- the first step `mbz pack
--target-size` tries -- packed (default profile: same tensors as `--best`, faster), read back with
mbz.load_model and run on the last N images of the held-out split (the last 5,000 of split_val's fixed
permutation of the training images).  Reported per row: the KL divergence from the dense model's softmax
(batchmean), the relative squared logit error, the agreement of the top-1 class with the dense model's and
top-1 against the labels (%).  No test image is used.
"""
import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--targets", required=True, help="estimated byte budgets, comma-separated")
    ap.add_argument("--size-exp", default="0.5")
    ap.add_argument("--bias-correct", default="0,1", help="0 / 1, comma-separated")
    ap.add_argument("--n", type=int, default=2000, help="held-out images (the last N of the 5,000)")
    ap.add_argument("--data", default="npz:/work/shared/data")
    ap.add_argument("--out")
    a = ap.parse_args()

    from mbz import api, load_model
    from mbz.checkpoint import as_state_dict, read_object
    from mbz.models import arch_for_pack, build_model
    from mbz.models.biascorr import bias_fixes
    from mbz.models.registry import fold_state_dict
    from mbz.pipeline.baseline import split_val
    from mbz.pipeline.data import load_dataset, normalize
    from mbz.ratedist import StepPolicy, estimate_bytes

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ds = split_val(load_dataset(a.data, "train"), 5000)[1]
    x, y = normalize(ds.images[-a.n:]), ds.labels[-a.n:]
    sd = as_state_dict(read_object(a.checkpoint))
    arch, _ = arch_for_pack(sd, a.arch)
    folded, farch = fold_state_dict(sd, arch)
    fix = bias_fixes(sd, arch, folded)

    def logits(model):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)])

    dense = build_model(farch)
    dense.load_state_dict(folded)
    l0 = logits(dense)
    tmp = tempfile.mkdtemp(prefix="rd_select")
    rows = []
    for target, e, bc in itertools.product([int(t) for t in a.targets.split(",")],
                                           [float(v) for v in a.size_exp.split(",")],
                                           [int(v) for v in a.bias_correct.split(",")]):
        lo, hi = math.log(1e-3), math.log(8.0)
        for _ in range(30):
            mid = (lo + hi) / 2
            pol = StepPolicy(math.exp(mid), channel=True, size_exp=e)
            if estimate_bytes(folded, pol, set()) <= 0.995 * target:
                hi = mid
            else:
                lo = mid
        step = math.exp(hi)
        path = os.path.join(tmp, "x.mbz")
        if os.path.exists(path):
            os.remove(path)
        t = time.time()
        api.save(folded, path, step=step, step_channel=True, size_exp=e, arch=farch, **({"bias_fix": fix} if bc else {}))
        lq = logits(load_model(path))
        kl = F.kl_div(F.log_softmax(lq, 1), F.log_softmax(l0, 1), log_target=True, reduction="batchmean").item()
        row = {"target_estimate": target, "size_exp": e, "bias_correct": bool(bc), "step": round(step, 4),
               "estimate_bytes": int(estimate_bytes(folded, StepPolicy(step, channel=True, size_exp=e), set())),
               "kl": round(kl, 5), "logit_rel_mse": round(float(((lq - l0) ** 2).sum() / (l0 ** 2).sum()), 5),
               "agree": round(float((lq.argmax(1) == l0.argmax(1)).float().mean()) * 100, 2),
               "top1": round(float((lq.argmax(1) == y).float().mean()) * 100, 2), "s": round(time.time() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"command": "python tools/rd_select.py " + " ".join(sys.argv[1:]), "checkpoint": a.checkpoint,
           "split": f"last {a.n} of the 5,000 held-out training images (split_val)", "rows": rows}
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
