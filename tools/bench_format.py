#!/usr/bin/env python
"""Figures of the .mbz format: sizes, accuracy equality, entropy bound, pack and load speed.

    MBZ_DATA=../shared/data python tools/bench_format.py --out results/format
    python tools/bench_format.py --out results/format --speed-only --runs 15     # speed figures only, merged
    python tools/bench_format.py --out results/format --load-breakdown --runs 7  # torch.load vs mbz.load

Writes OUT/figures.json and OUT/figures.md (OUT/load_breakdown.json with --load-breakdown).  The
reference checkpoint is --reference (default: reference_mnv2_cifar10_fp32.pt in $MBZ_DATA); top-1
is on the test split of --data (default: the CIFAR-10 JPEG q75 export in $MBZ_DATA).  Uses the
installed mbz package (pip install -e ".[test]").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import mbz
from mbz.checkpoint import read_checkpoint
from mbz.cli import main as mbz_cli
from mbz.codecs.raw import bits_equal
from mbz.models import mobilenet_v2_cifar
from mbz.pipeline.prune import apply_masks, global_magnitude_masks
from mbz.quantize import QuantPolicy, quantize_state_dict, quantize_tensor

REFERENCE = "reference_mnv2_cifar10_fp32.pt"


def top1(sd, test):
    from mbz.pipeline.data import evaluate
    m = mobilenet_v2_cifar()
    m.load_state_dict(sd)
    return evaluate(m, test, device=torch.device("cpu"))["top1"]


def entropy_bits(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    _, c = np.unique(values, return_counts=True)
    p = c / c.sum()
    return float(-(c * np.log2(p)).sum())


def binary_entropy_bits(n: int, k: int) -> float:
    if k == 0 or k == n:
        return 0.0
    p = k / n
    return n * (-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))


def bound_bytes(sd: dict, policy: QuantPolicy) -> dict:
    """The entropy bound: per quantized tensor H0(nonzero codes) + H(zero mask) + 4 B/scale; zstd-19 of the rest."""
    import zstandard
    q_bits, scale_bytes, raw = 0.0, 0, []
    for name, t in sd.items():
        if policy.applies(name, t):
            g = quantize_tensor(t, policy)
            nz = g.k[g.k != 0]
            q_bits += entropy_bits(nz) + binary_entropy_bits(g.k.size, nz.size)
            scale_bytes += 4 * g.scales.size
        else:
            raw.append(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    raw_z = len(zstandard.ZstdCompressor(level=19).compress(b"".join(raw)))
    return {"codes_and_mask_bytes": q_bits / 8, "scale_bytes": scale_bytes, "raw_zstd19_bytes": raw_z,
            "bound_bytes": q_bits / 8 + scale_bytes + raw_z}


def pack_cli(ckpt, out, *extra):
    from mbz.models import registry
    registry._skeleton_shapes.cache_clear()  # each pack matches the architectures anew, as a fresh `mbz pack` does
    t = time.perf_counter()
    rc = mbz_cli(["pack", ckpt, "-o", out, "-q", "--force", *extra])
    assert rc == 0
    return time.perf_counter() - t


def speed_checkpoint(tmp: str):
    """(state_dict, .pt path): resnet50, random init, 8-bit per channel, 50% sparse."""
    import torchvision
    torch.manual_seed(0)
    sd = torchvision.models.resnet50().state_dict()
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if v.dim() >= 2:
            v[torch.rand(v.shape, generator=g) < 0.5] = 0
    sd = quantize_state_dict(sd, QuantPolicy(8))
    pt = os.path.join(tmp, "r50.pt")
    torch.save(sd, pt)
    return sd, pt


def alternating_loads(pt: str, mbz_path: str, runs: int) -> dict:
    """Medians (s) of torch.load and of mbz.load on 1 and 2 decoding threads, alternating."""
    t, w1, w2 = [], [], []
    for _ in range(runs):
        for dst, fn in ((t, lambda: torch.load(pt, weights_only=True)),
                        (w1, lambda: mbz.open(mbz_path).decode_all(workers=1)),
                        (w2, lambda: mbz.open(mbz_path).decode_all(workers=2))):
            t0 = time.perf_counter()
            fn()
            dst.append(time.perf_counter() - t0)
    return {k: round(statistics.median(v), 4) for k, v in (("torch_load", t), ("mbz_1_thread", w1), ("mbz_2_threads", w2))}


def load_breakdown(runs: int, tmp: str) -> dict:
    """Why mbz.load is slower than torch.load here: thread scaling, the allocator, and the DENSE alternative."""
    import subprocess
    import zstandard
    from mbz.detect import detect_grid
    _, pt = speed_checkpoint(tmp)
    out = os.path.join(tmp, "r50.mbz")
    pack_cli(pt, out)
    res = {"default_malloc": alternating_loads(pt, out, runs)}
    # the same in a process whose glibc keeps freed memory (no fresh pages to fault in)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1000000000", MALLOC_TRIM_THRESHOLD_="1000000000")
    code = (f"import json, runpy; b = runpy.run_path({os.path.abspath(__file__)!r}); "
            f"print(json.dumps(b['alternating_loads']({pt!r}, {out!r}, {runs})))")
    res["malloc_keeps_memory"] = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                                           capture_output=True, text=True).stdout)
    # the largest tensor: its stored sections vs its 8-bit codes stored DENSE under zstd
    with mbz.open(out) as r:
        rec = max(r.layout.records, key=lambda x: sum(s.decoded for s in x.sections))
        codes = detect_grid(r[rec.name]).k.astype(np.int8).tobytes()
        res["largest_tensor"] = {"name": rec.name, "stored_bytes": sum(s.stored for s in rec.sections),
                                 "layout": rec.params.get("sp"),
                                 "dense_zstd3_bytes": len(zstandard.ZstdCompressor(level=3).compress(codes)),
                                 "dense_zstd19_bytes": len(zstandard.ZstdCompressor(level=19).compress(codes))}
    return res


def _malloc_trim():
    """gc.collect() and, with glibc, malloc_trim(0): the freed heap handed back before a timed load."""
    import ctypes
    import gc
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        libc = None

    def trim():
        gc.collect()
        if libc is not None:
            libc.malloc_trim(0)
    return trim


def speed(runs: int, tmp: str) -> dict:
    """Pack and load speed on a 25M-parameter checkpoint: resnet50, random init, 8-bit per channel, 50% sparse."""
    sd, pt = speed_checkpoint(tmp)
    out = os.path.join(tmp, "r50.mbz")
    pack_times = [pack_cli(pt, out) for _ in range(3)]
    fp32_mb = sum(t.numel() * t.element_size() for t in sd.values()) / 1e6
    # the same file without the default profile's codes rule (encoder.INT_KEEP_SAVING: zstd kept on codes of
    # large models only where it saves 1/8), i.e. zstd wherever it is smaller, as before that rule
    from mbz import encoder
    off = os.path.join(tmp, "r50_zstd_everywhere.mbz")
    large, encoder.LARGE_MODEL = encoder.LARGE_MODEL, 1 << 62
    try:
        pack_cli(pt, off)
    finally:
        encoder.LARGE_MODEL = large
    tl, ml, ol = [], [], []
    for _ in range(runs):  # alternating, page cache warm for all
        t = time.perf_counter(); torch.load(pt, weights_only=True); tl.append(time.perf_counter() - t)
        t = time.perf_counter(); mbz.load(out); ml.append(time.perf_counter() - t)
        t = time.perf_counter(); mbz.load(off); ol.append(time.perf_counter() - t)
    # the same two loads, each started from a trimmed heap (gc + glibc malloc_trim): in the loop above each
    # load inherits the freed memory of the one before, so which of them pays the page faults of its
    # 102 MB of output depends on the order; here both do
    tt, mt = [], []
    trim = _malloc_trim()
    for _ in range(runs):
        trim(); t = time.perf_counter(); a = torch.load(pt, weights_only=True); tt.append(time.perf_counter() - t); del a
        trim(); t = time.perf_counter(); b = mbz.load(out); mt.append(time.perf_counter() - t); del b
    return {
        "load_ratio_trimmed_heap": round(statistics.median(mt) / statistics.median(tt), 3),
        "torch_load_trimmed_s_median": round(statistics.median(tt), 4),
        "mbz_load_trimmed_s_median": round(statistics.median(mt), 4),
        "params": sum(t.numel() for t in sd.values()), "fp32_MB": round(fp32_mb, 1),
        "pt_bytes": os.path.getsize(pt), "mbz_bytes": os.path.getsize(out),
        "mbz_bytes_zstd_on_all_codes": os.path.getsize(off),
        "load_ratio_zstd_on_all_codes": round(statistics.median(ol) / statistics.median(tl), 3),
        "mbz_load_zstd_on_all_codes_runs": [round(x, 4) for x in ol],
        "pack_s_median": round(statistics.median(pack_times), 3),
        "pack_MB_per_s": round(fp32_mb / statistics.median(pack_times), 1),
        "torch_load_s_median": round(statistics.median(tl), 4), "mbz_load_s_median": round(statistics.median(ml), 4),
        "load_ratio": round(statistics.median(ml) / statistics.median(tl), 3),
        # the ratio depends on the machine: torch.load is mostly page faults and copying
        "torch_load_GB_per_s": round(os.path.getsize(pt) / statistics.median(tl) / 1e9, 2),
        "machine": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__, "torch": torch.__version__,
        "torch_load_runs": [round(x, 4) for x in tl], "mbz_load_runs": [round(x, 4) for x in ml],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/format")
    ap.add_argument("--reference", default=os.path.join(os.environ.get("MBZ_DATA", ""), REFERENCE),
                    help=f"the fp32 reference checkpoint (default: $MBZ_DATA/{REFERENCE})")
    ap.add_argument("--data", default="jpeg", help="dataset for top-1 (default: the JPEG export in $MBZ_DATA)")
    ap.add_argument("--no-eval", action="store_true", help="skip the CPU top-1 evaluations")
    ap.add_argument("--runs", type=int, default=7, help="timed load runs of each kind")
    ap.add_argument("--speed-only", action="store_true",
                    help="rerun only the speed figures (on an idle machine) and merge them into figures.json")
    ap.add_argument("--load-breakdown", action="store_true",
                    help="only the load analysis (1 vs 2 threads, allocator, DENSE sizes) -> OUT/load_breakdown.json")
    a = ap.parse_args()
    if a.load_breakdown:
        res = load_breakdown(a.runs, tempfile.mkdtemp(prefix="mbzbench"))
        res["command"] = "python tools/bench_format.py --out " + a.out + " --load-breakdown --runs " + str(a.runs)
        print(json.dumps(res, indent=1), flush=True)
        with open(os.path.join(a.out, "load_breakdown.json"), "w") as f:
            json.dump(res, f, indent=1)
        return
    if a.speed_only:
        with open(os.path.join(a.out, "figures.json")) as f:
            res = json.load(f)
        res["speed"] = speed(a.runs, tempfile.mkdtemp(prefix="mbzbench"))
        res["speed_command"] = f"python tools/bench_format.py --out {a.out} --speed-only --runs {a.runs}"
        print(res["speed"], flush=True)
        with open(os.path.join(a.out, "figures.json"), "w") as f:
            json.dump(res, f, indent=1)
        write_md(res, os.path.join(a.out, "figures.md"))
        return
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="mbzbench")
    res = {"command": "python tools/bench_format.py --out " + a.out, "machine": platform.platform(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "mbz": mbz.__version__}
    ref = read_checkpoint(a.reference)
    test = None
    if not a.no_eval:
        from mbz.pipeline.data import load_dataset
        test = load_dataset(a.data, "test")

    # 1. reference: lossless, --wbits 8, --wbits 4 (per channel)
    rows = {}
    for label, extra in [("lossless", []), ("wbits8", ["--wbits", "8"]), ("wbits4", ["--wbits", "4"])]:
        out = os.path.join(tmp, f"ref_{label}.mbz")
        secs = pack_cli(a.reference, out, *extra)
        back = mbz.load(out)
        want = ref if not extra else quantize_state_dict(ref, QuantPolicy(int(extra[1])))
        row = {"file_bytes": os.path.getsize(out), "pack_s": round(secs, 2),
               "bit_exact_vs_expected": all(bits_equal(back[k], want[k]) for k in want)}
        if test is not None:
            row["top1_unpacked"] = top1(back, test)
            row["top1_without_mbz"] = top1(want, test)
            row["top1_equal"] = row["top1_unpacked"] == row["top1_without_mbz"]
        rows[label] = row
        print(label, row, flush=True)
    rows["wbits4"]["meets_1350000"] = rows["wbits4"]["file_bytes"] <= 1_350_000
    res["reference"] = rows

    # 2. pruned 90% + per-channel 8 / 4-bit rounding, packed losslessly as plain fp32
    pruned = {k: v.clone() for k, v in ref.items()}
    apply_masks(pruned, global_magnitude_masks(pruned, 0.9))
    res["pruned"] = {}
    for bits in (8, 4):
        pol = QuantPolicy(bits)
        pq = quantize_state_dict(pruned, pol)
        ck = os.path.join(tmp, f"pq{bits}.pt")
        torch.save(pq, ck)
        out = os.path.join(tmp, f"pq{bits}.mbz")
        secs = pack_cli(ck, out)                      # lossless: no --wbits
        assert mbz_cli(["verify", out, ck]) == 0
        b = bound_bytes(pruned, pol)
        size = os.path.getsize(out)
        with mbz.open(out) as r:
            encs = sorted({x.encoding.name for x in r.layout.records if pol.applies(x.name, pq[x.name])})
            cats = r.accounting()["categories"]
        row = {"file_bytes": size, **{k: round(v) for k, v in b.items()}, "ratio_to_bound": round(size / b["bound_bytes"], 4),
               "meets_1.10": size <= 1.10 * b["bound_bytes"], "weight_encodings": encs, "categories": cats,
               "pack_s": round(secs, 2)}
        if test is not None:
            row["top1"] = top1(mbz.load(out), test)
        res["pruned"][f"{bits}bit"] = row
        print(bits, row, flush=True)

    res["speed"] = speed(a.runs, tmp)
    print(res["speed"], flush=True)
    with open(os.path.join(a.out, "figures.json"), "w") as f:
        json.dump(res, f, indent=1)
    write_md(res, os.path.join(a.out, "figures.md"))


def write_md(r, path):
    L = ["# .mbz format figures", "", f"Command: `{r['command']}`  ", f"Machine: {r['machine']}, {r['cpus']} CPUs, torch {r['torch']}", "",
         "## Reference MobileNet-v2 (dense fp32, 9.2 MB .pt)", "",
         "| mode | file bytes | bit-exact | top-1 unpacked | top-1 without mbz |", "|---|---:|---|---:|---:|"]
    for k, v in r["reference"].items():
        L.append(f"| {k} | {v['file_bytes']:,} | {v['bit_exact_vs_expected']} | {v.get('top1_unpacked', '-')} | {v.get('top1_without_mbz', '-')} |")
    L += ["", "Top-1 on CIFAR-10 (JPEG q75 export), 10,000 test images.", "",
          "## Pruned 90% (global magnitude) + per-channel rounding, packed losslessly without being told the bits", "",
          "| bits | file bytes | bound bytes | ratio | codes+mask | scales | raw zstd-19 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in r["pruned"].items():
        L.append(f"| {k} | {v['file_bytes']:,} | {v['bound_bytes']:,} | {v['ratio_to_bound']} | {v['codes_and_mask_bytes']:,} | {v['scale_bytes']:,} | {v['raw_zstd19_bytes']:,} |")
    s = r["speed"]
    L += ["", "## Speed (resnet50 random init, 8-bit per channel, 50% sparse)", "",
          f"- {s['params']:,} parameters, {s['fp32_MB']} MB of tensors; .pt {s['pt_bytes']:,} B, .mbz {s['mbz_bytes']:,} B",
          f"- pack (lossless, detection included): median {s['pack_s_median']} s = **{s['pack_MB_per_s']} MB/s** of fp32 input",
          f"- load: mbz.load median {s['mbz_load_s_median']} s vs torch.load {s['torch_load_s_median']} s: **ratio {s['load_ratio']}** "
          f"(alternating runs: torch {s['torch_load_runs']}, mbz {s['mbz_load_runs']})",
          f"- the same file with zstd on every code section where it is smaller (no codes rule): "
          f"{s.get('mbz_bytes_zstd_on_all_codes', 0):,} B, load ratio {s.get('load_ratio_zstd_on_all_codes', '-')}",
          f"- machine: {s.get('machine', '?')}, {s.get('cpus', '?')} CPUs; torch.load reads at "
          f"{s.get('torch_load_GB_per_s', '?')} GB/s here, and the ratio depends on that (page-fault and copy speed)", ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
