"""Pruning re-parametrisations of torch.nn.utils.prune: `X_orig` + `X_mask` -> the effective `X`.

A module pruned with torch.nn.utils.prune (without prune.remove) holds its
parameter as `X_orig` and a buffer `X_mask` and computes `X = X_orig * X_mask`
in a forward pre-hook.  `fold_pruning` replaces each such pair of a state_dict
by the effective tensor under the plain name `X` (where it stood), with
pruned elements exactly +0.0 (the hook's product gives -0.0 for negative
originals, NaN for non-finite ones), so the result loads into the unpruned
module.  Source: torch.nn.utils.prune (BasePruningMethod.apply / compute_mask).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

ORIG, MASK = "_orig", "_mask"


def effective(orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """orig * mask in orig's dtype, +0.0 where mask is 0 (shapes equal)."""
    prod = (orig.detach() * mask.detach()).to(orig.dtype)
    return torch.where(mask.detach() != 0, prod, torch.zeros((), dtype=orig.dtype))


def _pairs(d: Mapping) -> dict:
    """{'X_orig': 'X_mask'} for the foldable pairs of one mapping."""
    out = {}
    for k, v in d.items():
        if isinstance(k, str) and k.endswith(ORIG) and len(k) > len(ORIG):
            mk = k[:-len(ORIG)] + MASK
            m = d.get(mk)
            base = k[:-len(ORIG)]
            if (isinstance(v, torch.Tensor) and isinstance(m, torch.Tensor) and v.layout == m.layout == torch.strided
                    and not v.is_quantized and not m.is_quantized and v.is_floating_point()
                    and v.shape == m.shape and base not in d):
                out[k] = mk
    return out


def fold_pruning(obj, path: str = "") -> tuple:
    """(checkpoint with every `X_orig`/`X_mask` pair folded into `X`, [folded key paths]).

    Nested dicts are folded too (a wrapped checkpoint's model and EMA); other values are kept as they are.
    A dict without pairs is returned as is (same object)."""
    folded: list = []
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        return obj, folded
    pairs = _pairs(obj)
    masks = set(pairs.values())
    changed = bool(pairs)
    items = []
    for k, v in obj.items():
        if k in masks:
            continue
        if k in pairs:
            base = k[:-len(ORIG)]
            items.append((base, effective(v, obj[pairs[k]])))
            folded.append(f"{path}{base}")
            continue
        if isinstance(v, (Mapping, nn.Module)):
            v2, sub = fold_pruning(v, f"{path}{k}/")
            if sub:
                changed = True
                folded += sub
                v = v2
        items.append((k, v))
    if not changed:
        return obj, folded
    out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    meta = getattr(obj, "_metadata", None)
    if meta is not None:
        out._metadata = meta
    return out, folded
