"""Offline PNG charts of a recorded sweep (matplotlib, Agg, written atomically).

* parallel coordinates with wandb's axes (weight bits, activation bits,
  sparsity, file KB, model CR, top-1), one line per run coloured by top-1;
* accuracy vs size frontier (log file size), the baseline and a reference point;
* bytes by category of one .mbz file.
PNG metadata carry no date, so reruns give identical files for identical input.
"""
from __future__ import annotations

import json
import os

PARCOORD_AXES = (("config.wbits", "weight bits"), ("config.abits", "activation bits"),
                 ("config.sparsity", "sparsity"), ("file_kb", "file KB"), ("model_cr", "model CR"),
                 ("top1", "top-1 %"))
CATEGORY_ORDER = ("values", "indices", "scales", "codebooks", "raw", "tensor_records", "file_header",
                  "checksums", "padding")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    os.replace(tmp, path)
    return path


def _get(row: dict, key: str):
    v = row
    for k in key.split("."):
        v = v[k]
    return float(v)


def parallel_coordinates(rows: list[dict], path: str, title: str = "", min_top1: float = 80.0) -> str:
    """Runs under `min_top1` (collapsed trainings) are left out so the others keep their resolution."""
    plt = _plt()
    left_out = [r for r in rows if r["top1"] < min_top1]
    rows = [r for r in rows if r["top1"] >= min_top1]
    import numpy as np
    import matplotlib
    from matplotlib import cm, colors
    vals = np.array([[_get(r, k) for k, _ in PARCOORD_AXES] for r in rows], float)
    lo, hi = vals.min(0), vals.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (vals - lo) / span
    top = vals[:, -1]
    cmap = matplotlib.colormaps["plasma"]
    cn = colors.Normalize(vmin=top.min(), vmax=top.max())
    fig, ax = plt.subplots(figsize=(11, 5))
    xs = np.arange(len(PARCOORD_AXES))
    for i in np.argsort(top):  # best on top
        ax.plot(xs, norm[i], color=cmap(cn(top[i])), alpha=0.8, lw=1.4)
    for j, (_, label) in enumerate(PARCOORD_AXES):
        ax.axvline(j, color="k", lw=0.8)
        ticks = sorted(set(np.round(vals[:, j], 3))) if len(set(vals[:, j])) <= 6 else \
            list(np.linspace(lo[j], hi[j], 5))
        for t in ticks:
            y = (t - lo[j]) / span[j]
            txt = f"{t:.4g}"
            ax.text(j + 0.03, y, txt, fontsize=7, va="center")
    ax.set_xticks(xs, [label for _, label in PARCOORD_AXES])
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(xs) - 0.6)
    sm = cm.ScalarMappable(norm=cn, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="top-1 %")
    ax.set_title(title or f"Sweep: {len(rows)} runs, wandb's parallel-coordinates axes"
                 + (f" ({len(left_out)} runs under {min_top1:g}% top-1 not drawn)" if left_out else ""))
    fig.tight_layout()
    p = _save(fig, path)
    plt.close(fig)
    return p


def frontier(rows: list[dict], path: str, baseline_top1: float | None = None,
             reference: tuple[float, float, str] | None = None, title: str = "") -> str:
    """top-1 vs file KB; the Pareto-optimal runs joined; optional baseline line and reference point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for sp, marker in ((0.8, "o"), (0.9, "s")):
        rs = [r for r in rows if abs(r["config"]["sparsity"] - sp) < 1e-9]
        if rs:
            sc = ax.scatter([r["file_kb"] for r in rs], [r["top1"] for r in rs], c=[r["config"]["wbits"] for r in rs],
                            cmap="viridis", marker=marker, label=f"sparsity {sp:g}", vmin=2, vmax=8, s=28)
    others = [r for r in rows if r["config"]["sparsity"] not in (0.8, 0.9)]
    if others:
        sc = ax.scatter([r["file_kb"] for r in others], [r["top1"] for r in others], c="gray", marker="^",
                        label="other sparsity", s=28)
    pts = sorted(rows, key=lambda r: (r["file_kb"], -r["top1"]))
    pareto, best = [], -1.0
    for r in pts:
        if r["top1"] > best:
            pareto.append(r)
            best = r["top1"]
    ax.plot([r["file_kb"] for r in pareto], [r["top1"] for r in pareto], "k--", lw=0.8, label="Pareto front")
    if baseline_top1 is not None:
        ax.axhline(baseline_top1, color="tab:red", lw=0.8, label=f"fp32 baseline {baseline_top1:.2f}%")
    if reference:
        kb, acc, label = reference
        ax.scatter([kb], [acc], marker="*", s=120, color="tab:red", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("file size, KB (every byte of the .mbz)")
    ax.set_ylabel("top-1 %, CIFAR-10 (JPEG q75 export)")
    floor = 85.0
    below = sum(r["top1"] < floor for r in rows)
    ax.set_ylim(floor, max([r["top1"] for r in rows] + [baseline_top1 or 0]) + 0.8)
    from matplotlib.ticker import ScalarFormatter
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    fig.colorbar(sc, ax=ax, label="weight bits")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or f"Accuracy vs size ({below} runs under {floor:g}% not shown)")
    fig.tight_layout()
    p = _save(fig, path)
    plt.close(fig)
    return p


def bytes_by_category(categories: dict, path: str, title: str) -> str:
    plt = _plt()
    cats = [c for c in CATEGORY_ORDER if categories.get(c)]
    vals = [categories[c] for c in cats]
    total = sum(categories.values())
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh(cats[::-1], vals[::-1], color="tab:blue")
    for b, v in zip(bars, vals[::-1]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:,} B ({100 * v / total:.1f}%)",
                va="center", fontsize=8)
    ax.set_xlim(0, max(vals) * 1.35)
    ax.set_xlabel("bytes in the file")
    ax.set_title(title)
    fig.tight_layout()
    p = _save(fig, path)
    plt.close(fig)
    return p


def read_rows(sweep_dir: str) -> list[dict]:
    with open(os.path.join(sweep_dir, "runs.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def sweep_charts(sweep_dir: str, baseline_json: str | None = None) -> list[str]:
    rows = read_rows(sweep_dir)
    base = None
    if baseline_json and os.path.exists(baseline_json):
        with open(baseline_json) as f:
            base = json.load(f)["top1"]
    zstd_rows = [r for r in rows if r["config"]["entropy"] == "zstd"]
    out = [parallel_coordinates(zstd_rows, os.path.join(sweep_dir, "parallel_coordinates.png")),
           frontier(zstd_rows, os.path.join(sweep_dir, "frontier.png"), base)]
    return out
