"""`mbz data`: make the datasets the figures are measured on (the CIFAR-10 JPEG export)."""
from __future__ import annotations

import os
import sys

from .common import add_force, output_dir, output_file, show_progress


def cmd_cifar10_jpeg(a) -> int:
    from ..errors import UsageError
    from ..pipeline.cifar_export import SPLITS, export_cifar10, export_name
    if not 1 <= a.quality <= 100:
        raise UsageError(f"--quality {a.quality}: must lie in 1..100")
    if not a.download and not os.path.isdir(a.root):
        raise UsageError(f"{a.root}: no such folder (torchvision's CIFAR-10 root; pass --download to fetch it)")
    if os.path.exists(a.output) and not os.path.isdir(a.output):
        raise UsageError(f"{a.output}: exists and is not a folder (-o names the output folder)")
    output_dir(a.output, create=False)
    if os.path.isdir(a.output):  # refuse before anything is read
        for s in SPLITS:
            output_file(os.path.join(a.output, export_name(s)), force=a.force)
    bars = {}
    progress = None
    if show_progress(a.quiet):
        from tqdm import tqdm

        def progress(split, n, total):
            bar = bars.get(split) or bars.setdefault(split, tqdm(total=total, unit="img", desc=f"jpeg {split}",
                                                                 leave=False))
            bar.n = n
            bar.refresh()
    elif not a.quiet:
        def progress(split, n, total):
            if n == total:
                print(f"{split}: {n} images encoded", file=sys.stderr, flush=True)
    try:
        done = export_cifar10(a.root, a.output, a.quality, download=a.download, force=a.force,
                              sort_by_label=not a.keep_order, progress=progress)
    finally:
        for b in bars.values():
            b.close()
    for split, d in done.items():
        print(f"wrote {d['path']}: {d['images']:,d} images, JPEG q{a.quality}, {d['jpeg_bytes']:,d} bytes of JPEG "
              f"({d['bytes']:,d} bytes file)")
    print(f"use it with --data npz:{a.output} (or MBZ_DATA={a.output})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="make the CIFAR-10 JPEG export the figures are measured on",
                       description="Make datasets in the layout `--data npz:DIR` reads. One kind for now: "
                                   "cifar10-jpeg.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=type(p))
    q = kinds.add_parser("cifar10-jpeg", help="CIFAR-10 with every image stored as a JPEG file",
                         description="Read torchvision's CIFAR-10 under ROOT (the python version: "
                                     "ROOT/cifar-10-batches-py/) and write DIR/cifar10_jpeg_train.npz (50,000 images) "
                                     "and DIR/cifar10_jpeg_test.npz (10,000 images): arrays jpeg (uint8, every JPEG "
                                     "file concatenated), offsets (int64, N+1), labels (uint8), classes (str). Each "
                                     "image is encoded by Pillow at --quality (4:2:0 chroma), images ordered by "
                                     "label (torchvision's order within a class). The figures of this repository "
                                     "are measured on a JPEG q75 export in this layout; another JPEG encoder may "
                                     "write slightly different bytes. About a minute on one CPU core.")
    q.add_argument("root", help="torchvision CIFAR-10 root folder (holds cifar-10-batches-py/)")
    q.add_argument("-o", "--output", required=True, help="output folder (made if missing; its parent must exist)")
    q.add_argument("--quality", type=int, default=75, help="JPEG quality 1..100 (default 75, as the figures use)")
    q.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into ROOT (~170 MB)")
    q.add_argument("--keep-order", action="store_true", help="keep torchvision's image order (default: by label)")
    add_force(q)
    q.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    q.set_defaults(fn=cmd_cifar10_jpeg)
