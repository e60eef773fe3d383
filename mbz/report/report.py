"""REPORT.md and REPORT.pdf from the recorded files only: every number is read from results/ (through
results/index.json) or from the .mbz files in examples/; no model is evaluated here.

Deterministic: no clock, no machine-dependent value, rows in file order; running it twice on the
same files gives the same bytes (Markdown, PNG charts and PDF).
"""
from __future__ import annotations

import json
import os
import re

import mbz
from ..summary import summarize
from . import charts, records
from .document import Code, Document, Heading, Image, Items, Para, Table, to_markdown, to_pdf

TITLE = "MobileNet-v2 on CIFAR-10 (JPEG q75 export): compression report"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _diff(top1: float | None, base: float) -> str:
    return "-" if top1 is None else f"{top1 - base:+.2f}"




def _pins(constraints: str) -> list[str]:
    if not os.path.exists(constraints):
        return []
    return [line.strip() for line in open(constraints) if re.match(r"^[A-Za-z0-9_.\-]+==", line.strip())]




class _Inputs:
    """Everything the report reads, read once."""

    def __init__(self, root: str):
        self.root = root
        self.results = os.path.join(root, "results")
        R = self.results
        self.index = idx = records.load_index(R)
        self.base = records.baseline(R, idx)
        self.blog = records.read_jsonl(os.path.join(R, idx["baseline"]["dir"], "train_log.jsonl"))
        self.b = self.base["cpu_top1"]
        self.rows = records.recipe_runs(R, idx, self.b)
        self.shipped = records.shipped(R, root, idx, self.rows)
        self.sweep = records.sweep(R, idx)
        self.evals = {r["file"]: r for r in records.read_jsonl(os.path.join(R, idx["examples_eval"]))}
        self.speed = records.read_json(os.path.join(R, idx["eval_speed"]))
        self.fmt = records.read_json(os.path.join(R, idx["format"]))
        self.acts = {k: records.read_json(os.path.join(R, v)) for k, v in idx["activations"].items()}
        self.bounds = {k: records.read_json(os.path.join(R, v)) for k, v in idx.get("index_bounds", {}).items()}
        sens = os.path.join(R, idx["sensitivity"])
        self.caps = records.read_json(os.path.join(sens, "caps.json"))
        self.scanned = records.read_json(os.path.join(sens, "scanned_baseline.json"))
        self.chains = [{**c, "levels": records.read_jsonl(os.path.join(R, c["file"])) if c.get("file") else [],
                        "train_log": records.read_jsonl(os.path.join(R, c["log"])),
                        "qat": records.read_jsonl(os.path.join(R, c["qat_log"])) if c.get("qat_log") else []}
                       for c in idx["chains"]]
        self.files = {}
        for s in self.shipped:
            with mbz.open(os.path.join(root, s["file"])) as rd:
                self.files[s["file"]] = summarize(rd, decode=True)
        with mbz.open(os.path.join(R, idx["baseline"]["dir"], "baseline.mbz")) as rd:
            self.base_file = summarize(rd, decode=False)
        self.pins = _pins(os.path.join(root, "constraints.txt"))
        self.nets = records.networks(R, idx)
        self.recipe_seeds = [{**e, **records.read_json(os.path.join(R, e["file"]))} for e in idx.get("recipe_seeds", [])]
        mp = idx.get("mixed_precision")
        self.mixed = ({**mp, "rows": records.read_jsonl(os.path.join(R, mp["file"]))} if mp else None)


def build(root: str = ".", out: str | None = None, figures: str | None = None, draw: bool = True,
          pdf: bool = True) -> dict:
    """Write REPORT.md (`out`, default ROOT/REPORT.md), REPORT.pdf beside it and the charts into `figures`
    (default ROOT/results/<index 'figures'>).  Returns {"md", "pdf", "figures": [...]}.

    draw=False keeps the charts already in `figures`; pdf=False writes the Markdown only (quick checks)."""
    inp = _Inputs(root)
    out = out or os.path.join(root, "REPORT.md")
    figures = figures or os.path.join(inp.results, inp.index.get("figures", "figures"))
    os.makedirs(figures, exist_ok=True)
    figs = _draw(inp, figures) if draw else {n: os.path.join(figures, n + ".png") for n in FIGURES}
    doc = _document(inp, figs)
    md_dir = os.path.dirname(os.path.abspath(out))
    text = to_markdown(doc, md_dir)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    pdf_path = os.path.splitext(out)[0] + ".pdf"
    if pdf:
        to_pdf(doc, pdf_path)
    return {"md": out, "pdf": pdf_path if pdf else None, "figures": sorted(figs.values())}


def outputs(root: str = ".", out: str | None = None, figures: str | None = None) -> dict:
    """What `build` writes: {"md", "pdf", "figures_dir", "figures": [chart paths]}, for the overwrite check."""
    idx = records.load_index(os.path.join(root, "results"))
    out = out or os.path.join(root, "REPORT.md")
    figures = figures or os.path.join(root, "results", idx.get("figures", "figures"))
    return {"md": out, "pdf": os.path.splitext(out)[0] + ".pdf", "figures_dir": figures,
            "figures": [os.path.join(figures, n + ".png") for n in FIGURES]}


FIGURES = ("baseline_curves", "pipeline_curves", "bytes_by_category", "sweep_parallel_coordinates",
           "sweep_frontier", "frontier", "networks_frontier")


