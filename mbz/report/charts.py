"""PNG charts of the recorded results (matplotlib, Agg), legible at the width of an A4 page.

Every chart keeps its legend outside the axes (below them), so no legend covers data.
PNG metadata carry no date or software version, so the same inputs give the same bytes.
"""
from __future__ import annotations

import os

WIDTH = 7.2          # inches: the text width of an A4 page with 15 mm margins, so fonts print at their size
DPI = 130
CATEGORY_ORDER = ("values", "indices", "scales", "codebooks", "raw", "tensor_records", "file_header",
                  "checksums", "padding")
PARCOORD_AXES = (("config.wbits", "weight bits"), ("config.abits", "activation bits"),
                 ("config.sparsity", "sparsity"), ("file_kb", "file KB"), ("model_cr", "model CR"),
                 ("top1", "top-1 %"))
DATA = "CIFAR-10 (JPEG q75 export)"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.hashsalt": "mbz"})
    return plt


def _save(fig, path: str) -> str:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def _legend_below(fig, ax_or_handles, ncol: int = 3, labels=None):
    if labels is None:
        handles, labels = ax_or_handles.get_legend_handles_labels()
    else:
        handles = ax_or_handles
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.0))


def baseline_curves(log: list[dict], path: str, cpu_top1: float) -> str:
    """Loss and top-1 per epoch of the baseline's training log; the CPU top-1 of the packed file marked."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(WIDTH, 3.1))
    ep = [h["epoch"] for h in log]
    test = [h for h in log if "test_acc" in h]
    a.plot(ep, [h["train_loss"] for h in log], color="tab:blue", lw=1.2, label="train (augmented, label smoothing)")
    a.plot([h["epoch"] for h in test], [h["test_loss"] for h in test], "o-", color="tab:orange", ms=2.5, lw=1.2,
           label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.set_ylim(0, min(2.0, max(h["train_loss"] for h in log) * 1.05))
    b.plot(ep, [h["train_acc"] for h in log], color="tab:blue", lw=1.2)
    b.plot([h["epoch"] for h in test], [h["test_acc"] for h in test], "o-", color="tab:orange", ms=2.5, lw=1.2)
    b.axhline(cpu_top1, color="tab:red", lw=0.8, ls="--", label=f"fp32 on the CPU: {cpu_top1:.2f}%")
    b.set_ylim(60, 100)
    b.set_xlabel("epoch")
    b.set_ylabel("top-1 %")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    handles = a.get_legend_handles_labels()[0] + b.get_legend_handles_labels()[0][-1:]
    labels = a.get_legend_handles_labels()[1] + b.get_legend_handles_labels()[1][-1:]
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _legend_below(fig, handles, 3, labels)
    return _save(fig, path)


def pipeline_curves(panels: list[tuple[str, list[dict]]], path: str, baseline_top1: float) -> str:
    """Test top-1 per epoch through each recipe: the pruning chain, the restart at the kept level, the QAT runs
    (each starting where the restart ended).  panels: [(title, training log rows)]."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH, 3.2), sharey=True)
    axes = list(axes) if len(panels) > 1 else [axes]
    colors = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    styles = {}
    for ax, (title, log) in zip(axes, panels):
        runs: dict = {}
        for h in log:
            if "test_acc" in h:
                runs.setdefault(h["run"], []).append(h)
        x = 0
        prune = [r for r in runs if r.startswith("prune")]
        for r in prune:
            hs = runs[r]
            kept = r == prune[-1]
            n_chain = len(hs) if not kept else next((i for i in range(1, len(hs)) if hs[i]["epoch"] < hs[i - 1]["epoch"]),
                                                     len(hs))
            xs = list(range(x + 1, x + len(hs) + 1))
            ax.plot(xs[:n_chain], [h["test_acc"] for h in hs[:n_chain]], color="tab:blue", lw=1.0,
                    label="pruning chain (fp32)")
            if n_chain < len(hs):
                ax.plot(xs[n_chain:], [h["test_acc"] for h in hs[n_chain:]], color="tab:orange", lw=1.0,
                        label="restart at the kept sparsity (fp32)")
            x += len(hs)
        ax.axvline(x, color="gray", lw=0.6, ls=":")
        for r, hs in runs.items():
            if r in prune:
                continue
            key = r.split("_e")[0] + ", kd " + r.split("kd")[1].split("_")[0] + ", " + r.split("_e")[1].split("_")[0] \
                + " ep, lr " + r.split("lr")[1]
            if key not in styles:
                styles[key] = next(colors, "gray")
            ax.plot([x + h["epoch"] for h in hs], [h["test_acc"] for h in hs], color=styles[key], lw=1.0,
                    label=f"QAT {key}")
        ax.axhline(baseline_top1, color="tab:red", lw=0.8, ls="--", label=f"baseline {baseline_top1:.2f}%")
        ax.set_title(title)
        ax.set_xlabel("epoch (cumulative)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 % (GPU)")
    axes[0].set_ylim(88, 93.5)
    seen: dict = {}
    for ax in axes:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lb, hd)
    nrows = (len(seen) + 2) // 3
    fig.tight_layout(rect=(0, 0.06 * nrows, 1, 1))
    _legend_below(fig, list(seen.values()), 3, list(seen))
    return _save(fig, path)


