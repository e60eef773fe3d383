"""Magnitude pruning: masks that keep exact zeros, global or per layer."""
from __future__ import annotations

import torch


def prunable(name: str, t: torch.Tensor) -> bool:
    """Conv and linear weights (rank >= 2)."""
    return name.endswith("weight") and t.dim() >= 2 and t.is_floating_point()


def global_magnitude_masks(sd: dict, sparsity: float, caps: dict | None = None, exclude=()) -> dict:
    """{name: bool mask (True = keep)} removing the `sparsity` share of smallest |w| over all prunable tensors.

    caps: optional {name: max sparsity} for sensitive layers (`mbz sensitivity`).  A capped
    layer keeps its largest (1 - cap) share; the zeros it is spared are taken from the other
    layers (the global threshold rises), so the overall sparsity still meets the target.
    """
    names = [n for n, t in sd.items() if prunable(n, t) and n not in exclude]
    if not names:
        return {}
    caps = {n: c for n, c in (caps or {}).items() if n in names}
    mags = {n: sd[n].detach().float().abs().cpu() for n in names}
    target = int(round(sparsity * sum(m.numel() for m in mags.values())))
    capped: set = set()
    while True:
        free = [n for n in names if n not in capped]
        k = target - sum(int(round(caps[n] * mags[n].numel())) for n in capped)
        flat = torch.cat([mags[n].reshape(-1) for n in free]) if free else torch.zeros(0)
        if capped and k >= flat.numel():
            raise ValueError(f"caps on {len(capped)} layers leave only {flat.numel():,} prunable weights elsewhere, "
                             f"{k:,} more zeros needed for sparsity {sparsity}: lower the target or loosen the caps")
        if k <= 0:
            thr = float("-inf")
        elif k >= flat.numel():
            thr = float("inf")
        else:
            thr = torch.kthvalue(flat, k).values.item()
        over = {n for n in free if n in caps and (mags[n] <= thr).float().mean().item() > caps[n]}
        if not over:
            break
        capped |= over
    masks = {}
    for n in names:
        if n in capped:
            keep = max(1, int(round((1 - caps[n]) * mags[n].numel())))
            masks[n] = mags[n] >= torch.topk(mags[n].reshape(-1), keep).values.min()
        else:
            masks[n] = mags[n] > thr
    return masks


def apply_masks(sd_or_model, masks: dict) -> None:
    """Zero the pruned weights in place (+0.0, never -0.0)."""
    params = dict(sd_or_model.named_parameters()) if isinstance(sd_or_model, torch.nn.Module) else sd_or_model
    with torch.no_grad():
        for n, m in masks.items():
            t = params[n]
            t.copy_(torch.where(m.to(t.device), t, torch.zeros((), dtype=t.dtype, device=t.device)))


def sparsity_report(sd: dict) -> list[dict]:
    rows = []
    for n, t in sd.items():
        if prunable(n, t):
            z = int((t == 0).sum())
            rows.append({"name": n, "shape": list(t.shape), "numel": t.numel(), "zeros": z, "sparsity": z / t.numel()})
    return rows
