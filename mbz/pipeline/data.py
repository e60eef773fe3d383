"""Datasets as uint8 arrays held whole in memory (or on the GPU), and GPU-side augmentation.

Sources:
* ``npz:PATH``    — the JPEG export (arrays jpeg, offsets, labels, classes), decoded once with Pillow;
* ``cifar10:ROOT`` / ``cifar100:ROOT`` — torchvision.datasets.CIFAR10 / CIFAR100 read from ROOT (downloaded
  into ROOT only when $MBZ_DOWNLOAD is 1);
* ``folder:ROOT``  — any ImageFolder, resized to 32x32.

Normalization: per-channel CIFAR-10 mean / std below, applied after augmentation.
Augmentation (training only, on the device, per sample): random crop 32 with 4 px
zero padding, horizontal flip, optional TrivialAugment-style op, optional cutout.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ArrayDataset:
    images: torch.Tensor   # uint8 N x 32 x 32 x 3
    labels: torch.Tensor   # int64 N
    classes: list
    source: str

    def __len__(self):
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> "ArrayDataset":
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes, self.source + f"[{n}]")

    def to(self, device) -> "ArrayDataset":
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.classes, self.source)


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image
    out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    raw = buf.tobytes()
    for i in range(len(offsets) - 1):
        img = Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])).convert("RGB")
        out[i] = np.asarray(img)
    return out


def load_npz(path: str) -> ArrayDataset:
    with np.load(path) as d:
        images = _decode_jpegs(d["jpeg"], d["offsets"])
        labels = d["labels"].astype(np.int64)
        classes = [str(c) for c in d["classes"]]
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, f"npz:{path}")


DOWNLOAD_ENV = "MBZ_DOWNLOAD"  # set to 1: cifar10:ROOT / cifar100:ROOT may download a missing dataset into ROOT
_CIFAR_FOLDER = {10: "cifar-10-batches-py", 100: "cifar-100-python"}  # torchvision's folder of the python version


def download_allowed() -> bool:
    """$MBZ_DOWNLOAD is set to 1 / true / yes / on: torchvision may download a missing CIFAR-10/100 (a network
    access that may stall where there is none, so never done unless asked)."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _cifar_folder(root: str, classes: int, download: bool) -> str:
    """ROOT/cifar-10-batches-py (or cifar-100-python); DataError when it is missing and no download is allowed."""
    from ..errors import DataError
    folder = os.path.join(root, _CIFAR_FOLDER[classes])
    if not download and not os.path.isdir(folder):
        raise DataError(f"cifar{classes}:{root}: no CIFAR-{classes} there (torchvision's {folder} is missing); "
                        f"put torchvision's {_CIFAR_FOLDER[classes]} folder in {root}, or let torchvision download "
                        f"it there (~170 MB, needs internet) by running once with {DOWNLOAD_ENV}=1; or use "
                        f"npz:DIR / folder:ROOT")
    return folder


def load_torchvision_cifar(root: str, train: bool, download: bool = False, classes: int = 10) -> ArrayDataset:
    """torchvision.datasets.CIFAR10 / CIFAR100 (`classes` 10 or 100) as uint8 arrays, read from
    ROOT/cifar-10-batches-py or ROOT/cifar-100-python.

    Nothing is downloaded unless `download` (load_dataset passes download_allowed()).  Raises DataError, one
    line naming ROOT: the folder is missing (and how to get it), its files are unreadable, or the download
    failed."""
    from ..errors import DataError
    folder = _cifar_folder(root, classes, download)
    from torchvision.datasets import CIFAR10, CIFAR100
    try:
        ds = (CIFAR100 if classes == 100 else CIFAR10)(root, train=train, download=download)
    except (OSError, RuntimeError) as e:  # offline (urllib's URLError is an OSError), or a corrupt archive
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if not download:
            raise DataError(f"cifar{classes}:{root}: the CIFAR-{classes} files in {folder} are unreadable ({why}); "
                            f"replace them with torchvision's, or delete the folder and run once with "
                            f"{DOWNLOAD_ENV}=1 to download them") from None
        raise DataError(f"cifar{classes}:{root}: the CIFAR-{classes} files are not in {root} and could not be "
                        f"downloaded ({why}); put torchvision's {_CIFAR_FOLDER[classes]} folder there, "
                        f"or use npz:DIR / folder:ROOT") from None
    return ArrayDataset(torch.from_numpy(np.asarray(ds.data)), torch.tensor(ds.targets, dtype=torch.int64),
                        list(ds.classes), f"cifar{classes}:{root}")


load_torchvision_cifar10 = load_torchvision_cifar



def load_folder(root: str) -> ArrayDataset:
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(root)
    imgs = np.stack([np.asarray(ds.loader(p).convert("RGB").resize((32, 32))) for p, _ in ds.samples])
    return ArrayDataset(torch.from_numpy(imgs), torch.tensor(ds.targets, dtype=torch.int64), ds.classes, f"folder:{root}")