def bytes_by_category(files: list[tuple[str, dict]], path: str) -> str:
    """Horizontal bars: bytes of each category in each file (files: [(label, categories)])."""
    plt = _plt()
    import numpy as np
    cats = [c for c in CATEGORY_ORDER if any(cs.get(c) for _, cs in files)]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.45 * len(cats) * len(files) / 2 + 1.2))
    h = 0.8 / len(files)
    y = np.arange(len(cats))[::-1]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for i, (label, cs) in enumerate(files):
        total = sum(cs.values())
        vals = [cs.get(c, 0) for c in cats]
        bars = ax.barh(y + (len(files) / 2 - i - 0.5) * h, vals, height=h, color=colors[i % 3], label=label)
        for bar, v in zip(bars, vals):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,} ({100 * v / total:.1f}%)",
                    va="center", fontsize=7)
    ax.set_yticks(y, cats)
    ax.set_xlim(0, max(max(cs.values()) for _, cs in files) * 1.3)
    ax.set_xlabel("bytes in the file")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _legend_below(fig, ax, len(files))
    return _save(fig, path)


def _get(row: dict, key: str) -> float:
    v = row
    for k in key.split("."):
        v = v[k]
    return float(v)


def parallel_coordinates(rows: list[dict], path: str, min_top1: float = 80.0) -> str:
    """wandb's parallel-coordinates axes, one line per run coloured by top-1; runs under `min_top1`
    (collapsed trainings) are left out so the others keep their resolution."""
    plt = _plt()
    import matplotlib
    import numpy as np
    from matplotlib import cm, colors
    left_out = [r for r in rows if r["top1"] < min_top1]
    rows = [r for r in rows if r["top1"] >= min_top1]
    vals = np.array([[_get(r, k) for k, _ in PARCOORD_AXES] for r in rows], float)
    lo, hi = vals.min(0), vals.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (vals - lo) / span
    top = vals[:, -1]
    cmap = matplotlib.colormaps["viridis"]
    cn = colors.Normalize(vmin=top.min(), vmax=top.max())
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
    xs = np.arange(len(PARCOORD_AXES))
    for i in np.argsort(top):  # best on top
        ax.plot(xs, norm[i], color=cmap(cn(top[i])), alpha=0.85, lw=1.2)
    for j in range(len(PARCOORD_AXES)):
        ax.axvline(j, color="k", lw=0.8)
        ticks = sorted(set(np.round(vals[:, j], 3))) if len(set(vals[:, j])) <= 6 else list(np.linspace(lo[j], hi[j], 5))
        for t in ticks:
            ax.text(j + 0.04, (t - lo[j]) / span[j], f"{t:.4g}", fontsize=7, va="center",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    ax.set_xticks(xs, [label for _, label in PARCOORD_AXES])
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(xs) - 0.55)
    ax.set_ylim(-0.04, 1.04)
    fig.colorbar(cm.ScalarMappable(norm=cn, cmap=cmap), ax=ax, label="top-1 % (GPU)", pad=0.02)
    ax.set_title(f"{len(rows)} sweep runs" + (f" ({len(left_out)} under {min_top1:g}% top-1 not drawn)" if left_out else ""))
    fig.tight_layout()
    return _save(fig, path)


