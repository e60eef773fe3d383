#!/usr/bin/env python
"""Size / accuracy frontier of every recorded run, and the shipped model's per-layer table.

    python tools/frontier.py

Reads results/baseline{,2,3}/, results/{compress,compress_long,compress_qat45,compress_a4,ptq}/results.jsonl,
the runs.jsonl of every folder in mbz.report.later_runs.FOLDERS and their reduced/reduce_log.jsonl;
writes results/frontier.md, results/frontier.png and results/shipped_model_layers.md.
No number here is typed by hand.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mbz  # noqa: E402
from mbz.report.later_runs import baseline_top1, later_runs, worst_drop  # noqa: E402
from mbz.summary import summarize  # noqa: E402

R = "results"
SHIPPED = "examples/mobilenetv2_cifar10.mbz"


def cpu_evals() -> dict:
    """{file: top-1} from results/cpu_eval.jsonl (lines of `mbz eval FILE --json`)."""
    p = os.path.join(R, "cpu_eval.jsonl")
    if not os.path.exists(p):
        return {}
    return {os.path.normpath(r["file"]): r["top1"] for r in map(json.loads, open(p))}


def runs():
    base = json.load(open(os.path.join(R, "baseline", "baseline.json")))
    cpu = cpu_evals()
    out = []
    for d, label in [("compress", "prune+QAT, 3 ep/level + 12 QAT ep"), ("compress_long", "prune+QAT, 6 ep/level + 20 QAT ep"),
                     ("compress_qat45", "prune+QAT, 5 ep/level + 45 QAT ep"),
                     ("compress_a4", "prune+QAT, 4 ep/level + 18 QAT ep"),
                     ("ptq", "PTQ of the baseline")]:
        p = os.path.join(R, d, "results.jsonl")
        if not os.path.exists(p):
            continue
        for line in open(p):
            r = json.loads(line)
            c = r["config"]
            out.append({"run": f"{d}/{r['name']}", "method": label, "sparsity": c.get("sparsity", 0.0),
                        "wbits": c.get("wbits", 32), "abits": c.get("abits", 32), "file_bytes": r["file_bytes"],
                        "top1": r["top1_packed"], "drop": round(base["top1"] - r["top1_packed"], 2),
                        "cpu_top1": cpu.get(os.path.normpath(os.path.join(R, d, r.get("mbz", r["name"] + ".mbz"))))})
            out[-1]["cpu_drop"] = round(base["top1"] - out[-1]["cpu_top1"], 2) if out[-1]["cpu_top1"] is not None else None
    for r in out:
        r["baseline"] = "baseline"
    # sessions 3 and 8: later baselines (results/baseline2: wd 5e-4 + cutout; results/baseline3: batch 1024, 265
    # epochs), sweep-format runs and reduced files
    out += later_runs(R, cpu)
    for b in ("baseline2", "baseline3"):
        base[b] = {**json.load(open(os.path.join(R, b, "baseline.json"))), "cpu_top1": baseline_top1(R, b)}
    return base, sorted(out, key=lambda r: r["file_bytes"])


def main():
    base, rows = runs()
    L = ["# Size / accuracy frontier (MobileNet-v2, CIFAR-10 (JPEG q75 export))", "",
         "Command: `python tools/frontier.py`. Baseline: fp32, "
         f"{base['top1']}% top-1 ({base['epochs']} epochs, {base['train_seconds']:.0f} s of training on {base['device']}). "
         "File bytes are the whole `.mbz` file on disk (header, records, indices, scales, biases, checksums); "
         "top-1 is of the model rebuilt from the file by `mbz.load_model`, evaluated on all 10,000 test images "
         "on the GPU in fp32 (TF32 convolutions allowed in the session-1 runs, off in the baseline2 runs); the CPU column is `mbz eval FILE --json` "
         "(results/cpu_eval.jsonl) where it was run. With 4-bit activations the two differ.", "",
         "| run | method | sparsity | w bits | a bits | file bytes | KB | top-1 % GPU | top-1 % CPU | drop GPU | drop CPU | on frontier |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def acc(r):  # the GPU figure where there is one, else the CPU one
        return r["top1"] if r["top1"] is not None else r["cpu_top1"]

    def meets(r, kb, drop):  # every device it was measured on
        return r["file_bytes"] <= kb * 1000 and worst_drop(r) is not None and worst_drop(r) <= drop
    best = -1.0
    frontier = []
    for r in rows:
        on = acc(r) > best
        if on:
            best = acc(r)
            frontier.append(r)
        L.append(f"| {r['run']} | {r['method']} | {r['sparsity']} | {r['wbits']} | {r['abits']} | {r['file_bytes']:,} | "
                 f"{r['file_bytes'] / 1000:.1f} | {fmt(r['top1'], '.2f')} | {fmt(r['cpu_top1'], '.2f')} | "
                 f"{fmt(r['drop'], '+.2f')} | {fmt(r['cpu_drop'], '+.2f')} | {'yes' if on else ''} |")
    b2, b3 = base["baseline2"], base["baseline3"]
    L += ["", f"Drops are against each run's own baseline: results/baseline ({base['top1']}%) for the session-1 runs, "
          f"results/baseline2 ({b2['top1']}% in training, {b2['cpu_top1']}% in fp32 on the CPU, the figure the "
          "session-3 runs compare with) for the rows marked baseline2, results/baseline3 "
          f"({b3['top1']}% in training, {b3['cpu_top1']}% in fp32 on the CPU) for the rows marked baseline3. "
          "'reduced' rows are the same trained model with "
          "weight scales and biases at reduced precision (tools/reduce_params.py), evaluated on the CPU only.", "",
          "Targets of issue 4 (a row meets a target only on every device it was evaluated on; each row against its "
          "own baseline, then against a baseline of at least 92.5%):", ""]
    # a baseline meets the 92.5% target if its training-time and CPU figures both do (session 1's has no CPU one)
    strong = {b for b in ("baseline2", "baseline3") if min(base[b]["top1"], base[b]["cpu_top1"] or 0) >= 92.5}
    strong |= {"baseline"} if base["top1"] >= 92.5 else set()

    def closest(rs, kb=None):
        """The run of least drop among those within the size; with none, the smallest file above it."""
        inside = [r for r in rs if kb is None or r["file_bytes"] <= kb * 1000]
        r = min(inside, key=worst_drop, default=None)
        if r:
            return f"closest {r['run']} ({r['file_bytes']:,} B, drop {worst_drop(r):+.2f})"
        r = min(rs, key=lambda x: x["file_bytes"], default=None)
        return (f"no run of at most {kb} KB; the smallest is {r['run']} ({r['file_bytes']:,} B, drop "
                f"{worst_drop(r):+.2f})") if r else "no run"

    def against_strong(ok, rs, kb=None):
        hit = [r for r in ok if r["baseline"] in strong]
        return (f"; from a baseline ≥ 92.5% ({', '.join(sorted(strong)) or 'none'}): "
                + ("met" if hit else "NOT met, " + closest([r for r in rs if r["baseline"] in strong
                                                              and worst_drop(r) is not None], kb)))
    for kb, drop in [(200, 1.0), (400, 0.3)]:
        ok = [r for r in rows if meets(r, kb, drop)]
        L.append(f"- ≤ {kb} KB within {drop} pt: " + ("met by " + ", ".join(
            f"{r['run']} ({r['file_bytes']:,} B, drop {worst_drop(r):+.2f})"
            for r in ok) if ok else "NOT met")
            + against_strong(ok, rows, kb))
    a4 = [r for r in rows if r["abits"] == 4]
    L.append("- 4-bit activations within 1.0 pt: " + (", ".join(
        f"{r['run']} drop {fmt(r['drop'], '+.2f')} (GPU) / {fmt(r['cpu_drop'], '+.2f')} (CPU)" for r in a4) or "no run")
        + (" — met on every device measured" if any(meets(r, 1e9, 1.0) for r in a4) else " — NOT met")
        + against_strong([r for r in a4 if meets(r, 1e9, 1.0)], a4))
    L.append(f"- baseline ≥ 92.5%: {'met by ' + ', '.join(sorted(strong)) if strong else 'NOT met'} "
             f"({base['top1']}% session 1, {b2['top1']}% session 3, {b3['top1']}% in training and "
             f"{b3['cpu_top1']}% in fp32 on the CPU session 8)")
    with open(os.path.join(R, "frontier.md"), "w") as f:
        f.write("\n".join(L) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = iter("osDv^P*Xh")
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ax.scatter([r["file_bytes"] / 1000 for r in rs], [acc(r) for r in rs], marker=next(markers, "."),
                   label=method + (" (CPU top-1)" if all(r["top1"] is None for r in rs) else ""))
        for r in rs:
            ax.annotate(f"s{r['sparsity']} w{r['wbits']} a{r['abits']}", (r["file_bytes"] / 1000, acc(r)), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot([r["file_bytes"] / 1000 for r in frontier], [acc(r) for r in frontier], "k--", lw=0.8, label="frontier")
    ax.axhline(base["top1"], color="gray", lw=0.8, label=f"fp32 baseline (session 1) {base['top1']}%")
    ax.axhline(b2["cpu_top1"], color="gray", lw=0.8, ls=":", label=f"fp32 baseline2 {b2['cpu_top1']}%")
    ax.axhline(b3["cpu_top1"], color="gray", lw=0.8, ls="--", label=f"fp32 baseline3 {b3['cpu_top1']}%")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("file size, KB (every byte of the .mbz)")
    ax.set_ylabel("top-1 %, CIFAR-10 (JPEG q75 export)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(R, "frontier.png"), dpi=120)

    with mbz.open(SHIPPED) as r:
        s = summarize(r)
        meta = r.metadata
    L = [f"# Shipped model: {SHIPPED}", "", f"{s['file_bytes']:,} bytes; compression config {meta.get('compression')}; "
         f"activations {meta['arch'].get('act_bits')}-bit.", "",
         "| tensor | shape | encoding | bits | layout | sparsity % | bytes (all categories) |", "|---|---|---|---:|---|---:|---:|"]
    for t in s["tensors"]:
        L.append(f"| {t['name']} | {'x'.join(map(str, t['shape']))} | {t['encoding']} | {t['bits']} | {t['layout']} | "
                 f"{100 * t['sparsity']:.1f} | {t['total_bytes']:,} |")
    L += ["", "Activation quantizers (bits, range alpha) from the file's metadata:", "",
          "| activation | bits | signed | alpha |", "|---|---:|---|---:|"]
    for k, v in meta["arch"].get("act_alpha", {}).items():
        L.append(f"| {k} | {meta['arch']['act_bits']} | {'yes' if k.count('.') == 1 else 'no (after ReLU6)'} | {v} |")
    with open(os.path.join(R, "shipped_model_layers.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print(open(os.path.join(R, "frontier.md")).read())


if __name__ == "__main__":
    main()
