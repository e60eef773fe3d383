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


def plot(rows: list[dict], baseline_top1: float, path: str, data_name: str = "CIFAR-10 (JPEG q75 export)") -> None:
    """Heat map of the top-1 drop per layer (rows) and sparsity level (columns), written to `path` (PNG)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..container import atomic_write
    names = list(dict.fromkeys(r["name"] for r in rows))
    levels = sorted({r["sparsity"] for r in rows})
    drop = np.full((len(names), len(levels)), np.nan)
    for r in rows:
        drop[names.index(r["name"]), levels.index(r["sparsity"])] = baseline_top1 - r["top1"]
    fig, ax = plt.subplots(figsize=(1.2 * len(levels) + 4, 0.18 * len(names) + 1.5))
    im = ax.imshow(np.clip(drop, 0, 10), aspect="auto", cmap="magma_r", vmin=0, vmax=10)
    ax.set_xticks(range(len(levels)), [f"{s:g}" for s in levels])
    ax.set_yticks(range(len(names)), [n.replace(".weight", "") for n in names], fontsize=6)
    ax.set_xlabel("sparsity of this layer alone (others dense)")
    fig.colorbar(im, ax=ax, label="top-1 drop (points, clipped at 10)")
    ax.set_title(f"Pruning sensitivity per layer, no fine-tuning\n{data_name}, training images", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, [buf.getvalue()])


def read_scan(path: str) -> tuple[dict, list[dict]]:
    """(header, rows) of a sensitivity.jsonl (its first line is the header); DataError if it is not one."""
    import json

    from ..errors import DataError
    try:
        with open(path) as f:
            head, *rows = [json.loads(line) for line in f if line.strip()]
        head["baseline_top1"], [(r["name"], r["sparsity"], r["top1"]) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a sensitivity scan (a header line, then one row per layer and level): {e}") \
            from None
    return head, rows


def caps_file(head: dict, rows: list[dict], tolerance: float) -> dict:
    """The content of caps.json: {'tolerance', 'baseline_top1', 'caps': {layer: cap}}."""
    return {"tolerance": tolerance, "baseline_top1": head["baseline_top1"],
            "caps": caps_from(rows, head["baseline_top1"], tolerance)}