DATA_ENV = "MBZ_DATA"  # folder holding cifar10_jpeg_{train,test}.npz when --data is 'jpeg'


def split_of_file(path: str) -> str | None:
    """The split an .npz file's name says ('train', 'test' or 'val' as a word of it, e.g. cifar10_jpeg_test.npz),
    or None when it says none or several."""
    words = set(re.split(r"[^a-z0-9]+", os.path.splitext(os.path.basename(path))[0].lower()))
    named = words & {"train", "test", "val"}
    return named.pop() if len(named) == 1 else None


def check_dataset(spec: str, split: str) -> str | None:
    """The checks of load_dataset that read no images (a command runs them before slow work, to fail fast):
    for 'jpeg' / 'npz:...' the .npz file of `split` that will be read; None for the other sources (their
    folder checked where that is cheap).  Raises DataError as load_dataset does."""
    from ..errors import DataError
    kind, _, arg = spec.partition(":")
    if kind in ("jpeg", "npz"):
        base = arg or os.environ.get(DATA_ENV, "")
        if not base:
            raise DataError(f"no data: pass --data npz:DIR (a folder with cifar10_jpeg_{split}.npz) or set {DATA_ENV}=DIR")
        if os.path.isfile(base) and not base.endswith(".npz"):
            raise DataError(f"{base}: a file, not an .npz export nor a folder (pass --data npz:DIR, the folder "
                            f"holding cifar10_jpeg_{{train,test}}.npz, or npz:FILE.npz)")
        path = base if base.endswith(".npz") else os.path.join(base, f"cifar10_jpeg_{split}.npz")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (pass --data npz:DIR or set {DATA_ENV}=DIR)")
        named = split_of_file(path)
        if named is not None and named != split:  # e.g. npz:.../cifar10_jpeg_train.npz where the test split is read
            raise DataError(f"{path}: its name says the {named} split, but the {split} split is read here; pass "
                            f"npz:DIR (the folder holding cifar10_jpeg_{{train,test}}.npz) or the {split} file")
        return path
    if kind in ("cifar10", "cifar100"):
        _cifar_folder(arg or "./data", 100 if kind == "cifar100" else 10, download_allowed())
        return None
    if kind == "folder":
        root = os.path.join(arg, split)
        if not os.path.isdir(root):
            raise DataError(f"{root}: no such folder (folder:ROOT needs ROOT/train and ROOT/test)")
        return None
    raise DataError(f"unknown data source {spec!r}: use jpeg, npz:PATH, cifar10:ROOT, cifar100:ROOT or folder:ROOT")


def load_dataset(spec: str, split: str) -> ArrayDataset:
    """One split ('train' or 'test') of a dataset named by `spec`.

    'jpeg' (the CIFAR-10 JPEG q75 export in the folder $MBZ_DATA), 'npz:DIR_OR_FILE',
    'cifar10:ROOT' / 'cifar100:ROOT' (torchvision; downloaded only when $MBZ_DOWNLOAD=1) or
    'folder:ROOT' (ImageFolder with ROOT/train and ROOT/test).  Raises DataError
    (one line naming the path) when nothing readable is there, or when an .npz FILE's name says another
    split than `split` (split_of_file: npz:.../cifar10_jpeg_train.npz is never read as the test split)."""
    from ..errors import DataError
    kind, _, arg = spec.partition(":")
    path = check_dataset(spec, split)
    if path is not None:
        try:
            return load_npz(path)
        except (OSError, KeyError, ValueError) as e:
            why = "not an npz archive" if "pickled" in str(e) or "allow_pickle" in str(e) else str(e)
            raise DataError(f"{path}: not a JPEG export npz (arrays jpeg, offsets, labels, classes): {why}") from None
    if kind in ("cifar10", "cifar100"):
        try:
            return load_torchvision_cifar(arg or "./data", split == "train", download=download_allowed(),
                                          classes=100 if kind == "cifar100" else 10)
        except (OSError, RuntimeError) as e:
            raise DataError(f"{spec}: {e}") from None
    return load_folder(os.path.join(arg, split))  # kind "folder" (check_dataset refused any other)


_STATS: dict = {}


def _channel_stats(values, device) -> torch.Tensor:
    """(1, 3, 1, 1) tensor of `values` on `device`, made once: building it from a list every batch is a
    blocking host-to-device copy, which stalls the training loop until the GPU has caught up."""
    key = (tuple(values), str(device))
    if key not in _STATS:
        _STATS[key] = torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return _STATS[key]


def _standardize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - _channel_stats(mean, x.device)) / _channel_stats(std, x.device)


