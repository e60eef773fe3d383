"""The CIFAR-10 JPEG export the figures are measured on, rebuilt from torchvision's CIFAR-10.

Layout of `cifar10_jpeg_{train,test}.npz` (numpy .npz, uncompressed), what `data.load_npz` reads:

* ``jpeg``    uint8 (total bytes,): every image's JPEG file, concatenated;
* ``offsets`` int64 (N + 1,): image i is ``jpeg[offsets[i]:offsets[i + 1]]``;
* ``labels``  uint8 (N,): class index of each image;
* ``classes`` str (10,): class names, index order.

Each 32x32 RGB image is encoded with Pillow (``Image.save(format="JPEG", quality=Q)``: baseline
JFIF, libjpeg's standard tables scaled to Q, 4:2:0 chroma subsampling).  Images are ordered by
label, keeping torchvision's order within a class, as in the export the figures use.  Another
JPEG encoder (or another libjpeg build) may write slightly different bytes, hence slightly
different pixels after decoding.
"""
from __future__ import annotations

import io
import os

import numpy as np

from ..container import atomic_write
from ..errors import DataError

SPLITS = ("train", "test")


def export_name(split: str) -> str:
    return f"cifar10_jpeg_{split}.npz"


def encode_jpegs(images: np.ndarray, quality: int = 75, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(jpeg uint8, offsets int64) of N x H x W x 3 uint8 `images`, each encoded as JPEG at `quality`.

    `progress(n_done, n_total)`, when given, is called every 1,000 images and at the end."""
    from PIL import Image
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected uint8 images N x H x W x 3, got {images.dtype} {tuple(images.shape)}")
    if not 1 <= quality <= 100:
        raise DataError(f"JPEG quality {quality}: must lie in 1..100")
    bufs, offsets = [], np.zeros(len(images) + 1, np.int64)
    for i, img in enumerate(images):
        b = io.BytesIO()
        Image.fromarray(img, "RGB").save(b, format="JPEG", quality=quality)
        bufs.append(b.getvalue())
        offsets[i + 1] = offsets[i] + len(bufs[-1])
        if progress is not None and ((i + 1) % 1000 == 0 or i + 1 == len(images)):
            progress(i + 1, len(images))
    return np.frombuffer(b"".join(bufs), np.uint8), offsets


def export_bytes(images: np.ndarray, labels, classes, quality: int = 75, sort_by_label: bool = True,
                 progress=None) -> bytes:
    """The .npz file (bytes) of one split: `images` N x 32 x 32 x 3 uint8, `labels` N ints, `classes` names."""
    return _export(images, labels, classes, quality, sort_by_label, progress)[0]


def _export(images, labels, classes, quality, sort_by_label, progress) -> tuple[bytes, int]:
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes) or len(classes) > 256):
        raise DataError(f"labels must lie in 0..{len(classes) - 1} (at most 256 classes)")
    if sort_by_label:
        order = np.argsort(labels, kind="stable")
        images, labels = np.asarray(images)[order], labels[order]
    jpeg, offsets = encode_jpegs(images, quality, progress)
    out = io.BytesIO()
    np.savez(out, jpeg=jpeg, offsets=offsets, labels=labels.astype(np.uint8),
             classes=np.array([str(c) for c in classes]))
    return out.getvalue(), int(jpeg.size)


def export_cifar10(root: str, out_dir: str, quality: int = 75, download: bool = False, force: bool = False,
                   sort_by_label: bool = True, splits=SPLITS, progress=None) -> dict:
    """Write OUT_DIR/cifar10_jpeg_{split}.npz from torchvision's CIFAR-10 under `root`.

    Returns {split: {'path', 'images', 'bytes', 'jpeg_bytes'}}.  Both splits are read before the
    folder is made; files are written atomically; an existing one is left alone unless `force`
    (DataError before anything is read).
    `progress(split, n_done, n_total)` reports the encoding."""
    targets = {s: os.path.join(out_dir, export_name(s)) for s in splits}
    if not force:
        there = [p for p in targets.values() if os.path.exists(p)]
        if there:
            raise DataError(f"{there[0]} exists; pass --force to overwrite it")
    from torchvision.datasets import CIFAR10
    sets = {}
    for split in targets:  # read everything before the folder is made or a file written
        try:
            sets[split] = CIFAR10(root, train=split == "train", download=download)
        except (OSError, RuntimeError) as e:
            hint = "" if download else " (pass --download to fetch it)"
            raise DataError(f"{root}: no CIFAR-10 (python version, cifar-10-batches-py/) readable there{hint}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    os.makedirs(out_dir, exist_ok=True)
    done = {}
    for split, path in targets.items():
        ds = sets[split]
        tick = (lambda n, t, s=split: progress(s, n, t)) if progress is not None else None
        data, jpeg_bytes = _export(np.asarray(ds.data), ds.targets, ds.classes, quality, sort_by_label, tick)
        atomic_write(path, [data])
        done[split] = {"path": path, "images": len(ds.targets), "bytes": len(data), "jpeg_bytes": jpeg_bytes}
    return done
