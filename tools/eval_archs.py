"""ResNet-18 and VGG-11-BN checkpoints through `mbz pack --arch` and `mbz eval`: the same top-1 as in PyTorch.

For each architecture (torchvision's builders at 10 classes with ImageNet strides, our CIFAR variants, and a
DataParallel-wrapped checkpoint), a seeded network whose BatchNorm statistics are set from --calib training
images (no training: the networks are untrained, so top-1 is near chance; what is compared is that the packed file
evaluates exactly as the state_dict does) is saved with torch.save, packed with `mbz pack --arch NAME`
(lossless), evaluated with `mbz eval --limit N`, and compared with the state_dict evaluated in PyTorch on the same
N test images: top-1 of both, and the logits of mbz.load_model against the PyTorch module (max |difference|,
argmax agreement).

    python tools/eval_archs.py --data npz:/work/shared/data --limit 500 --out results/arch_eval/results.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

def _tv(name):
    def build():
        import torchvision
        return getattr(torchvision.models, name)(num_classes=10)
    return build


def _ours(name):
    def build():
        from mbz.models import ARCHITECTURES
        return ARCHITECTURES[name].builder(num_classes=10)
    return build


CASES = (  # (name recorded with --arch, how the network is built, key prefix in the checkpoint, extra pack options)
    ("resnet18", "torchvision.models.resnet18(num_classes=10)", _tv("resnet18"), "", []),
    ("resnet18_cifar", "mbz.models.cifar_resnet.resnet18_cifar(num_classes=10)", _ours("resnet18_cifar"), "", []),
    ("resnet18_cifar", "mbz.models.cifar_resnet.resnet18_cifar(num_classes=10)", _ours("resnet18_cifar"), "module.", []),
    ("vgg11_bn", "torchvision.models.vgg11_bn(num_classes=10)", _tv("vgg11_bn"), "", ["--no-detect"]),  # 515 MB
    ("vgg11_bn_cifar", "mbz.models.cifar_vgg.vgg11_bn_cifar(num_classes=10)", _ours("vgg11_bn_cifar"), "", []),
)


def calibrate(model, ds, n: int):
    """BatchNorm running statistics from n training images (cumulative average), no weight update."""
    from mbz.pipeline.data import MEAN, STD
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    x = ds.images[:n].permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        for i in range(0, n, 64):
            model(x[i:i + 64])
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="npz:/work/shared/data")
    ap.add_argument("--limit", type=int, default=500, help="test images (the random subset mbz eval --limit takes)")
    ap.add_argument("--calib", type=int, default=256, help="training images for the BatchNorm statistics")
    ap.add_argument("--out", default="results/arch_eval/results.json")
    a = ap.parse_args()
    import mbz
    from mbz.pipeline.data import evaluate, load_dataset
    train = load_dataset(a.data, "train")
    test = load_dataset(a.data, "test").subset(a.limit)
    rows = []
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name, expr, build, prefix, extra in CASES:
            torch.manual_seed(0)
            model = calibrate(build(), train, a.calib)
            ck, out = os.path.join(tmp, "m.pt"), os.path.join(tmp, "m.mbz")
            torch.save({prefix + k: v for k, v in model.state_dict().items()}, ck)
            t0 = time.time()
            pack = [sys.executable, "-m", "mbz.cli", "pack", ck, "-o", out, "--force", "-q", "--arch", name, *extra]
            subprocess.run(pack, check=True, env=env, capture_output=True)
            t_pack = time.time() - t0
            ev = subprocess.run([sys.executable, "-m", "mbz.cli", "eval", out, "--data", a.data, "--limit",
                                 str(a.limit), "--json", "-q"], check=True, env=env, capture_output=True, text=True)
            top1_mbz = json.loads(ev.stdout)["top1"]
            top1_pt = evaluate(model, test)["top1"]
            x = test.images.permute(0, 3, 1, 2).float().div(255)
            from mbz.pipeline.data import MEAN, STD
            x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
            back = mbz.load_model(out)
            with torch.no_grad():
                lp, lm = model(x[:100]), back(x[:100])
            rows.append({"arch": name, "built_as": expr, "checkpoint_prefix": prefix, "pack_options": extra,
                         "checkpoint_bytes": os.path.getsize(ck), "file_bytes": os.path.getsize(out),
                         "pack_s": round(t_pack, 1), "top1_mbz_eval": top1_mbz, "top1_pytorch": top1_pt,
                         "same_top1": top1_mbz == top1_pt, "logits_images": 100,
                         "logits_max_abs_diff": float((lp - lm).abs().max()),
                         "argmax_agree": int((lp.argmax(1) == lm.argmax(1)).sum())})
            print(json.dumps(rows[-1]), flush=True)
    res = {"command": "python tools/eval_archs.py " + " ".join(sys.argv[1:]),
           "data": f"CIFAR-10 (JPEG q75 export), {a.limit} test images (mbz eval --limit subset)",
           "networks": f"untrained: seeded initialisation, BatchNorm statistics from {a.calib} training images",
           "rows": rows}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0 if all(r["same_top1"] and r["logits_max_abs_diff"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
