"""What every verb shares: input and output checks (no command destroys data), --data, progress."""
from __future__ import annotations

import json
import os
import sys

from ..errors import UsageError
from ..paths import open_input

DATA_HELP = ("dataset: 'jpeg' (the CIFAR-10 JPEG q75 export in the folder $MBZ_DATA), npz:DIR_OR_FILE, "
             "cifar10:ROOT, cifar100:ROOT (torchvision's python version in ROOT; downloaded there only when "
             "MBZ_DOWNLOAD=1 is set) or folder:ROOT (ImageFolder with train/ and test/)")


def input_file(path: str, what: str = "input") -> str:
    """`path` if it is a readable file; a PathError naming it otherwise (mbz.paths.open_input, the check every
    reader of the API makes)."""
    open_input(path, what).close()
    return path


def output_file(path: str, *, inputs=(), force: bool = False) -> str:
    """`path` if a file may be written there: its folder exists, it is none of `inputs`, and it does not
    exist yet unless `force`.  UsageError otherwise (nothing is written)."""
    if not path:
        raise UsageError("the output file name is empty")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: output folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; give a file name")
    for i in inputs:
        if i and os.path.exists(i) and os.path.exists(path) and os.path.samefile(i, path) \
                or i and os.path.abspath(i) == os.path.abspath(path):
            raise UsageError(f"{path}: the output would overwrite an input; choose another name")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    return path


def output_dir(path: str, *, create: bool = True) -> str:
    """A folder for a job's outputs (made if missing; its parent must exist)."""
    if not path:
        raise UsageError("the output folder name is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: parent folder {parent} does not exist")
    if create:
        os.makedirs(path, exist_ok=True)
    return path


def add_force(p) -> None:
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def add_data(p, default: str = "jpeg") -> None:
    p.add_argument("--data", default=default, help=DATA_HELP)


def show_progress(quiet: bool = False) -> bool:
    """Progress bars on an interactive terminal, unless --quiet."""
    return not quiet and sys.stderr.isatty()


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


def device_of(name: str = "auto"):
    """The torch.device a --device option names: auto (CUDA when present), cpu, cuda[:N]; UsageError otherwise."""
    import re

    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"--device {name!r}: use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device here")
    return torch.device(name)


def refuse_inference_only(path: str, use: str) -> None:
    """UsageError when `path` is a .mbz whose BatchNorms were rewritten for inference (pack --bn-affine;
    mbz.checkpoint.inference_only_reason).  `use` says what was asked, e.g. '--init'."""
    from ..checkpoint import inference_only_reason
    why = inference_only_reason(path, use)
    if why:
        raise UsageError(why)