def sweep_frontier(rows: list[dict], path: str, teacher_top1: float, floor: float = 85.0) -> str:
    """top-1 vs file KB of the sweep runs, by sparsity (marker) and weight bits (colour); the Pareto front."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
    cmap = {2: "tab:red", 3: "tab:orange", 4: "tab:green", 6: "tab:blue", 8: "tab:purple"}
    for sp, marker in ((0.8, "o"), (0.9, "s")):
        for wb, col in cmap.items():
            rs = [r for r in rows if abs(r["config"]["sparsity"] - sp) < 1e-9 and r["config"]["wbits"] == wb
                  and r["top1"] >= floor]
            if rs:
                ax.scatter([r["file_kb"] for r in rs], [r["top1"] for r in rs], color=col, marker=marker, s=22,
                           label=f"sparsity {sp:g}, {wb}-bit weights", edgecolors="none")
    pts = sorted(rows, key=lambda r: (r["file_kb"], -r["top1"]))
    pareto, best = [], -1.0
    for r in pts:
        if r["top1"] > best:
            pareto.append(r)
            best = r["top1"]
    ax.plot([r["file_kb"] for r in pareto], [r["top1"] for r in pareto], "k--", lw=0.8, label="Pareto front")
    ax.axhline(teacher_top1, color="tab:red", lw=0.8, ls=":", label=f"the sweep's teacher {teacher_top1:.2f}%")
    kbs = [r["file_kb"] for r in rows]
    _log_kb(ax, min(kbs) * 0.9, max(kbs) * 1.1)
    below = sum(r["top1"] < floor for r in rows)
    ax.set_ylim(floor, max([r["top1"] for r in rows] + [teacher_top1]) + 0.6)
    ax.set_ylabel("top-1 % (GPU)")
    ax.set_title(f"Sweep: accuracy vs size ({below} runs under {floor:g}% not shown)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    _legend_below(fig, ax, 3)
    return _save(fig, path)


def _log_kb(ax, lo: float, hi: float):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    ax.set_xscale("log")
    nice = [50, 100, 150, 200, 250, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000]
    ax.xaxis.set_major_locator(FixedLocator([v for v in nice if lo <= v <= hi]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(lo, hi)
    ax.set_xlabel("file size, KB (every byte of the .mbz file)")


def frontier(rows: list[dict], path: str, baseline_top1: float, targets: list[dict], shipped: list[dict]) -> str:
    """top-1 vs file KB of every recorded recipe output, with the targets marked as shaded boxes.

    Two panels sharing the top-1 axis: the files with a size target (left, KB on a linear axis) and the runs
    of the activation-bits target (right).  rows: {group, stage, file_kb, top1, abits};
    targets: {label, max_bytes?, abits?, max_drop}; shipped: {label, file_kb, top1}."""
    plt = _plt()
    a_t = [t for t in targets if "abits" in t and "max_bytes" not in t]
    a_bits = {t["abits"] for t in a_t}
    left = [r for r in rows if r.get("abits") not in a_bits]
    right = [r for r in rows if r.get("abits") in a_bits]
    fig, axes = plt.subplots(1, 2 if right else 1, figsize=(WIDTH, 4.6), sharey=True,
                             gridspec_kw={"width_ratios": [4, 1]} if right else None)
    axes = list(axes) if right else [axes]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = dict(zip(groups, ["tab:blue", "tab:green", "tab:gray", "tab:orange", "tab:purple", "tab:brown"]))
    markers = {"QAT": "o", "soup": "s", "PTQ": "^"}
    y0 = min(r["top1"] for r in rows) - 0.3
    top = baseline_top1 + 0.45

    def box(ax, x0, x1, y, label, color, text_color, x_text):
        ax.fill_between([x0, x1], y, top, color=color, alpha=0.10, lw=0)
        ax.plot([x0, x1, x1], [y, y, top], color=color, lw=1.0)
        ax.text(x_text, top - 0.05, label, ha="left", va="top", fontsize=7, color=text_color)

    def scatter(ax, rs):
        for g in groups:
            for st, m in markers.items():
                for reduced in (False, True):
                    sel = [r for r in rs if r["group"] == g and r["stage"].startswith(st)
                           and r["stage"].endswith("reduced") == reduced]
                    if sel:
                        ax.scatter([r["file_kb"] for r in sel], [r["top1"] for r in sel], marker=m, s=28,
                                   facecolors=colors[g] if reduced else "white", edgecolors=colors[g],
                                   linewidths=1.1, label=f"{g}: {st}" + (", 8-bit scales/biases" if reduced else ""),
                                   zorder=3)

    ax = axes[0]
    kbs = [r["file_kb"] for r in left]
    x_lo = min(kbs + [t["max_bytes"] / 1000 for t in targets if "max_bytes" in t]) * 0.85
    x_hi = max(kbs + [t["max_bytes"] / 1000 for t in targets if "max_bytes" in t]) * 1.12
    x_text = x_lo * 1.01
    for t in sorted((t for t in targets if "max_bytes" in t), key=lambda t: t["max_bytes"]):
        box(ax, x_lo, t["max_bytes"] / 1000, baseline_top1 - t["max_drop"],
            "target:\n" + t["label"].replace(" within", "\nwithin"), "tab:green", "darkgreen", x_text)
        x_text = t["max_bytes"] / 1000 * 1.01
    scatter(ax, left)
    _log_kb(ax, x_lo, x_hi)
    ax.set_ylabel("top-1 %: CPU where measured, else GPU")
    if right:
        ax2 = axes[1]
        kbs = [r["file_kb"] for r in right]
        lo2, hi2 = min(kbs) - 0.03 * min(kbs), max(kbs) + 0.03 * max(kbs)
        for t in a_t:
            box(ax2, lo2, hi2, baseline_top1 - t["max_drop"], "target:\n" + t["label"].replace(" within", "\nwithin"),
                "tab:purple", "indigo", lo2 + 0.04 * (hi2 - lo2))
        scatter(ax2, right)
        ax2.set_xlim(lo2, hi2)
        ax2.set_xticks([round(min(kbs), -1), round(max(kbs), -1)] if hi2 - lo2 > 60 else [round(sum(kbs) / len(kbs))])
        ax2.set_xlabel("KB")
        ax2.set_title(f"{sorted(a_bits)[0]}-bit activations", fontsize=8)
    for a in axes:
        a.axhline(baseline_top1, color="tab:red", lw=0.9, ls="--", label=f"fp32 baseline {baseline_top1:.2f}%")
        a.grid(alpha=0.3)
    for s in shipped:
        axes[0].scatter([s["file_kb"]], [s["top1"]], marker="*", s=170, color="gold", edgecolors="k", linewidths=0.6,
                        zorder=4)
        far = s["file_kb"] > (x_lo * x_hi) ** 0.5
        axes[0].annotate(s["label"], (s["file_kb"], s["top1"]), xytext=(-8, -30) if far else (12, 9),
                         textcoords="offset points", ha="right" if far else "left", fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.5}, zorder=5,
                         bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
    axes[0].scatter([], [], marker="*", s=110, color="gold", edgecolors="k", linewidths=0.6, label="shipped file")
    axes[0].set_ylim(y0, top)
    seen: dict = {}
    for a in axes:
        for hd, lb in zip(*a.get_legend_handles_labels()):
            seen.setdefault(lb, hd)
    fig.tight_layout(rect=(0, 0.035 * ((len(seen) + 1) // 2) + 0.02, 1, 1))
    _legend_below(fig, list(seen.values()), 2, list(seen))
    return _save(fig, path)


def networks_frontier(nets: list[dict], path: str, mnv2: list[dict], mnv2_base: float) -> str:
    """top-1 vs file KB of every network: compressed files (filled, one per seed) and their fp32 checkpoints
    (open squares at the bytes of torch.save of the fp32 state_dict), each network's baseline a dashed line.

    nets: {name, seeds: seeds.json (rows: file_bytes, top1_test, baseline_test, fp32_checkpoint_bytes)};
    mnv2: {label, file_kb, top1} of the MobileNet-v2 files beside them, mnv2_base its baseline top-1."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:olive"]
    kbs = []
    for c, n in zip(colors, nets):
        rows = n["seeds"]["rows"]
        xs = [r["file_bytes"] / 1000 for r in rows]
        ax.scatter(xs, [r["top1_test"] for r in rows], color=c, s=30, zorder=3,
                   label=f"{n['name']}: compressed, {len(rows)} seed{'s' if len(rows) != 1 else ''}")
        base = n["seeds"]["baseline_test"]["mean"]
        ax.scatter([rows[0]["fp32_checkpoint_bytes"] / 1000], [base], marker="s", s=34, facecolors="white",
                   edgecolors=c, linewidths=1.2, zorder=3, label=f"{n['name']}: fp32 checkpoint (baseline, mean)")
        ax.axhline(base, color=c, lw=0.8, ls="--")
        kbs += xs + [rows[0]["fp32_checkpoint_bytes"] / 1000]
    c = colors[len(nets) % len(colors)]
    if mnv2:
        ax.scatter([m["file_kb"] for m in mnv2], [m["top1"] for m in mnv2], marker="*", s=90, color=c,
                   edgecolors="k", linewidths=0.5, zorder=4,
                   label="MobileNet-v2: shipped files (CPU; section 8 says how they were chosen)")
        ax.axhline(mnv2_base, color=c, lw=0.8, ls="--", label="dashed: each network's baseline")
        kbs += [m["file_kb"] for m in mnv2]
    from matplotlib.ticker import FixedLocator
    lo, hi = min(kbs) * 0.8, max(kbs) * 1.25
    _log_kb(ax, lo, hi)
    ax.xaxis.set_major_locator(FixedLocator([v for v in (100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
                                             if lo <= v <= hi]))
    ax.set_ylabel("top-1 % (test set)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.035 * ((len(labels) + 1) // 2) + 0.02, 1, 1))
    _legend_below(fig, handles, 2, labels)
    return _save(fig, path)


def sweep_charts(sweep_dir: str, baseline_json: str | None = None) -> list[str]:
    """Parallel coordinates and frontier of one sweep folder's runs.jsonl, written into that folder
    (the rows with the zstd stage; `baseline_json`: the teacher's record, for its top-1 line)."""
    import json
    with open(os.path.join(sweep_dir, "runs.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r["config"].get("entropy", "zstd") == "zstd"]
    teacher = rows[0]["baseline_top1"] if rows else 0.0
    if baseline_json and os.path.exists(baseline_json):
        with open(baseline_json) as f:
            teacher = json.load(f)["top1"]
    return [parallel_coordinates(rows, os.path.join(sweep_dir, "parallel_coordinates.png")),
            sweep_frontier(rows, os.path.join(sweep_dir, "frontier.png"), teacher)]