def _draw(inp: _Inputs, d: str) -> dict:
    P = {n: os.path.join(d, n + ".png") for n in FIGURES}
    charts.baseline_curves(inp.blog, P["baseline_curves"], inp.b)
    panels = []
    for c in inp.chains:
        if c.get("replicate"):
            continue
        name = c["recipe"].split("/")[-1]
        panels.append((name, c["train_log"] + c["qat"]))
    charts.pipeline_curves(panels, P["pipeline_curves"], inp.b)
    charts.bytes_by_category([(s["file"], inp.files[s["file"]]["categories"]) for s in inp.shipped],
                             P["bytes_by_category"])
    z = [r for r in inp.sweep["rows"] if r["config"]["entropy"] == "zstd"]
    charts.parallel_coordinates(z, P["sweep_parallel_coordinates"])
    charts.sweep_frontier(z, P["sweep_frontier"], inp.sweep["teacher_record"]["top1"])
    pts = [{**r, "file_kb": r["file_bytes"] / 1000, "top1": records.accuracy(r)} for r in inp.rows]
    ship = [{"label": s["file"], "file_kb": s["bytes"] / 1000, "top1": records.accuracy(s["row"])} for s in inp.shipped]
    charts.frontier(pts, P["frontier"], inp.b, inp.index["targets"], ship)
    charts.networks_frontier(inp.nets, P["networks_frontier"], ship, inp.b)
    return P


# ------------------------------------------------------------------------------------------------ text

def _document(inp: _Inputs, figs: dict) -> Document:
    doc = Document(TITLE)
    _intro(doc, inp)
    _data(doc, inp)
    _model(doc, inp, figs)
    _baseline(doc, inp, figs)
    _method(doc, inp)
    _storage(doc, inp, figs)
    _sweep(doc, inp, figs)
    _ratios(doc, inp)
    _final(doc, inp, figs)
    _networks(doc, inp, figs)
    _reproduce(doc, inp)
    _appendix(doc, inp)
    return doc


def _target(inp, name):
    return next(t for t in inp.index["targets"] if t["name"] == name)


def _best_for(inp, t):
    ok = [r for r in inp.rows if records.meets(r, t)]
    return ok


def _intro(doc, inp):
    b = inp.b
    doc.add(Para(f"Generated by `mbz report` from the files under `results/` (listed in `results/index.json`) and "
                 f"`examples/`; no number in it is typed by hand and no model is evaluated to write it. All accuracies "
                 f"are top-1 on the {inp.evals[inp.shipped[0]['file']]['n']:,} test images of {inp.index['data']}, "
                 "which is harder than the original PNG CIFAR-10. \"CPU\" figures come from `mbz eval` or `mbz reduce` "
                 "on a CPU, \"GPU\" figures from the training run evaluating the packed model."))
    a4 = _target(inp, "a4")
    a4_rows = _best_for(inp, a4)
    a4_best = max(a4_rows, key=lambda r: (r["kept"], records.accuracy(r))) if a4_rows else None
    rows = []
    for s in inp.shipped:
        r, t = s["row"], _target(inp, s["target"])
        rows.append([f"`{s['file']}`", f"{s['bytes']:,}", _pct(r["cpu_top1"]), _diff(r["cpu_top1"], b), t["label"],
                     "**yes**" if records.meets(r, t) else "no"])
    if a4_best:
        rows.append([f"`results/{a4_best['dir']}/models/{a4_best['name']}.mbz`", f"{a4_best['file_bytes']:,}",
                     _pct(a4_best["cpu_top1"]), _diff(a4_best["cpu_top1"], b), a4["label"],
                     "**yes**" if records.meets(a4_best, a4) else "no"])
    doc.add(Table(["file", "bytes", "top-1 % (CPU)", "vs baseline", "target", "met"], rows, "lrrrll",
                  widths=[62, 14, 14, 13, 38, 8],
                  caption=f"**Result.** The fp32 baseline reaches **{b:.2f}%** (CPU). The targets are judged on every "
                          "device a file was measured on:"))


def _data(doc, inp):
    base = inp.base
    meta = inp.files[inp.shipped[0]["file"]]["metadata"]
    n = inp.evals[inp.shipped[0]["file"]]["n"]
    c = base["config"]
    norm = base["normalization"]
    doc.add(Heading(1, "1. Data and transforms"))
    doc.add(Items([
        f"Data: {inp.index['data']}: CIFAR-10's 50,000 training images and its {n:,} test images, each stored as a "
        "JPEG file of quality 75. `mbz data cifar10-jpeg --quality 75 ROOT -o DIR` writes this export from "
        "torchvision's CIFAR-10 (another JPEG encoder may write slightly different bytes); `mbz eval` also runs on "
        "the original CIFAR-10 (`--data cifar10:ROOT`).",
        f"Normalization: mean {tuple(norm['mean'])}, std {tuple(norm['std'])} per RGB channel after scaling to "
        f"[0, 1]; input {'x'.join(map(str, meta['preprocess']['input_size']))}. Every `.mbz` file records it in its "
        f"metadata: `{json.dumps(meta['preprocess'])}`.",
        "Training augmentation (on the GPU, per image): random crop 32 with 4-pixel zero padding, horizontal flip, "
        f"{'one TrivialAugment-style operation, ' if c['trivial'] else ''}"
        f"{'cutout ' + str(c['cutout']) + ' px' if c['cutout'] else 'no cutout'}. Test images: normalization only.",
        "The test split is used only for measuring; the shipped 200 KB file was selected on it (section 8)."]))


def _model(doc, inp, figs):
    base, c, ar = inp.base, inp.base["config"], inp.base["arch"]
    bf = inp.base_file
    doc.add(Heading(1, "2. Model and training strategy"))
    doc.add(Items([
        f"torchvision's MobileNet-v2, width {ar['width_mult']}, dropout {ar['dropout']}, {ar['num_classes']} classes; "
        "the stem convolution and the first stride-2 block run at stride 1 for 32x32 inputs (last feature map 4x4). "
        f"{len(bf['tensors'])} tensors, {bf['fp32_bytes']:,} bytes in fp32 (`results/{base['dir']}/baseline.mbz`).",
        f"Baseline training (`{base['recipe']}`): SGD with Nesterov momentum {c['momentum']}, lr {c['lr']:g} at batch "
        f"{c['batch']}, {c['warmup']:g} warm-up epochs then cosine decay, weight decay {c['wd']:g}, label smoothing "
        f"{c['label_smoothing']:g}, {'bf16 autocast, ' if c['amp'] else ''}channels_last, "
        f"{'weight EMA ' + str(c['ema']) if c['ema'] else 'no weight EMA'}, seed {c['seed']}; {base['epochs']} epochs "
        f"in {base['train_seconds']:.0f} s of training epochs on one {base['device']} (torch {base['torch']}).",
        "Compression strategy: every compressed model starts from this baseline, which is also the teacher for "
        "distillation (KL divergence at T = 4 beside the label loss, with the weight `kd`). Unstructured pruning "
        "removes weights in gradual steps, each step fine-tuned; a second cosine cycle at the kept sparsity "
        "(\"restart\", zeros held) recovers accuracy; quantization-aware training then learns weight steps and "
        "activation ranges; for the 200 KB model, uniform soups of QAT runs of one pruned model are fine-tuned "
        "further. Section 4 lists every setting."]))
    doc.add(Image(figs["pipeline_curves"], "test top-1 through the recipes"))
    doc.add(Para("Test top-1 (GPU) after each epoch through the 400 KB and 200 KB recipes: the pruning chain, the "
                 "restart at the kept sparsity, then every QAT run from the restarted model (their curves start where "
                 "the restart ends)."))


