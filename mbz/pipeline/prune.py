"""Magnitude pruning: masks that keep exact zeros, global or per layer."""
from __future__ import annotations

import torch


def prunable(name: str, t: torch.Tensor) -> bool:
    """Conv and linear weights (rank >= 2)."""
    return name.endswith("weight") and t.dim() >= 2 and t.is_floating_point()


def global_magnitude_masks(sd: dict, sparsity: float, caps: dict | None = None, exclude=()) -> dict:
    """{name: bool mask (True = keep)} removing the `sparsity` share of smallest |w| over all prunable tensors.

    caps: optional {name: max sparsity} for sensitive layers; their threshold is clipped.
    """
    names = [n for n, t in sd.items() if prunable(n, t) and n not in exclude]
    if not names:
        return {}
    flat = torch.cat([sd[n].detach().float().abs().reshape(-1) for n in names])
    k = int(round(sparsity * flat.numel()))
    if k <= 0:
        return {n: torch.ones_like(sd[n], dtype=torch.bool) for n in names}
    thr = torch.kthvalue(flat.cpu(), k).values.item() if k < flat.numel() else float("inf")
    masks = {}
    for n in names:
        a = sd[n].detach().float().abs()
        m = a > thr
        cap = (caps or {}).get(n)
        if cap is not None and (1 - m.float().mean().item()) > cap:
            keep = max(1, int(round((1 - cap) * a.numel())))
            local = torch.topk(a.reshape(-1), keep).values.min()
            m = a >= local
        masks[n] = m
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