def normalize(x_uint8_nhwc: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 NHWC -> float NCHW, normalized."""
    return _standardize(x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255), mean, std)


# --------------------------------------------------------------------------- GPU augmentation
def random_crop_flip(x: torch.Tensor, pad: int = 4, gen=None) -> torch.Tensor:
    """x float NCHW in [0,1]; per-sample random crop with zero padding and horizontal flip."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    ar = torch.arange(h, device=x.device)
    rows = (dy[:, None] + ar[None, :])                      # n x h
    cols = (dx[:, None] + ar[None, :])                      # n x w
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_r = rows[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = xp.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, idx_c)


def cutout(x: torch.Tensor, size: int = 8, gen=None) -> torch.Tensor:
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n,), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    my = ((ys - cy[:, None]).abs() <= size // 2)
    mx = ((xs - cx[:, None]).abs() <= size // 2)
    mask = (my[:, :, None] & mx[:, None, :])[:, None]
    return x.masked_fill(mask, 0.0)


def _blend(a, b, f):
    return (b + (a - b) * f).clamp_(0, 1)


def trivial_augment(x: torch.Tensor, gen=None) -> torch.Tensor:
    """One random op per sample at a random strength (TrivialAugment-like, all on the device).

    Ops: identity, brightness, contrast, saturation, solarize, posterize, rotate,
    shear-x, translate-x / y, autocontrast.
    """
    n = x.shape[0]
    dev = x.device
    op = torch.randint(0, 11, (n,), device=dev, generator=gen)
    mag = torch.rand(n, device=dev, generator=gen)
    sign = torch.where(torch.rand(n, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    f = (1 + 0.9 * mag * sign).view(n, 1, 1, 1)
    out = x.clone()
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)

    def put(k, val):
        m = (op == k).view(n, 1, 1, 1)
        out.copy_(torch.where(m, val, out))

    put(1, _blend(x, torch.zeros_like(x), f))
    put(2, _blend(x, gray.mean(dim=(2, 3), keepdim=True).expand_as(x), f))
    put(3, _blend(x, gray.expand_as(x), f))
    thr = (1 - mag).view(n, 1, 1, 1)
    put(4, torch.where(x >= thr, 1 - x, x))
    bits = (8 - (mag * 4).long()).view(n, 1, 1, 1)
    q = (2.0 ** (8 - bits)).float()
    put(5, torch.floor(x * 255 / q) * q / 255)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    put(10, ((x - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1))
    # geometric ops through one affine grid
    theta = torch.zeros(n, 2, 3, device=dev)
    ang = (op == 6) * sign * mag * (30 * torch.pi / 180)
    shear = (op == 7) * sign * mag * 0.3
    tx = (op == 8) * sign * mag * 0.3
    ty = (op == 9) * sign * mag * 0.3
    theta[:, 0, 0] = torch.cos(ang)
    theta[:, 0, 1] = -torch.sin(ang) + shear
    theta[:, 1, 0] = torch.sin(ang)
    theta[:, 1, 1] = torch.cos(ang)
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    # warp the whole batch and select, rather than `x[geo]`: boolean indexing (and `geo.any()`) waits
    # for the GPU every step, which left it idle about half the time (two runs side by side each
    # kept ~85% of the speed of one alone)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    put_geo = ((op >= 6) & (op <= 9)).view(n, 1, 1, 1)
    return torch.where(put_geo, F.grid_sample(x, grid, align_corners=False, padding_mode="zeros"), out)


def augment_batch(x_uint8: torch.Tensor, *, trivial: bool = False, cutout_size: int = 0, gen=None,
                  mean=MEAN, std=STD) -> torch.Tensor:
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255)
    x = random_crop_flip(x, gen=gen)
    if trivial:
        x = trivial_augment(x, gen=gen)
    if cutout_size:
        x = cutout(x, cutout_size, gen=gen)
    return _standardize(x, mean, std)


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: ArrayDataset, batch: int | None = None, device=None, amp: bool = False,
             mean=MEAN, std=STD, progress=None) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy on a whole dataset (eval mode).

    Batch 25 on the CPU (cache-friendly), 1000 on a GPU.  `progress(n_done, n_total)`,
    when given, is called after every batch.
    """
    device = device or next(model.parameters()).device
    batch = batch or (1000 if device.type == "cuda" else 25)
    model.eval()

    correct, loss_sum = 0, 0.0
    if device.type == "cuda" and not amp:
        # true fp32: TF32 convolutions change low bits, which move 4-bit activation codes across
        # rounding boundaries (seen: 90.78% with TF32 on an H100 vs 90.55% on the CPU for one model)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    for i in range(0, len(ds), batch):
        x = normalize(ds.images[i:i + batch].to(device), mean, std)
        y = ds.labels[i:i + batch].to(device)
        with torch.autocast(device_type=device.type if hasattr(device, "type") else "cuda",
                            dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        if progress is not None:
            progress(min(i + batch, len(ds)), len(ds))
    return {"top1": 100.0 * correct / len(ds), "loss": loss_sum / len(ds), "n": len(ds)}
