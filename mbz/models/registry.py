"""The architecture registry: `arch` metadata -> an nn.Module, and the guess from a state_dict.

A file's `arch` metadata is untrusted input: only names in ARCHITECTURES are built
(an allow-list; no code is named by the file), and a builder's failure on odd
arguments becomes an MbzError naming the architecture.
"""
from __future__ import annotations

from torch import nn

from ..errors import CheckpointError, MbzError
from .cifar_resnet import resnet18_cifar
from .cifar_vgg import vgg11_bn_cifar, vgg16_bn_cifar
from .mobilenet_v2 import _width_of, expand_blocks, hidden_widths, mobilenet_v2_cifar

ARCHITECTURES = {"mobilenet_v2_cifar": mobilenet_v2_cifar, "resnet18_cifar": resnet18_cifar,
                 "vgg11_bn_cifar": vgg11_bn_cifar, "vgg16_bn_cifar": vgg16_bn_cifar}


def guess_arch(sd) -> dict | None:
    """The `arch` metadata of a CIFAR MobileNet-v2 state_dict (width, thinned blocks), or None.

    None also for a state_dict with MobileNet-v2's names but another layout (e.g. BatchNorm folded)."""
    if "features.0.0.weight" in sd and "classifier.1.weight" in sd and "features.18.0.weight" in sd:
        try:
            arch = {"name": "mobilenet_v2_cifar", "num_classes": int(sd["classifier.1.weight"].shape[0]),
                    "width_mult": _width_of(sd)}
            hidden = hidden_widths(sd)
            if any(hidden[i - 1] != 6 * sd[f"features.{i}.conv.0.0.weight"].shape[1] for i in expand_blocks(sd)):
                arch["hidden"] = hidden  # thinned by structured pruning
        except (KeyError, IndexError, AttributeError, ValueError, TypeError):
            return None
        return arch
    return None


def arch_of(sd, dropout: float = 0.2) -> dict:
    """The architecture metadata of a MobileNet-v2 state_dict (width, thinned blocks) for training tools.

    Raises CheckpointError when `sd` is not a CIFAR MobileNet-v2 state_dict."""
    arch = guess_arch(sd)
    if arch is None:
        raise CheckpointError("not a MobileNet-v2 (CIFAR) state_dict: features.0.0 / features.18.0 / classifier.1 missing")
    return dict(arch, dropout=dropout)


def pipeline_arch(model: dict, sd: dict | None = None) -> dict:
    """The `arch` of a recipe's model settings ({'name', 'num_classes', 'width_mult', 'dropout'}).

    For MobileNet-v2 the state_dict `sd`, where given, sets width and thinned blocks (arch_of)."""
    if model["name"] == "mobilenet_v2_cifar":
        if sd is not None:
            return arch_of(sd, model.get("dropout", 0.2))
        return {k: model[k] for k in ("name", "num_classes", "width_mult", "dropout") if k in model}
    arch = {"name": model["name"], "num_classes": model.get("num_classes", 10)}
    if sd is not None:
        from .thinning import channel_groups, widths_of
        full = build_model(arch)
        channels = widths_of(sd, channel_groups(full), full)
        if channels:
            arch["channels"] = channels
    return arch


def build_model(arch: dict) -> nn.Module:
    """The module that `arch` ({'name': ..., builder arguments}) describes; MbzError if it cannot be built."""
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise MbzError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = {k: v for k, v in arch.items() if k not in ("name", "channels")}
    try:
        model = ARCHITECTURES[arch["name"]](**kwargs)
        if arch.get("channels"):
            from .thinning import apply_widths
            if not isinstance(arch["channels"], dict):
                raise ValueError(f"'channels' must be a map of layer name to kept channels, got {arch['channels']!r}")
            apply_widths(model, arch["channels"])
        return model
    except MbzError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise MbzError(f"cannot build {arch['name']} from the file's 'arch' metadata {kwargs}: {e}") from None
