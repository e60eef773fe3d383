"""Per-layer pruning sensitivity: prune one layer at a time and measure top-1, then cap the fragile ones.

Global magnitude pruning ranks all weights on one scale, so a small layer whose weights happen
to be small (the first conv, the depthwise filters of a narrow block) can be emptied although the
network depends on it.  The scan prunes each prunable tensor alone at several sparsities (no
fine-tuning) and records top-1 on images outside the test set (training images); `caps_from`
turns that into {name: the highest sparsity whose drop stays within a tolerance}, which
`global_magnitude_masks(caps=...)` enforces.
"""
from __future__ import annotations

import torch

from .data import ArrayDataset, evaluate
from .prune import prunable

LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)


def layer_mask(t: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True = keep: the largest (1 - sparsity) share of |t|."""
    k = int(round((1 - sparsity) * t.numel()))
    if k <= 0:
        return torch.zeros_like(t, dtype=torch.bool)
    thr = torch.topk(t.detach().abs().reshape(-1).float(), k).values.min()
    return t.detach().abs() >= thr


@torch.no_grad()
def scan(model: torch.nn.Module, ds: ArrayDataset, levels=LEVELS, names=None, progress=None) -> list[dict]:
    """Rows {name, numel, sparsity, top1} for every prunable tensor (or `names`) and level; the model is restored."""
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if prunable(n, p)] if names is None else list(names)
    rows = []
    items = [(n, s) for n in names for s in levels]
    for n, s in (progress(items) if progress else items):
        p = params[n]
        saved = p.detach().clone()
        p.mul_(layer_mask(p, s))
        try:
            top1 = evaluate(model, ds)["top1"]
        finally:
            p.copy_(saved)
        rows.append({"name": n, "numel": p.numel(), "sparsity": s, "top1": top1})
    return rows


def caps_from(rows: list[dict], baseline_top1: float, tolerance: float) -> dict:
    """{name: highest scanned sparsity whose top-1 drop is <= tolerance (0.0 if none)}.

    Only layers that cannot take the highest scanned level get a cap.
    """
    by_name: dict = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    caps = {}
    for n, rs in by_name.items():
        rs.sort(key=lambda r: r["sparsity"])
        ok = [r["sparsity"] for r in rs if baseline_top1 - r["top1"] <= tolerance]
        # the first level that breaks the tolerance bounds the cap: higher levels that pass by chance do not count
        first_bad = next((r["sparsity"] for r in rs if baseline_top1 - r["top1"] > tolerance), None)
        if first_bad is None:
            continue
        safe = [s for s in ok if s < first_bad]
        caps[n] = max(safe) if safe else 0.0
    return caps
