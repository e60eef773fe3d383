"""Which pairs the soup's copy check (mbz.pipeline.soup._check_copies) takes and refuses.

Copies: the dense fp32 reference's conv / linear weights plus Gaussian noise (NOISE x each tensor's std), both
rounded to 2, 4 and 8 bits per channel and per tensor (mbz.pipeline.mixed.ptq_weight).  Other prunings: a
random (64, 32, 3, 3) weight cut by magnitude to 50% against 70% and 80%, and against a random 50% mask.

    python tools/soup_copy_check.py /work/shared/data/reference_mnv2_cifar10_fp32.pt --noise 0.1,0.3
"""
import argparse

import torch

from mbz.pipeline.mixed import ptq_weight
from mbz.pipeline.soup import _check_copies

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("reference", help="a dense fp32 state_dict (.pt)")
ap.add_argument("--noise", default="0.1,0.3", help="noise levels, in units of each tensor's std")
a = ap.parse_args()
ref = torch.load(a.reference, weights_only=True, map_location="cpu")
torch.manual_seed(0)
for noise in (float(x) for x in a.noise.split(",")):
    for bits in (2, 4, 8):
        for per_channel in (True, False):
            refused, n = [], 0
            for name, w in ref.items():
                if w.dim() < 2 or w.numel() < 64:
                    continue
                n += 1
                pair = [ptq_weight(w, bits, per_channel),
                        ptq_weight(w + noise * w.std() * torch.randn_like(w), bits, per_channel)]
                try:
                    _check_copies(name, pair)
                except ValueError:
                    refused.append(name)
            print(f"copies, noise {noise} std, {bits} bits, {'per channel' if per_channel else 'per tensor'}: "
                  f"{len(refused)} of {n} tensors refused {refused[:3]}")
w = torch.randn(64, 32, 3, 3)
cut = lambda share: w * (w.abs() > w.abs().flatten().kthvalue(int(share * w.numel())).values)  # noqa: E731
others = {"50% vs 70% pruned": cut(0.7), "50% vs 80% pruned": cut(0.8),
          "50% vs a random 50% mask": w * (torch.rand(w.shape) > 0.5)}
for bits in (2, 4, 8, 32):
    for what, other in others.items():
        try:
            _check_copies("w", [ptq_weight(cut(0.5), bits), ptq_weight(other, bits)])
            verdict = "taken"
        except ValueError:
            verdict = "refused"
        print(f"{what}, {bits} bits: {verdict}")
