"""Analysis verbs: sensitivity (per-layer pruning scan and caps), mixed-precision (per-layer weight bits for a
byte budget), prune-channels (structured pruning), activations (activation memory of a packed model)."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys

from .common import add_data, add_force, device_of, input_file, output_dir, output_file, refuse_inference_only, show_progress


def _command(a, verb: str) -> str:
    argv = getattr(a, "argv", None)
    return f"mbz {shlex.join(argv)}" if argv else f"mbz {verb}"


def _floats(text: str, what: str, lo: float, hi: float, hi_open: bool) -> list[float]:
    from ..errors import UsageError
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated numbers") from None
    bad = [v for v in vals if not (lo < v <= hi if not hi_open else lo <= v < hi)]
    if not vals or bad:
        rng = f"({lo:g}, {hi:g}]" if not hi_open else f"[{lo:g}, {hi:g})"
        raise UsageError(f"{what} {text!r}: every value must lie in {rng}")
    return vals


def _outputs(folder: str, names, inputs, force: bool) -> dict:
    """{name: path} in `folder` (made if missing, its parent must exist), refused before any work
    when one exists without --force or is an input."""
    output_dir(folder, create=False)
    paths = {n: os.path.join(folder, n) for n in names}
    if os.path.isdir(folder):
        for p in paths.values():
            output_file(p, inputs=inputs, force=force)
    return paths


def _bn_model(path: str):
    """(state_dict, model) of a MobileNet-v2 (CIFAR) checkpoint with BatchNorm (.pt / .pth / lossless .mbz)."""
    from ..checkpoint import read_checkpoint
    from ..errors import CheckpointError
    from ..models import arch_of, build_model
    sd = read_checkpoint(path)
    model = build_model(arch_of(sd))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: not a MobileNet-v2 (CIFAR) state_dict with BatchNorm "
                              f"({' '.join(x.strip() for x in first[1:3]) or first[0]}"[:300]
                              + "); another network needs a .mbz with 'arch' metadata (mbz pack --arch NAME)") from None
    return sd, model.eval()


def _file_arch(path: str) -> dict | None:
    """The 'arch' metadata of a .mbz file (None for another file or a .mbz without one)."""
    from ..checkpoint import mbz_metadata
    arch = (mbz_metadata(path) or {}).get("arch")
    return arch if isinstance(arch, dict) else None


def _scan_model(path: str):
    """The model to scan: a .mbz with 'arch' metadata through mbz.load_model, otherwise a MobileNet-v2 checkpoint."""
    from ..reader import MbzReader
    from ..spec import MAGIC
    with open(path, "rb") as f:
        is_mbz = f.read(len(MAGIC)) == MAGIC
    if is_mbz:
        with MbzReader(path) as r:
            has_arch = bool(r.metadata.get("arch"))
        if has_arch:
            from ..models import load_model
            return load_model(path)
    return _bn_model(path)[1]


# --------------------------------------------------------------------------- sensitivity
def cmd_sensitivity(a) -> int:
    from ..errors import UsageError
    from ..pipeline.sensitivity import caps_file, read_scan
    if a.tolerance < 0:
        raise UsageError(f"--tolerance {a.tolerance}: must be >= 0 (top-1 points)")
    levels = _floats(a.levels, "--levels", 0, 1, hi_open=False)
    if a.recap:
        scan_path = input_file(os.path.join(a.out, "sensitivity.jsonl"), "scan of an earlier `mbz sensitivity`")
        caps_path = output_file(os.path.join(a.out, "caps.json"), inputs=[scan_path], force=a.force)
        head, rows = read_scan(scan_path)
        _write_caps(caps_path, caps_file(head, rows, a.tolerance), head, rows)
        return 0
    if not a.checkpoint:
        raise UsageError("a CHECKPOINT is needed (or --recap to recompute caps.json from an earlier scan)")
    if a.images < 1:
        raise UsageError(f"--images {a.images}: must be >= 1")
    input_file(a.checkpoint, "checkpoint")
    paths = _outputs(a.out, ("sensitivity.jsonl", "sensitivity.png", "caps.json"), [a.checkpoint], a.force)
    import time

    from ..container import atomic_write
    from ..pipeline.data import check_dataset, evaluate, load_dataset
    from ..pipeline.sensitivity import plot, scan
    check_dataset(a.data, "train")  # before the model is built
    model = _scan_model(a.checkpoint)
    ds = load_dataset(a.data, "train").subset(a.images, seed=1)
    output_dir(a.out)
    t0 = time.time()
    base = evaluate(model, ds)["top1"]
    progress = None
    if show_progress(a.quiet):
        from tqdm import tqdm
        progress = lambda items: tqdm(items, desc="scan", unit="eval")  # noqa: E731
    elif not a.quiet:
        def progress(items):
            for k, it in enumerate(items):
                if k % max(1, len(items) // 10) == 0:
                    print(f"scan {k}/{len(items)} (layer, level) pairs", file=sys.stderr, flush=True)
                yield it
    rows = scan(model, ds, levels, progress=progress)
    head = {"command": _command(a, "sensitivity"), "baseline_top1": base, "images": len(ds), "data": ds.source,
            "seconds": round(time.time() - t0, 1)}
    atomic_write(paths["sensitivity.jsonl"], [(json.dumps(x) + "\n").encode() for x in [head, *rows]])
    plot(rows, base, paths["sensitivity.png"])
    _write_caps(paths["caps.json"], caps_file(head, rows, a.tolerance), head, rows)
    return 0


def _write_caps(path: str, caps: dict, head: dict, rows: list) -> None:
    from ..container import atomic_write
    atomic_write(path, [json.dumps(caps, indent=1, sort_keys=True).encode()])
    print(f"baseline top-1 {head['baseline_top1']:.2f} on {head.get('images', '?')} training images; "
          f"{len(caps['caps'])} of {len(set(r['name'] for r in rows))} layers capped (tolerance "
          f"{caps['tolerance']} points) -> {path}", flush=True)


# --------------------------------------------------------------------------- mixed-precision
def cmd_mixed_precision(a) -> int:
    from ..errors import UsageError
    def numbers(opt: str, text, kind):
        try:
            return [kind(x) for x in text.split(",")] if text else []
        except ValueError:
            raise UsageError(f"{opt} {text!r}: expected comma-separated {'integers' if kind is int else 'numbers'}, "
                             f"e.g. {'4,5,6' if opt == '--bits' else '3.5' if kind is float else '150000'}") from None
    bits = sorted(set(numbers("--bits", a.bits, int)))
    like = numbers("--like-bits", a.like_bits, float)
    if not bits or any(not (2 <= b <= 8) for b in bits):
        raise UsageError(f"--bits {a.bits}: widths must lie in 2..8")
    budgets = []  # (label, uniform width the bytes are added to or None, bytes)
    for tok in (a.budget.split(",") if a.budget else []):
        m = re.fullmatch(r"(?:(\d+)bit\+)?(\d+)", tok.strip())
        if m is None:
            raise UsageError(f"--budget {a.budget!r}: expected comma-separated byte counts or WIDTHbit+BYTES, "
                             f"e.g. 150000 or 4bit+16000")
        base = int(m.group(1)) if m.group(1) else None
        if base is not None and base not in bits:
            raise UsageError(f"--budget {tok}: {base} bits is not among the --bits scanned ({a.bits})")
        if base is None and int(m.group(2)) < 1:
            raise UsageError(f"--budget {a.budget}: every budget must be >= 1 byte")
        budgets.append((tok.strip(), base, int(m.group(2))))
    if any(not (min(bits) <= x <= max(bits)) for x in like):
        raise UsageError(f"--like-bits {a.like_bits}: every value must lie in {min(bits)}..{max(bits)} "
                         f"(the --bits scanned)")
    if a.val < 1:
        raise UsageError(f"--val {a.val}: must be >= 1")
    if not 1 <= a.images <= a.val:
        raise UsageError(f"--images {a.images}: must lie in 1..{a.val} (--val: the validation images it is drawn from)")
    input_file(a.checkpoint, "checkpoint")
    scan_path = os.path.join(a.out, "scan.jsonl")
    names = [f"plan_{label}.json" for label, _, _ in budgets] + [f"plan_w{x:g}.json" for x in like]
    if a.ptq:
        names += [n.replace(".json", ".mbz") for n in names]
    paths = _outputs(a.out, names, [a.checkpoint], a.force)
    import time

    from ..container import atomic_write
    from ..pipeline import mixed
    from ..pipeline.baseline import load_splits
    dev = device_of(a.device)
    sd, arch = mixed.model_of(a.checkpoint)
    from .. import api
    from ..spec import M_INPUT
    in_dtypes = api.input_dtypes(sd)
    in_record = {"dtypes": in_dtypes, "bytes": sum(in_dtypes.values())}
    model = mixed.folded_model(sd, arch)
    output_dir(a.out)
    _, val = load_splits(a.data, 0, a.val)
    settings = mixed.scan_settings(a.checkpoint, val.source, a.val, a.images, bits)
    head = None
    if os.path.exists(scan_path):
        try:
            head, rows = mixed.read_scan(scan_path)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if head["settings"] != settings:
            if not a.force:
                raise UsageError(f"{scan_path}: a scan with other settings; pass --force to scan again")
            head = None
        else:
            print(f"scan: {len(rows)} rows from {scan_path}", flush=True)
    if head is None:
        t0 = time.time()
        progress = None
        if not a.quiet:
            def progress(items):
                for k, it in enumerate(items):
                    if k % max(1, len(items) // 20) == 0:
                        print(f"scan {k}/{len(items)} (layer, width) pairs", file=sys.stderr, flush=True)
                    yield it
        base, rows = mixed.scan_bits(model.to(dev), val.subset(a.images, seed=1), bits, progress=progress)
        model.cpu()
        head = {"command": _command(a, "mixed-precision"), "settings": settings, "base": base,
                "seconds": round(time.time() - t0, 1)}
        mixed.write_scan(scan_path, head, rows)
    base_loss = head["base"]["loss"]
    numel = {r["name"]: r["numel"] for r in rows}
    ub = {b: mixed.plan_bytes(rows, mixed.uniform_plan(rows, b)) for b in bits}
    import math
    targets = [(f"plan_{label}", n + (ub[base] if base else 0)) for label, base, n in budgets]
    for x in like:
        lo, hi = [max(b for b in bits if b <= x), min(b for b in bits if b >= x)]
        f = 0.0 if hi == lo else (x - lo) / (hi - lo)
        targets.append((f"plan_w{x:g}", int(math.floor(ub[lo] + f * (ub[hi] - ub[lo])))))
    if not targets:
        print(f"scan only: no --budget or --like-bits, so no plan ({scan_path})", flush=True)
    for name, budget in targets:
        try:
            plan = mixed.allocate(rows, base_loss, budget)
        except ValueError as e:
            raise UsageError(f"{name}: {e}") from None
        doc = {"budget_bytes": budget, "scanned_bytes": mixed.plan_bytes(rows, plan),
               "predicted_dloss": mixed.predicted_dloss(rows, base_loss, plan),
               "mean_bits": mixed.mean_bits(plan, numel), "scan": settings, "layer_bits": plan}
        atomic_write(paths[f"{name}.json"], [json.dumps(doc, indent=1).encode()])
        line = (f"{name}: {doc['scanned_bytes']:,} of {budget:,} B of weights, mean {doc['mean_bits']:.2f} bits, "
                f"predicted loss change {doc['predicted_dloss']:+.4f}")
        if a.ptq:
            import mbz
            meta = mixed.ptq_metadata(arch, plan, 32, {"mixed_precision": {k: v for k, v in doc.items()
                                                                          if k != "layer_bits"}})
            meta[M_INPUT] = in_record  # the ratios are of the checkpoint given, not of its folded copy
            rep = mbz.save(mixed.ptq_state_dict(model, plan), paths[f"{name}.mbz"], metadata=meta)
            line += f" -> {paths[f'{name}.mbz']} ({rep.file_bytes:,} B)"
        print(line, flush=True)
    return 0


# --------------------------------------------------------------------------- prune-channels
def cmd_prune_channels(a) -> int:
    from ..errors import UsageError
    from ..pipeline.channels import output_names, prune_ratios
    ratios = _floats(a.ratios, "--ratios", 0, 1, hi_open=True)
    if a.multiple < 1 or a.calib < 1 or a.test < 0:
        raise UsageError("--multiple and --calib must be >= 1, --test >= 0")
    input_file(a.checkpoint, "checkpoint")
    refuse_inference_only(a.checkpoint, "prune-channels")
    paths = _outputs(a.out, output_names(ratios), [a.checkpoint], a.force)
    from ..container import atomic_write
    from ..pipeline.data import load_dataset
    arch = _file_arch(a.checkpoint)
    if arch is not None and arch.get("name") != "mobilenet_v2_cifar":
        from .. import load
        from ..pipeline.channels import prune_ratios_graph
        sd = load(a.checkpoint)
        te = load_dataset(a.data, "test")
        if a.test:
            te = te.subset(a.test)
        output_dir(a.out)
        try:
            rows = prune_ratios_graph(sd, arch, ratios, te, a.out, multiple=a.multiple, source=a.checkpoint,
                                      log=lambda s: print(s, flush=True))
        except ValueError as e:
            raise UsageError(f"{a.checkpoint}: {e}") from None
    else:
        sd, _ = _bn_model(a.checkpoint)
        tr, te = load_dataset(a.data, "train"), load_dataset(a.data, "test")
        if a.test:
            te = te.subset(a.test)
        output_dir(a.out)
        rows = prune_ratios(sd, ratios, tr, te, a.out, calib=a.calib, multiple=a.multiple, source=a.checkpoint,
                            log=lambda s: print(s, flush=True))
    lines = [json.dumps(r, sort_keys=True) for r in rows] + [json.dumps({"command": _command(a, "prune-channels")})]
    atomic_write(paths["channels.jsonl"], [("\n".join(lines) + "\n").encode()])
    return 0


# --------------------------------------------------------------------------- activations
def cmd_activations(a) -> int:
    from ..errors import UsageError
    input_file(a.file, ".mbz file")
    if a.batch < 1:
        raise UsageError(f"--batch {a.batch}: must be >= 1")
    paths = _outputs(a.out, ("activations.json", "activations.md"), [a.file], a.force) if a.out else None
    from .. import load_model
    from ..container import atomic_write
    from ..pipeline.activations import activation_report, markdown
    from ..pipeline.latency import input_size
    model = load_model(a.file)
    cmd = f"mbz activations {a.file}" + (f" --out {a.out}" if a.out else "") + f" --batch {a.batch}"
    res = {"file": a.file, "command": cmd, **activation_report(model, a.batch, input_size(a.file))}
    lines = markdown(res, a.batch)
    if paths:
        output_dir(a.out)
        atomic_write(paths["activations.json"], [json.dumps(res, indent=1).encode()])
        atomic_write(paths["activations.md"], [("\n".join(lines) + "\n").encode()])
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print("\n".join(lines if a.all else lines[:9]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-layer pruning sensitivity scan and the sparsity caps it implies",
                       description="Prune each conv / linear weight alone (magnitude, no fine-tuning) at every "
                                   "--levels sparsity and measure top-1 on --images TRAINING images (never the test "
                                   "set: the caps are a design choice). Writes OUT/sensitivity.jsonl (a header line, "
                                   "then one row per layer and level), OUT/sensitivity.png (top-1 drop per layer and "
                                   "level) and OUT/caps.json ({layer: the highest level whose drop stays within "
                                   "--tolerance points}, only for layers that cannot take the highest level). "
                                   "The drops are before any fine-tuning, which recovers much of them: the "
                                   "tolerance flags the layers that collapse. Global pruning with caps still meets "
                                   "its target sparsity (`mbz compress` and `mbz sweep` read caps.json). "
                                   "`--recap --tolerance T --out OUT --force` recomputes caps.json from an earlier "
                                   "scan without rescanning. A full MobileNet-v2 scan on 1000 images takes tens of "
                                   "minutes on 2 CPU cores.")
    p.add_argument("checkpoint", nargs="?", help="fp32 model: a MobileNet-v2 state_dict (.pt) or a .mbz file")
    p.add_argument("--out", required=True, help="output folder (made if missing; its parent must exist)")
    p.add_argument("--recap", action="store_true", help="only recompute OUT/caps.json from OUT/sensitivity.jsonl")
    add_data(p)
    p.add_argument("--images", type=int, default=1000, help="training images to evaluate on, no augmentation "
                                                            "(a random subset, seed 1; default 1000)")
    p.add_argument("--levels", default="0.5,0.7,0.8,0.9,0.95", help="sparsities in (0, 1], comma-separated")
    p.add_argument("--tolerance", type=float, default=5.0,
                   help="top-1 drop (points, before fine-tuning) a layer may cause at its cap (default 5)")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_sensitivity)

    p = sub.add_parser("mixed-precision", help="per-layer weight bits from a sensitivity scan, for a byte budget",
                       description="Fold BatchNorm, then round each conv / linear weight alone to each --bits width "
                                   "(per output channel, the step of least squared error, fp16: what QAT starts "
                                   "from) and measure the cross-entropy on --images images of the validation split "
                                   "(the last --val training images of the fixed permutation, as a recipe's "
                                   "data.val; never the test set) and the real packed bytes of that layer: "
                                   "OUT/scan.jsonl (reused when it exists with the same settings). Then, for each "
                                   "--budget (bytes of the quantized weights) or --like-bits (the bytes the scan "
                                   "gives every layer at that width; 3.5: half-way between 3 and 4), the plan of "
                                   "least summed loss increase that fits (a Lagrangian over each layer's (bytes, "
                                   "loss) points, then the remaining bytes spent greedily): OUT/plan_*.json "
                                   "({'layer_bits': {weight name: bits}, ...}), which a recipe's qat[].layer_bits "
                                   "takes. --ptq also writes OUT/plan_*.mbz, the post-training-quantized model "
                                   "(`mbz eval` it; `mbz finetune` trains it on with each layer's width). A "
                                   "MobileNet-v2 scan at 6 widths on 512 images took 48 minutes on one shared "
                                   "CPU core; at 3 widths on 1,024 images with --device cuda, 20 s on one H100 "
                                   "(three scans at once).")
    p.add_argument("checkpoint", help="fp32 model with BatchNorm: a MobileNet-v2 state_dict (.pt) or a .mbz with 'arch'")
    p.add_argument("--out", required=True, help="output folder (made if missing; its parent must exist)")
    add_data(p)
    p.add_argument("--val", type=int, default=5000, help="training images held out as the validation split (5000)")
    p.add_argument("--images", type=int, default=512, help="validation images the scan evaluates on (512)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="widths scanned, comma-separated, in 2..8")
    p.add_argument("--budget", help="bytes of the quantized weights, comma-separated: one plan each; "
                                    "WIDTHbit+BYTES: the scan's bytes at that uniform width plus BYTES (4bit+16000)")
    p.add_argument("--like-bits", help="plans at the bytes of these uniform widths, e.g. 3,3.5,4")
    p.add_argument("--ptq", action="store_true", help="also write each plan's PTQ model as OUT/plan_*.mbz")
    p.add_argument("--device", default="auto", help="where the scan runs: auto (CUDA when present), cpu or cuda[:N]")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_mixed_precision)

    p = sub.add_parser("prune-channels", help="structured pruning: remove a share of every block's hidden channels",
                       description="MobileNet-v2: remove a share of the hidden channels of every inverted-residual block of a "
                                   "MobileNet-v2 checkpoint with BatchNorm (the layers get thinner instead of "
                                   "holding zeros). Channels are ranked per block by mean|activation| x the norm "
                                   "of their projection column on --calib training images; a removed channel's "
                                   "mean is folded into the projection BN (bias compensation). For each ratio it "
                                   "writes OUT/thin_r{ratio}.mbz (lossless; mbz.load_model rebuilds the thinner "
                                   "blocks from its 'arch' metadata), OUT/thin_r{ratio}.layers.json (channels and "
                                   "parameters per block) and a row of OUT/channels.jsonl: parameters, file bytes "
                                   "and top-1 on the test split without fine-tuning, with and without bias "
                                   "compensation. Any other network of the registry (a .mbz with 'arch' metadata, e.g. "
                                   "resnet18_cifar, vgg11_bn_cifar): the channel groups are found in the module graph "
                                   "(a conv whose output reaches one other conv through BN, activations, pooling and "
                                   "depthwise convs only), ranked by the norm of the BN-folded filter (no data), and "
                                   "thinned alike; OUT/thin_r{ratio}.mbz records the kept channels in its 'arch'. "
                                   "Recover the accuracy with `mbz train --init OUT/thin_r0.25.mbz`.")
    p.add_argument("checkpoint", help="MobileNet-v2 state_dict with BatchNorm (.pt or .mbz), or a .mbz of another "
                                      "registry network with its 'arch' metadata (the thinned model is stored "
                                      "losslessly: from a lossy .mbz it keeps that file's values)")
    p.add_argument("--out", required=True, help="output folder (made if missing; its parent must exist)")
    p.add_argument("--ratios", default="0.125,0.25,0.5", help="shares of hidden channels to remove, in [0, 1), "
                                                              "comma-separated (default 0.125,0.25,0.5)")
    p.add_argument("--multiple", type=int, default=8, help="kept channels per block are a multiple of this (default 8)")
    add_data(p)
    p.add_argument("--calib", type=int, default=2048, help="training images that rank the channels (default 2048)")
    p.add_argument("--test", type=int, default=0, help="evaluate on a random subset of this many test images "
                                                       "(0: all, the default)")
    add_force(p)
    p.set_defaults(fn=cmd_prune_channels)

    p = sub.add_parser("activations", help="activation memory of a packed model (per layer, total, peak; bytes)",
                       description="Run one inference of the model of a .mbz file in which every inter-layer "
                                   "activation is converted to integer codes, bit-packed with mbz's packer and "
                                   "unpacked before the next layer reads it; report per layer and in total the "
                                   "fp32 bytes and the packed bytes, and the peak live activation memory (bytes), "
                                   "at batch 1 and --batch, on random inputs of the file's input size. Also checks "
                                   "that holding activations as packed bytes changes no logit. With --out, writes "
                                   "OUT/activations.json and OUT/activations.md.")
    p.add_argument("file", help=".mbz file with 'arch' metadata")
    p.add_argument("--out", help="output folder for activations.json and activations.md (made if missing)")
    p.add_argument("--batch", type=int, default=32, help="the second batch size measured (default 32)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--all", action="store_true", help="print the per-layer table too")
    add_force(p)
    p.set_defaults(fn=cmd_activations)