def _baseline(doc, inp, figs):
    base, log, b = inp.base, inp.blog, inp.b
    test = [h for h in log if "test_acc" in h]
    best = max(test, key=lambda h: h["test_acc"])
    last = log[-1]
    doc.add(Heading(1, "3. Baseline"))
    doc.add(Items([
        f"**fp32 baseline: {b:.2f}% top-1** (`mbz eval results/{base['dir']}/baseline.mbz` on the CPU, fp32); "
        f"{base['top1']:.2f}% at the end of training (GPU, bf16 autocast); best logged epoch {best['epoch']}: "
        f"{best['test_acc']:.2f}%. Every drop in this report is against the {b:.2f}%.",
        f"Last epoch: train accuracy {last['train_acc']:.1f}% on augmented images vs {last['test_acc']:.2f}% on the "
        f"test images, train loss {last['train_loss']:.3f} (with label smoothing) vs test loss {last['test_loss']:.3f}: "
        "with this augmentation and weight decay the model does not over-fit its training images."]))
    doc.add(Image(figs["baseline_curves"], "baseline curves"))
    doc.add(Para("Failure modes and spread, from the recorded runs:"))
    doc.add(Items(_failures(inp)))


def _failures(inp) -> list[str]:
    out = []
    rows = inp.sweep["rows"]
    by = {r["name"]: r for r in rows}
    for r in rows:
        if r["top1"] < 50 and r["config"]["granularity"] == "tensor" and r["config"]["fold_bn"]:
            twin = by.get(r["name"].replace("_gt_", "_gt_bn_"))
            out.append(f"Per-tensor weight steps after BatchNorm folding collapse: `{r['name']}` reached "
                       f"{r['top1']:.2f}% (chance), because folded channels differ in scale by orders of magnitude and "
                       "one step cannot serve them" + (f"; the same run without folding reached {twin['top1']:.2f}%"
                                                       if twin else "") + ". Every shipped file uses per-channel steps.")
            break
    rep = inp.sweep["repeat_rows"]
    pairs = [(x, by[x["name"]]) for x in rep if x["name"] in by]
    if pairs:
        d2 = [abs(x["top1"] - y["top1"]) for x, y in pairs if x["config"]["wbits"] == 2]
        d3 = [abs(x["top1"] - y["top1"]) for x, y in pairs if x["config"]["wbits"] > 2]
        out.append(f"Run-to-run spread of the sweep ({len(pairs)} configurations trained twice, "
                   f"`results/{inp.sweep['repeat']}`): up to {max(d3):.2f} points at 3-8-bit weights, up to "
                   f"{max(d2):.2f} points at 2-bit weights, whose 4-epoch QAT is unstable.")
    for c in inp.chains:
        lv = c["levels"]
        if not lv:
            continue
        after = [x for x in lv if "restart_epochs" in x["pruning"]]
        before = [x for x in lv if "restart_epochs" not in x["pruning"]]
        sp = after[0]["pruning"]["sparsity"]
        t_before = " / ".join(f"{x['top1']:.2f}" for x in before)
        t_after = " / ".join(f"{x['top1']:.2f}" for x in after)
        out.append(f"The same pruning chain to {sp:g} run {len(after)} times (`results/{c['file']}`, GPU, fp32): "
                   f"{t_before}% after the chain, {t_after}% after the restart.")
    for p in [r for r in inp.rows if r["stage"] == "PTQ"]:
        qat = [r for r in inp.rows if r["dir"] == os.path.dirname(p["dir"]) and r["stage"] == "QAT"]
        if p["wbits"] == 4 and qat:
            best = max(qat, key=lambda r: r["gpu_top1"] or 0)
            out.append(f"Post-training quantization is not enough at 0.93 sparsity: 4-bit weights without QAT give "
                       f"{p['cpu_top1']:.2f}% (CPU, `results/{p['dir']}`), QAT of the same pruned model "
                       f"{best['gpu_top1']:.2f}% (GPU).")
    rep_rows = [r for r in inp.rows if "replicate" in r["group"] and r["stage"].endswith("reduced")]
    main = [s["row"] for s in inp.shipped if s["target"] == "200k"]
    if rep_rows and main:
        r, m = rep_rows[-1], main[0]
        out.append(f"The 200 KB result depends on the pruned model: the whole recipe run again from the baseline "
                   f"(`results/{r['dir']}`) gave {r['cpu_top1']:.2f}% ({_diff(r['cpu_top1'], inp.b)}) for the same "
                   f"soup and reduction that gave {m['cpu_top1']:.2f}% ({_diff(m['cpu_top1'], inp.b)}).")
    a4 = [r for r in inp.rows if r["abits"] == 4 and r["kd"] == 0.5]
    if len(a4) >= 2:
        out.append(f"The same 4-bit-activation QAT trained twice (`results/{a4[0]['dir']}`, `results/{a4[1]['dir']}`): "
                   f"{a4[0]['cpu_top1']:.2f}% and {a4[1]['cpu_top1']:.2f}% (CPU).")
    return out


