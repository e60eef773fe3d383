"""PyTorch side: reading checkpoints safely, and rebuilding models from metadata."""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from .errors import CheckpointError, MbzError

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")


def as_state_dict(obj) -> "OrderedDict[str, torch.Tensor]":
    """A flat {name: tensor} from a module, a state_dict or a wrapped checkpoint."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), (dict, nn.Module)):
                return as_state_dict(obj[key])
    if isinstance(obj, dict):
        out = OrderedDict()
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"state_dict key {k!r} is not a string")
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"entry '{k}' is a {type(v).__name__}, not a tensor "
                                      f"(wrapped checkpoints are recognised under {WRAPPER_KEYS})")
            out[k] = v.detach().cpu()
        if not out:
            raise CheckpointError("checkpoint holds no tensors")
        return out
    raise CheckpointError(f"expected a state_dict, a module or a wrapped checkpoint, got {type(obj).__name__}")


def read_checkpoint(path) -> "OrderedDict[str, torch.Tensor]":
    """torch.load with weights_only=True (no code runs), mapped to the CPU; a .mbz file through mbz.load."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    from .spec import MAGIC
    with open(path, "rb") as f:
        is_mbz = f.read(len(MAGIC)) == MAGIC
    if is_mbz:  # a .mbz file is a checkpoint too (e.g. a baseline kept losslessly)
        from .api import load
        return load(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True: {e}") from None
    return as_state_dict(obj)


# --------------------------------------------------------------------------- architectures
def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2,
                       folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                       hidden: list | None = None, **_):
    """torchvision MobileNet-v2 for 32x32 inputs.

    The stem conv (features[0][0]) and the first stride-2 block
    (features[2].conv[1][0]) run at stride 1, so the last feature map is 4x4
    rather than 1x1: at 32x32 the ImageNet strides would discard too much.
    `folded_bn` builds convs with bias and no BatchNorm; `act_bits` < 32 adds
    the activation quantizers of mbz.pipeline.qat with ranges `act_alpha`;
    `hidden` (hidden channels of features[1..17]) rebuilds blocks thinned by
    structured pruning (mbz.pipeline.channels).
    """
    from torchvision.models import mobilenet_v2
    m = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    m.features[0][0].stride = (1, 1)
    m.features[2].conv[1][0].stride = (1, 1)
    if hidden:
        from .pipeline.channels import set_hidden
        if (not isinstance(hidden, list) or len(hidden) != len(m.features) - 2
                or not all(type(h) is int and 0 < h <= 1 << 16 for h in hidden)):
            raise MbzError(f"arch 'hidden' must list {len(m.features) - 2} channel counts in 1..65536, got {hidden!r}")
        set_hidden(m, hidden)
    if folded_bn or act_bits < 32:
        from .pipeline.qat import folded_skeleton, insert_act_quant
        if folded_bn:
            folded_skeleton(m)
        insert_act_quant(m, act_bits, learn=False, alphas=act_alpha)
    return m


ARCHITECTURES = {"mobilenet_v2_cifar": mobilenet_v2_cifar}


def guess_arch(sd) -> dict | None:
    """Recognise a MobileNet-v2 state_dict (for `pack` without --arch)."""
    if "features.0.0.weight" in sd and "classifier.1.weight" in sd and "features.18.0.weight" in sd:
        arch = {"name": "mobilenet_v2_cifar", "num_classes": int(sd["classifier.1.weight"].shape[0]),
                "width_mult": _width_of(sd)}
        from .pipeline.channels import expand_blocks, hidden_widths
        hidden = hidden_widths(sd)
        if any(hidden[i - 1] != 6 * sd[f"features.{i}.conv.0.0.weight"].shape[1] for i in expand_blocks(sd)):
            arch["hidden"] = hidden  # thinned by structured pruning
        return arch
    return None


# torchvision's MobileNet-v2: output channels of the stem, of each inverted-residual stage (repeats) and of the last conv
_MNV2_STAGES = ((16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1))


def _mnv2_channels(w: float) -> list[int]:
    from torchvision.models._utils import _make_divisible
    out = [_make_divisible(32 * w, 8)]
    for c, n in _MNV2_STAGES:
        out += [_make_divisible(c * w, 8)] * n
    return out + [_make_divisible(1280 * max(1.0, w), 8)]


def _width_of(sd) -> float:
    """The width multiplier whose channel counts are the state_dict's (stem/32 alone is wrong for 0.35, 1.4 ...)."""
    from .pipeline.channels import blocks
    stages = blocks(sd)
    have = [int(sd["features.0.0.weight"].shape[0])]
    have += [int(sd[f"features.{i}.conv.{2 if expand else 1}.weight"].shape[0]) for i, expand in stages]  # projections
    have.append(int(sd[f"features.{len(stages) + 1}.0.weight"].shape[0]))
    guess = round(have[0] / 32, 4)
    candidates = [guess] + sorted((round(k * 0.05, 2) for k in range(1, 81)), key=lambda w: abs(w - guess))
    return next((w for w in candidates if _mnv2_channels(w) == have), guess)


def arch_of(sd, dropout: float = 0.2) -> dict:
    """The architecture metadata of a MobileNet-v2 state_dict (width, thinned blocks) for training tools."""
    arch = guess_arch(sd)
    if arch is None:
        raise CheckpointError("not a MobileNet-v2 (CIFAR) state_dict: features.0.0 / features.18.0 / classifier.1 missing")
    return dict(arch, dropout=dropout)


def build_model(arch: dict) -> nn.Module:
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise MbzError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    try:
        return ARCHITECTURES[arch["name"]](**kwargs)
    except MbzError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as e:  # the metadata is untrusted input
        raise MbzError(f"cannot build {arch['name']} from the file's 'arch' metadata {kwargs}: {e}") from None