def _method(doc, inp):
    doc.add(Heading(1, "4. Compression method"))
    doc.add(Items([
        "Gradual global magnitude pruning from the baseline: at each step the smallest-magnitude conv and linear "
        "weights of the whole network are set to zero up to the step's sparsity (optionally capped per layer), then "
        "the network is fine-tuned with the masks re-applied after every optimizer step, with distillation.",
        "Restart: a second cosine learning-rate cycle at the kept sparsity, zeros held.",
        "BatchNorm folded into the preceding convolution (one bias per channel remains).",
        "Quantization-aware training (LSQ, straight-through rounding): weights symmetric per output channel, "
        "the step initialised at the least-squares clipping; activations per tensor, unsigned after ReLU6 and signed "
        "at block outputs, ranges calibrated on 8 batches then learned; steps, ranges and biases rounded to fp16 "
        "values before export.",
        "Soup (200 KB model): the uniform average of QAT runs fine-tuned from one pruned model, put back on 4-bit "
        "grids and fine-tuned a few QAT epochs more (`mbz soup`, `mbz finetune`).",
        "Reduction: every weight scale held at 8 significant bits and every bias on an 8-bit per-tensor grid "
        "(`mbz reduce`), which saves about 28 KB per file.",
        "`mbz pack` finds every weight grid losslessly and stores codes bit-packed, sparse positions as a bitmap or "
        "delta-coded indices, scales as tables, and applies zstd per section only where it shrinks it."], ordered=True))
    rows = []
    for entry in inp.index["runs"]:
        rs = [r for r in inp.rows if r["dir"] == entry["dir"] and not r["stage"].endswith("reduced")]
        if not rs:
            continue
        red = [r for r in inp.rows if r["dir"] == entry["dir"] and r["stage"].endswith("reduced")]
        vals = lambda k: "/".join(f"{v:g}" for v in sorted({r[k] for r in rs if r[k] is not None}))  # noqa: E731
        rows.append([f"`{entry['dir']}`", entry["method"], vals("sparsity"), vals("wbits"), vals("abits"),
                     vals("epochs"), vals("lr"), vals("kd"), str(len(rs)),
                     f"{red[0]['scale_bits']}/{red[0]['bias_bits']}" if red else "-"])
    doc.add(Table(["folder", "what", "sparsity", "W bits", "A bits", "epochs", "lr", "kd", "runs", "scale/bias bits"],
                  rows, "llrrrrrrrr", widths=[37, 54, 14, 8, 8, 12, 15, 12, 9.5, 13], size=7,
                  caption="The recorded runs of each recipe (folders under `results/`; epochs are QAT or finetune "
                          "epochs; 0 = post-training quantization):"))
    for c in inp.chains:
        lv = [x for x in c["levels"] if x.get("used_by_qat")]
        if not lv:
            continue
        p = lv[-1]["pruning"]
        caps = p.get("caps") or {}
        doc.add(Para(f"`{c['recipe']}` prunes {' -> '.join(f'{s:g}' for s in p['chain'])} with "
                     f"{p['epochs_per_step']} epochs per step" +
                     (f" and {p['epochs_at_kept_levels']} at {p['sparsity']:g}" if p.get("epochs_at_kept_levels") else "")
                     + f", distillation weight {p['kd']:g}, then restarts for {p.get('restart_epochs', 0)} epochs"
                     + (f"; {len(caps)} layers are capped (`results/{inp.index['sensitivity']}/caps.json`)" if caps else "")
                     + "."))
    caps = inp.caps["caps"]
    doc.add(Para(f"The caps come from a per-layer sensitivity scan (`mbz sensitivity`): each layer alone pruned to "
                 "0.5 / 0.7 / 0.9 / 0.95 without fine-tuning, top-1 measured on 500 training images, and a layer is "
                 f"capped at the highest level within {inp.caps['tolerance']:g} points of the unpruned "
                 f"{inp.caps['baseline_top1']:g}%. The scan was made on a baseline of the same recipe at batch "
                 f"{inp.scanned['config']['batch']} and lr {inp.scanned['config']['lr']:g} "
                 f"({inp.scanned['top1']:.2f}%)."))
    items = sorted(caps.items(), key=lambda kv: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", kv[0])])
    half = (len(items) + 2) // 3
    cols = [items[i * half:(i + 1) * half] for i in range(3)]
    rows = []
    for i in range(half):
        row = []
        for col in cols:
            row += [col[i][0].replace(".weight", ""), f"{col[i][1]:g}"] if i < len(col) else ["", ""]
        rows.append(row)
    doc.add(Table(["layer", "cap", "layer", "cap", "layer", "cap"], rows, "lrlrlr", widths=[26, 7, 26, 7, 26, 7],
                  size=7.5, caption=f"The {len(caps)} capped layers and their highest allowed sparsity:"))
    s = inp.shipped[0]
    f = inp.files[s["file"]]
    enc: dict = {}
    for t in f["tensors"]:
        enc.setdefault((t["encoding"], t["bits"]), []).append(t["name"])
    meta = f["metadata"]
    doc.add(Para(f"The 400 KB file `{s['file']}` holds {len(f['tensors'])} tensors, "
                 + ", ".join(f"{len(v)} {e} at {b} bits" for (e, b), v in sorted(enc.items())) +
                 f"; its compression record: `{json.dumps(meta.get('compression'))}`. Every conv and linear weight "
                 "is quantized, the first convolution and the classifier included; the biases (after folding) are on "
                 f"{meta.get('reduced_params', {}).get('bias_bits', '?')}-bit per-tensor grids. The per-layer table is "
                 "in the appendix."))
    if inp.mixed:
        _mixed(doc, inp)


def _mixed(doc, inp):
    m = inp.mixed
    rows = sorted(m["rows"], key=lambda r: (r["file_bytes"], r["kind"]))
    doc.add(Para("Mixed precision by sensitivity (`mbz mixed-precision`, recipe key `qat[].layer_bits`): every conv and "
                 "linear weight is quantized alone at 2-8 bits on images of the validation split (the reference was "
                 "trained on all training images, so they are not unseen by it), its loss change and its real "
                 "packed bytes recorded; a Lagrangian allocation then picks each layer's width under a byte budget. "
                 "Post-training (no QAT) on the dense fp32 reference MobileNet-v2, BatchNorm folded, fp32 activations; "
                 "each plan evaluated once on the test set:"))
    doc.add(Table(["plan", "bytes", "mean bits", "top-1 %"],
                  [[r["plan"], f"{r['file_bytes']:,}", f"{r['mean_bits']:.2f}", _pct(r["test_top1"])] for r in rows],
                  "lrrr", widths=[30, 24, 20, 18], size=7.5,
                  caption=f"`results/{m['file']}` (`python tools/mixed_precision.py`, one seed); at equal bytes, mixed vs "
                          "uniform top-1: " + "; ".join(
                              f"{u['mean_bits']:g} bits {x['test_top1']:.2f} vs {u['test_top1']:.2f}"
                              for u in rows if u["kind"] == "uniform"
                              for x in rows if x["kind"] == "mixed"
                              and abs(x["file_bytes"] - u["file_bytes"]) <= 0.01 * u["file_bytes"]) + ":"))
    doc.add(Image(os.path.join(inp.results, m["figure"]), "mixed vs uniform bits at equal bytes"))


def _storage(doc, inp, figs):
    doc.add(Heading(1, "5. Storage, every byte counted"))
    cats = charts.CATEGORY_ORDER
    files = [(s["file"], inp.files[s["file"]]["categories"], s["bytes"]) for s in inp.shipped]
    rows = []
    for c in cats:
        rows.append([c] + [f"{cs.get(c, 0):,} ({100 * cs.get(c, 0) / n:.1f}%)" for _, cs, n in files])
    rows.append(["**total = file size**"] + [f"**{sum(cs.values()):,}**" for _, cs, _ in files])
    doc.add(Table(["category"] + [f"`{os.path.basename(p)}`" for p, _, _ in files], rows, "lrr", widths=[30, 40, 40],
                  caption="Bytes of each shipped file by category (`mbz inspect FILE`; the categories sum to the size "
                          "on disk):"))
    doc.add(Image(figs["bytes_by_category"], "bytes by category"))
    doc.add(Items([
        "values: the bit-packed weight codes (4 bits per kept weight) and the 8-bit bias codes.",
        "indices: where the kept weights are (a bitmap, or delta-coded positions where sparser), zstd-compressed.",
        "scales: one step per output channel (8 significant bits each after `mbz reduce`) and per-tensor bias steps.",
        "tensor_records, file_header, checksums: names, shapes, encodings, the metadata (architecture, activation "
        "ranges, preprocessing) and a CRC per section. Nothing is left out: every size in this report is the whole "
        "file."]))
    lines = []
    for s in inp.shipped:
        key = s["target"]
        bd = inp.bounds.get(key)
        if bd:
            lines.append(f"`{s['file']}`: {bd['index_bytes_in_file']:,} index bytes for {bd['positions']:,} weight "
                         f"positions, against {bd['iid_bytes']:,} B for an ideal coder of independent positions at "
                         f"each tensor's density and {bd['per_row_bytes']:,} B for one with a density per output "
                         "channel (`python tools/index_bound.py FILE`).")
    if lines:
        doc.add(Para("How close the sparse positions are to their entropy bounds:"))
        doc.add(Items(lines))
    ref = inp.fmt["reference"]
    doc.add(Para(f"The format alone, without training: the dense fp32 reference MobileNet-v2 packs losslessly to "
                 f"{ref['lossless']['file_bytes']:,} bytes in the default profile, bit-exact (top-1 {ref['lossless']['top1_unpacked']:.2f}% "
                 f"unpacked and without mbz); rounded to 8-bit per-channel weights {ref['wbits8']['file_bytes']:,} B "
                 f"({ref['wbits8']['top1_unpacked']:.2f}%) (`results/format`, `python tools/bench_format.py`)."))


def _sweep(doc, inp, figs):
    sw = inp.sweep
    rows = sw["rows"]
    teacher = sw["teacher_record"]
    tc = teacher["config"]
    doc.add(Heading(1, "6. Sweep"))
    wb = sorted({r["config"]["wbits"] for r in rows})
    ab = sorted({r["config"]["abits"] for r in rows})
    sp = sorted({r["config"]["sparsity"] for r in rows})
    z = [r for r in rows if r["config"]["entropy"] == "zstd"]
    doc.add(Para(f"{len(rows)} runs ({len(z)} with the zstd stage) of the wandb sweep files "
                 + ", ".join(f"`{f}`" for f in sw["sweep_files"]) +
                 f" (`{sw['recipe']}`): weight bits {wb}, activation bits {ab} (32 = float), sparsity {sp}, plus "
                 "BatchNorm kept vs folded, per-tensor vs per-channel steps, zstd on and off, and 12 instead of 4 QAT "
                 "epochs. Each run starts from the pruned model of its sparsity and does its QAT epochs with "
                 "distillation; top-1 is of the model rebuilt from its `.mbz` (equal to the QAT model's in every "
                 f"run: {all(r['top1_equal'] for r in rows)})."))
    doc.add(Para(f"The sweep maps the design space from a shorter-trained teacher (`results/{sw['teacher']}`: batch "
                 f"{tc['batch']}, lr {tc['lr']:g}, weight decay {tc['wd']:g}, "
                 f"{'cutout ' + str(tc['cutout']) if tc['cutout'] else 'no cutout'}, {teacher['epochs']} epochs: "
                 f"{teacher['top1']:.2f}%), with 4 QAT epochs per run; its column \"vs teacher\" is against that "
                 f"teacher's packed top-1 ({rows[0]['baseline_top1']:.2f}%). The recipes of sections 4 and 8 took its "
                 "lessons (4-bit per-channel weights, 8-bit activations, folded BatchNorm, zstd) to the "
                 f"{inp.b:.2f}% baseline with longer pruning and QAT."))
    doc.add(Image(figs["sweep_parallel_coordinates"], "parallel coordinates"))
    doc.add(Image(figs["sweep_frontier"], "sweep frontier"))
    by = {r["name"]: r for r in rows}
    obs = []
    best = max(z, key=lambda r: (r["top1"], -r["file_bytes"]))
    obs.append(f"Most accurate run: `{best['name']}`, {best['top1']:.2f}% ({best['top1'] - best['baseline_top1']:+.2f}) "
               f"at {best['file_bytes']:,} B.")
    for a, bname, what in (("s0.9_w4_a8_e4_kd0.5_lr0.02", "s0.9_w4_a8_bn_e4_kd0.5_lr0.02", "Folding BatchNorm"),
                           ("s0.9_w4_a8_e4_kd0.5_lr0.02", "s0.9_w4_a8_e4_kd0.5_lr0.02_noz", "The zstd stage")):
        if a in by and bname in by:
            x, y = by[a], by[bname]
            obs.append(f"{what}: `{a}` {x['file_bytes']:,} B at {x['top1']:.2f}% vs `{bname}` {y['file_bytes']:,} B at "
                       f"{y['top1']:.2f}%.")
    for n4, n12 in (("s0.8_w3_a8_e4_kd0.5_lr0.02", "s0.8_w3_a8_e12_kd0.5_lr0.02"),
                    ("s0.9_w3_a8_e4_kd0.5_lr0.02", "s0.9_w3_a8_e12_kd0.5_lr0.02")):
        if n4 in by and n12 in by:
            obs.append(f"12 instead of 4 QAT epochs: `{n12}` {by[n12]['top1']:.2f}% vs {by[n4]['top1']:.2f}%.")
    doc.add(Items(obs))
    trows = []
    for r in rows:
        c = r["config"]
        trows.append([r["name"], f"{c['sparsity']:g}", c["wbits"], c["abits"], c["granularity"],
                      "yes" if c["fold_bn"] else "no", c["entropy"], c["qat_epochs"], f"{r['top1']:.2f}",
                      f"{r['top1'] - r['baseline_top1']:+.2f}", f"{r['file_bytes']:,}", f"{r['model_cr']:.1f}x",
                      f"{r['weight_cr']:.1f}x", f"{r['act_cr']:.2f}x"])
    doc.add(Table(["run", "spars.", "W", "A", "steps per", "BN folded", "entropy", "QAT ep", "top-1 %",
                   "vs teach.", "file bytes", "model CR", "weight CR", "act. CR"], trows,
                  "lrrrllllrrrrrr", widths=[44, 9, 5, 5, 11, 10.5, 11, 8, 10, 11, 13, 10, 10, 9], size=6.3,
                  caption="Every sweep run (`results/sweep/runs.jsonl`; GPU top-1; CR = compression ratio):"))


def _ratios(doc, inp):
    doc.add(Heading(1, "7. Best compression ratios"))
    rows = []
    a4 = next((r for r in inp.rows if r["abits"] == 4 and r["kept"]), None)
    items = [(s["file"], inp.evals.get(s["file"]), s["row"], s["target"]) for s in inp.shipped]
    if a4:
        path = f"results/{a4['dir']}/models/{a4['name']}.mbz"
        ev = next((r for r in records.read_jsonl(os.path.join(inp.results, a4["dir"], "cpu_eval.jsonl"))), None)
        items.append((path, ev, a4, "a4"))
    for path, ev, r, key in items:
        act = inp.acts.get(key)
        meas = (f"{act['batch1']['total_ratio']:.2f}x / {act['batch1']['peak_ratio']:.2f}x" if act else "-")
        rows.append([f"`{path}`", f"{ev['file_bytes']:,}", f"{ev['model_compression_ratio']:.2f}x",
                     f"{ev['weight_compression_ratio']:.2f}x", f"{ev['activation_bits']}",
                     f"{ev['activation_compression_ratio']:.2f}x", meas, _pct(ev["top1"])])
    doc.add(Table(["file", "bytes", "model CR", "weight CR", "A bits", "act. CR", "act. memory measured (all / peak)",
                   "top-1 % (CPU)"], rows, "lrrrrrrr", widths=[58, 15, 13, 13, 9, 11, 22, 13], size=7.5,
                  caption="Compression ratios (`mbz eval FILE --json`, `results/examples/eval.jsonl`):"))
    f = inp.files[inp.shipped[0]["file"]]
    nw = sum(1 for t in f["tensors"] if t["name"].endswith("weight"))
    doc.add(Items([
        f"Model CR: the fp32 size of the tensors the file holds ({f['fp32_bytes']:,} B for the BatchNorm-folded "
        f"MobileNet-v2: {nw} weights and {len(f['tensors']) - nw} biases) over the whole `.mbz` file. Weight CR: the "
        "fp32 bytes of the conv and linear weights over the bytes the file spends on them (their codes, positions, "
        "scales, records and checksums).",
        "Activation CR: 32 bits over the activation bits of every inter-layer tensor (the 8-bit input image counts as "
        "8 bits). Measured (`mbz activations`): every inter-layer activation bit-packed with mbz's packer during a real "
        "batch-1 inference and unpacked before the next layer; all activations together and the peak of live ones, "
        f"logits unchanged in every measurement: {all(v['batch1']['logits_unchanged'] for v in inp.acts.values())}."]))


def _final(doc, inp, figs):
    b = inp.b
    doc.add(Heading(1, "8. Final size"))
    s400 = next(s for s in inp.shipped if s["target"] == "400k")
    s200 = next(s for s in inp.shipped if s["target"] == "200k")
    doc.add(Para(f"**{s400['bytes'] / 1e6:.3f} MB** ({s400['bytes']:,} bytes), `{s400['file']}`: "
                 f"{s400['row']['cpu_top1']:.2f}% (CPU) vs the baseline's {b:.2f}%; and **{s200['bytes'] / 1e6:.3f} MB** "
                 f"({s200['bytes']:,} bytes), `{s200['file']}`: {s200['row']['cpu_top1']:.2f}%. Each is a "
                 "byte-identical copy of a recorded file (" + "; ".join(
                     f"`{s['file']}` = `results/{s['copy_of']}`: {s['identical']}" for s in inp.shipped) + ")."))
    doc.add(Image(figs["frontier"], "accuracy vs size with the targets"))
    doc.add(Para("Every recorded file of the recipes, top-1 against its size; the shaded boxes are the targets "
                 "(a file inside a box meets it). Open markers: QAT or finetune output; filled: the same model with "
                 "8-bit scales and biases."))
    trows = []
    for t in inp.index["targets"]:
        ok = [r for r in inp.rows if records.meets(r, t)]
        trows.append([t["label"], str(len(ok)), ", ".join(f"`{r['run']}`" for r in ok) or "none"])
    doc.add(Table(["target", "files", "met by"], trows, "lrl", widths=[38, 9, 133], size=7.5,
                  caption=f"Targets against the {b:.2f}% baseline (a file meets a target only on every device it was "
                          "measured on):"))
    r200 = [r for r in inp.rows if r["group"] == s200["row"]["group"] and r["stage"].endswith("reduced")]
    n_ok = sum(records.meets(r, _target(inp, "200k")) for r in r200)
    rep = [r for r in inp.rows if "replicate" in r["group"] and r["stage"].endswith("reduced")]
    sel = [f"How the 200 KB file was selected: it is the most accurate on the test set (ties broken by size) of the "
           f"{len(r200)} reduced files made from one pruned model (4 single QAT runs and 3 soups); {n_ok} of the "
           f"{len(r200)} meet the target. The test set was used to choose it, so its "
           f"{s200['row']['cpu_top1']:.2f}% is the best of {len(r200)}, not an unbiased estimate."]
    if rep:
        sel.append(f"A replicate of the whole recipe from the baseline (a second pruned model) missed the target: "
                   f"{rep[-1]['cpu_top1']:.2f}% at {rep[-1]['file_bytes']:,} B ({_diff(rep[-1]['cpu_top1'], b)}).")
    for e in inp.recipe_seeds:
        rs = e["rows"]
        sel.append(f"`{e['recipe']}` {e.get('how', 'run from scratch')} on {len(rs)} seed{'s' if len(rs) > 1 else ''} ("
                   f"{e.get('baseline_note', 'the same baseline')}; `results/{e['file']}`, each final file evaluated once on the CPU): "
                   + ", ".join(f"{r['top1_cpu']:.2f}% at {r['file_bytes']:,} B" for r in rs)
                   + f"; the target ({e['target']}) is met on {e['seeds_meeting_target']} of {len(rs)} (mean "
                   f"{e['top1_cpu']['mean']:.2f}%, min {e['top1_cpu']['min']:.2f}%).")
    r400 = [r for r in inp.rows if r["group"] == s400["row"]["group"] and r["stage"].endswith("reduced")]
    n400 = sum(records.meets(r, _target(inp, "400k")) for r in r400)
    t400 = " / ".join(f"{r['cpu_top1']:.2f}" for r in r400)
    sel.append(f"The 400 KB file is the most accurate of the {len(r400)} reduced files of its recipe ({t400}%); "
               f"{n400} of {len(r400)} meet the target.")
    sp = inp.speed
    sel.append(f"Evaluating `{sp['file']}` on all test images with `mbz eval` takes {sp['median_s']:.0f} s (median of "
               f"{len(sp['runs_s'])} runs in a fresh process, {sp['cpus']} CPU cores; `results/examples/eval_speed.json`).")
    doc.add(Items(sel))
    rows = []
    for r in sorted(inp.rows, key=lambda r: r["file_bytes"]):
        rows.append([r["run"], r["stage"], f"{r['file_bytes']:,}", _pct(r["gpu_top1"]), _pct(r["cpu_top1"]),
                     _diff(records.accuracy(r), b),
                     ", ".join(t["name"] for t in inp.index["targets"] if records.meets(r, t)) or "",
                     "yes" if r["kept"] else ""])
    doc.add(Table(["file (under results/)", "stage", "bytes", "GPU %", "CPU %", "vs baseline", "meets", "kept"], rows,
                  "llrrrrll", widths=[66, 30, 14, 10, 10, 13, 12, 8], size=6.5,
                  caption="Every recorded file of the recipes, by size (\"kept\": the `.mbz` is committed; the others "
                          "are described by their rows):"))


def _networks(doc, inp, figs):
    doc.add(Heading(1, "9. ResNet-18 and VGG-11-BN"))
    doc.add(Para("The same pipeline on two more CNNs with CIFAR stems, each recipe run from scratch once per seed "
                 "(its own baseline included). Every choice during a run is made on 5,000 training images held out; "
                 "each final file and its baseline are then evaluated once on the test set (GPU)."))
    rows = []
    for n in inp.nets:
        s = n["seeds"]
        for r in s["rows"]:
            rows.append([n["name"], str(r["seed"]), _pct(r["baseline_test"]), f"{r['file_bytes']:,}", _pct(r["top1_test"]),
                         f"{-r['drop_test']:+.2f}", f"{r['ratio_vs_fp32']:.1f}x",
                         "yes" if r["drop_test"] <= n["max_drop"] and r["ratio_vs_fp32"] >= n["min_ratio"] else "no"])
    doc.add(Table(["network", "seed", "baseline %", "bytes", "top-1 %", "vs own baseline", "x smaller", "target met"],
                  rows, "lrrrrrrl", widths=[24, 10, 20, 20, 16, 26, 18, 18], size=7.5,
                  caption="Per seed (`results/<network>/seeds.json`, `python tools/seed_table.py`); \"x smaller\": "
                          "bytes of `torch.save` of the fp32 state_dict over the `.mbz` file's bytes; target: at least "
                          "50x smaller within 1.0 point of the run's own baseline:"))
    items = []
    for n in inp.nets:
        s = n["seeds"]
        d = s["drop_test"]
        if s["seeds"] == 1:
            line = (f"{n['name']} (`{n['recipe']}`: {n['method']}): 1 seed, drop {d['mean']:.2f}, file "
                    f"{s['file_bytes']['min']:,} B.")
        else:
            line = (f"{n['name']} (`{n['recipe']}`: {n['method']}): {s['seeds']} seeds, drop {d['mean']:.2f} on average "
                    f"(min {d['min']:.2f}, max {d['max']:.2f}), files {s['file_bytes']['min']:,}-{s['file_bytes']['max']:,} B.")
        if n["cpu_eval"]:
            bits = n["cpu_eval"].get("activation_bits", 32)
            acts = "fp32" if bits == 32 else f"{bits}-bit activations as the file records"
            line += (f" Seed 0's file on the CPU ({acts}, `mbz eval`): {n['cpu_eval']['top1']:.2f}% "
                     f"(GPU: {s['rows'][0]['top1_test']:.2f}%).")
        items.append(line)
    doc.add(Items(items))
    doc.add(Image(figs["networks_frontier"], "top-1 vs file size, three networks"))
    rows = []
    for n in inp.nets:
        for r in (n["structured"] or {}).get("rows", []):
            lat = r["latency_median"]
            ms = lambda k: (f"{lat[k]:.2f}" if lat[k] < 10 else f"{lat[k]:.1f}") if k in lat else "-"
            rows.append([n["name"], {"dense": "dense baseline", "structured": "50% channels removed, fine-tuned",
                                     "unstructured": "95% sparse, 4-bit (seed 0)"}.get(r["kind"], r["kind"]),
                         f"{r['parameters'] / 1e6:.2f} M", f"{r['file_bytes']:,}", _pct(r["top1_test"]),
                         f"{-r['drop_test']:+.2f}" if r["kind"] != "dense" else "-", f"{ms('cpu_b1_ms')} / {ms('cpu_b256_ms')}",
                         f"{ms('cuda_b1_ms')} / {ms('cuda_b256_ms')}"])
    if rows:
        doc.add(Para("Structured pruning makes the layers thinner instead of holding zeros: it buys latency, not bytes. "
                     "One point per network (seed 0; half of the output channels of every channel group found in the "
                     "module graph removed, ranked by the BN-folded filter norm, then 40 epochs of fine-tuning), beside "
                     "the dense baseline and the 95%-sparse 4-bit file. Latency: `mbz bench` (median of 20 warm runs, "
                     "PyTorch float32 model; zeros are multiplied like any other weight)."))
        doc.add(Table(["network", "model", "parameters", "bytes", "top-1 %", "vs baseline", "CPU b1 / b256 ms",
                       "GPU b1 / b256 ms"], rows, "llrrrrrr", widths=[20, 44, 18, 20, 14, 18, 26, 24], size=7,
                      caption="`results/<network>/structured/summary.json` (`python tools/structured_table.py`); "
                              "lossless fp32 files for the dense and thinned models:"))


def _reproduce(doc, inp):
    doc.add(Heading(1, "10. Reproduce"))
    doc.add(Code("\n".join([
        'pip install -c constraints.txt -e ".[test]"                 # the exact versions of this report',
        "mbz data cifar10-jpeg --quality 75 ROOT -o DATA --download   # CIFAR-10 (JPEG q75 export)",
        "export MBZ_DATA=DATA",
        f"mbz compress --recipe {inp.base['recipe']} --out OUT/baseline     # GPU, resumable",
        *[f"mbz compress --recipe {r} --out OUT/{os.path.splitext(os.path.basename(r))[0]}"
          for r in dict.fromkeys(e["recipe"] for e in inp.index["runs"])],
        *[f"mbz compress --recipe {n['recipe']} --out OUT/{n['dir']}      # per seed: seed and baseline.train.seed"
          for n in inp.nets],
        f"mbz compress --recipe {inp.sweep['recipe']} --out OUT/sweep",
        "mbz sweep replay OUT/sweep                                    # wandb runs: offline unless logged in",
        "mbz eval examples/mobilenetv2_cifar10.mbz                     # CPU: top-1 and sizes of a shipped file",
        "mbz report --force                                            # this file, REPORT.pdf and the charts"])))
    devices = sorted({r["device"] for r in inp.rows if r["device"] not in (None, "cpu")} | {r["device"] for r in inp.sweep["rows"]})
    doc.add(Items([
        f"GPU runs: {', '.join(devices)}; the baseline on one {inp.base['device']}; training with torch "
        f"{inp.base['torch']}.",
        "CPU side (packing, reduction, evaluation, this report): " + ", ".join(inp.pins) + ".",
        f"Seeds: the baseline's training seed {inp.base['config']['seed']} (Python, NumPy, torch, CUDA). GPU kernels "
        "are not bit-deterministic, so reruns differ by the spread measured in section 3.",
        "Every figure with the command that reproduces it: `docs/results.md`; what each results folder holds: "
        "`results/README.md`."]))


def _appendix(doc, inp):
    s = inp.shipped[0]
    f = inp.files[s["file"]]
    doc.add(Heading(1, f"Appendix: the tensors of {s['file']}"))
    rows = []
    for t in f["tensors"]:
        rows.append([t["name"], "x".join(map(str, t["shape"])), t["encoding"], t["bits"], t["layout"],
                     f"{100 * t['sparsity']:.1f}", f"{t['bytes']['values']:,}", f"{t['bytes']['indices']:,}",
                     f"{t['bytes']['scales']:,}", f"{t['total_bytes']:,}"])
    doc.add(Table(["tensor", "shape", "encoding", "bits", "layout", "zeros %", "values", "indices", "scales", "total B"],
                  rows, "lllrlrrrrr", widths=[42, 18, 14, 8, 14, 11, 12, 12, 11, 12], size=6.5,
                  caption=f"`mbz inspect {s['file']}`: one row per tensor (bytes of its values, indices and scales; "
                          "the total adds its record and checksum):"))
