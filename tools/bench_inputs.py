"""Checkpoint inputs benchmark (issue 18): the figures of pruning pairs, torch.ao PTQ, pack / load speed.

    python tools/bench_inputs.py --out results/format_inputs/results.json
    python tools/bench_inputs.py --only speed --repeats 5 --out /tmp/speed.json
    python tools/bench_inputs.py --only ptq --best --data npz:/work/shared/data --out /tmp/ptq.json

* prune: a MobileNet-v2 (CIFAR; the reference fp32 weights when --reference exists, else
  random) pruned 90% with torch.nn.utils.prune.global_unstructured (L1) and no prune.remove,
  packed by default (X_orig * X_mask folded) against the same model after prune.remove;
  logits of the folded file in the unpruned network against the pruned model's (bit-equal
  logits: same top-1 on any data); --exact size.
* ptq: torchvision's quantizable MobileNet-v2 (10 classes) with the reference weights, fused,
  fbgemm per-channel qint8 PTQ calibrated on --calib CIFAR-10 (JPEG q75 export) training
  images (random inputs without --data); torch.save size against the .mbz, round trip exact.
* speed: torchvision ResNet-18 and VGG-11-BN (10 classes, random init, fp32): lossless pack
  MB/s, load time against torch.load(weights_only=True), runs alternated, medians.
Sizes are bytes on disk.  Uses the installed mbz package (PYTHONPATH=$PWD in a checkout).
"""
import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

import mbz
from mbz.compare import compare

warnings.filterwarnings("ignore")
REFERENCE = os.environ.get("MBZ_REFERENCE", "/work/shared/data/reference_mnv2_cifar10_fp32.pt")


def _size_of_save(obj) -> int:
    b = io.BytesIO()
    torch.save(obj, b)
    return len(b.getvalue())


def bench_prune(tmp: str, reference: str) -> dict:
    import torch.nn.utils.prune as prune
    from mbz.models import mobilenet_v2_cifar
    torch.manual_seed(0)
    m = mobilenet_v2_cifar(num_classes=10)
    src = "random init (seed 0)"
    if os.path.exists(reference):
        m.load_state_dict(torch.load(reference, map_location="cpu", weights_only=True))
        src = os.path.basename(reference)
    params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.9)
    m.eval()
    masked = os.path.join(tmp, "masked.pt")
    torch.save(m.state_dict(), masked)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref_logits = m(x)
    r_default = mbz.save(m.state_dict(), os.path.join(tmp, "d.mbz"))
    r_exact = mbz.save(m.state_dict(), os.path.join(tmp, "e.mbz"), exact=True)
    exact_ok = compare(m.state_dict(), mbz.load(os.path.join(tmp, "e.mbz"))).ok
    plain = mobilenet_v2_cifar(num_classes=10).eval()
    plain.load_state_dict(mbz.load(os.path.join(tmp, "d.mbz")))
    with torch.no_grad():
        same_logits = torch.equal(plain(x), ref_logits)
    for mod, name in params:
        prune.remove(mod, name)
    removed = m.state_dict()
    r_removed = mbz.save(removed, os.path.join(tmp, "r.mbz"))
    r_removed_drop = mbz.save(removed, os.path.join(tmp, "rd.mbz"), zero_sign="drop")
    negz = sum(t.negative_zeros for t in r_removed.tensors)
    return {
        "model": f"mobilenet_v2_cifar width 1.0, weights: {src}; 90% global L1 unstructured on conv/linear weights",
        "torch_save_masked_bytes": os.path.getsize(masked),
        "torch_save_removed_bytes": _size_of_save(removed),
        "mbz_masked_default_bytes": r_default.file_bytes,
        "mbz_masked_exact_bytes": r_exact.file_bytes,
        "mbz_removed_bytes": r_removed.file_bytes,
        "mbz_removed_zero_sign_drop_bytes": r_removed_drop.file_bytes,
        "removed_negative_zeros": negz,
        "removed_negative_zeros_cost_bytes": sum(t.negzero_bytes for t in r_removed.tensors),
        "ratio_masked_default_vs_removed": r_default.file_bytes / r_removed.file_bytes,
        "target_ratio_max": 1.02,
        "exact_round_trip": exact_ok,
        "folded_logits_equal_pruned_model": same_logits,
        "folded_tensors": len(r_default.folded) or len(params),
    }


def _calibration(n: int, data: str | None):
    if data:
        try:
            from mbz.pipeline.data import load_dataset, normalize
            ds = load_dataset(data, "train").subset(n)
            return normalize(ds.images[:n]), f"{n} training images of {ds.source}"
        except Exception as e:  # noqa: BLE001 - fall back, and say so
            print(f"calibration data not read ({e}); random inputs instead")
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, 32, 32, generator=g), f"{n} random inputs"


def bench_ptq(tmp: str, reference: str, calib: int, data: str | None, best: bool = False, runs: int = 3) -> dict:
    """The PTQ part (module docstring); `best`: also pack with profile='best' (`mbz pack --best`, ARANS):
    its size, pack seconds, exactness, weight-code bits, and mbz.load medians of `runs` alternating runs."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare
    from torchvision.models.quantization import mobilenet_v2
    torch.manual_seed(0)
    m = mobilenet_v2(weights=None, quantize=False, num_classes=10)
    src = "random init (seed 0)"
    if os.path.exists(reference):
        m.load_state_dict(torch.load(reference, map_location="cpu", weights_only=True))
        src = os.path.basename(reference)
    m.eval()
    m.fuse_model(is_qat=False)
    m.qconfig = get_default_qconfig("fbgemm")
    prepare(m, inplace=True)
    x, calib_src = _calibration(calib, data)
    with torch.no_grad():
        for i in range(0, len(x), 64):
            m(x[i:i + 64])
    convert(m, inplace=True)
    sd = m.state_dict()
    path = os.path.join(tmp, "ptq.pt")
    torch.save(sd, path)
    t0 = time.perf_counter()
    rep = mbz.save(sd, os.path.join(tmp, "ptq.mbz"))
    pack_s = time.perf_counter() - t0
    back = mbz.load(os.path.join(tmp, "ptq.mbz"))
    with mbz.open(os.path.join(tmp, "ptq.mbz")) as r:
        cats = r.accounting()["categories"]
    fresh = mobilenet_v2(weights=None, quantize=False, num_classes=10).eval()
    fresh.fuse_model(is_qat=False)
    fresh.qconfig = get_default_qconfig("fbgemm")
    prepare(fresh, inplace=True)
    convert(fresh, inplace=True)
    fresh.load_state_dict(back)
    with torch.no_grad():
        same_logits = torch.equal(fresh(x[:32]), m(x[:32]))
    import numpy as np
    def h(q):  # order-0 entropy in bits of an integer array
        c = np.bincount(q - q.min())
        p = c[c > 0] / q.size
        return float(-(p * np.log2(p)).sum()) * q.size
    bits = bits_ch = n = 0
    weights = set()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and v.is_quantized and v.dim() > 1:
            q = v.int_repr().numpy().astype(np.int64)
            bits += h(q.reshape(-1))
            bits_ch += sum(h(r) for r in q.reshape(q.shape[0], -1))  # a table per output channel (tables not counted)
            n += q.size
            weights.add(k)
    with mbz.open(os.path.join(tmp, "ptq.mbz")) as r:
        recs = [x for x in r.layout.records if x.name in weights]
        codes_bytes = sum(s.stored for x in recs for s in x.sections if s.role.name == "CODES")
        scales32 = f"{sum(x.params.get('sb', 4) == 4 for x in recs)} of {len(recs)} weight tensors"
    out = {
        "model": f"torchvision quantizable mobilenet_v2 (10 classes), weights: {src}; fused, fbgemm per-channel qint8 "
                 f"weights, calibrated on {calib_src}",
        "torch_save_bytes": os.path.getsize(path),
        "mbz_bytes": rep.file_bytes,
        "ratio_mbz_vs_torch_save": rep.file_bytes / os.path.getsize(path),
        "target_ratio_max": 0.70,
        "round_trip_exact": compare(sd, back).ok,
        "reloaded_logits_equal": same_logits,
        "mbz_categories": cats,
        "weight_codes": n,
        "weight_codes_stored_bytes": codes_bytes,
        "weight_codes_bits_per_weight": 8 * codes_bytes / n,
        "file_bits_per_weight": 8 * rep.file_bytes / n,
        "per_channel_scales_float32": scales32,
        "weight_codes_order0_entropy_bits_per_code": bits / n,
        "weight_codes_per_channel_order0_entropy_bits_per_code": bits_ch / n,
        "bound_order0_codes_bytes": int(bits / 8),
        "pack_seconds": pack_s,
    }
    if best:
        bpath = os.path.join(tmp, "ptq_best.mbz")
        t0 = time.perf_counter()
        rb = mbz.save(sd, bpath, profile="best")
        out["pack_seconds_best"] = time.perf_counter() - t0
        out["mbz_bytes_best"] = rb.file_bytes
        out["ratio_best_vs_torch_save"] = rb.file_bytes / os.path.getsize(path)
        out["round_trip_exact_best"] = compare(sd, mbz.load(bpath)).ok
        with mbz.open(bpath) as r:
            out["mbz_categories_best"] = r.accounting()["categories"]
            recs = [x for x in r.layout.records if x.name in weights]
            cb = sum(s.stored for x in recs for s in x.sections if s.role.name == "CODES")
            out["weight_codes_filters_best"] = sorted({s.filter.name for x in recs for s in x.sections
                                                       if s.role.name == "CODES"})
        out["weight_codes_stored_bytes_best"] = cb
        out["weight_codes_bits_per_weight_best"] = 8 * cb / n
        ts = {"default": [], "best": [], "torch_load": []}
        for _ in range(runs):  # alternated
            for k, f in (("default", os.path.join(tmp, "ptq.mbz")), ("best", bpath)):
                t0 = time.perf_counter()
                mbz.load(f)
                ts[k].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            ts["torch_load"].append(time.perf_counter() - t0)
        out["load_s_median"] = {k: round(_median(v), 3) for k, v in ts.items()}
    return out


def _median(x):
    return statistics.median(x)


def bench_speed(tmp: str, repeats: int) -> dict:
    """Lossless pack and load of fp32 checkpoints in both entropy profiles, runs alternated.

    Per run: pack (default), pack (--best), torch.load, mbz.load (default file), mbz.load (--best file),
    mbz.load(mmap=True) (default file), and mbz.open + one tensor (the largest and a small one) of the
    default file: the ratios of one run's medians."""
    import torchvision
    out = {}
    for name in ("resnet18", "vgg11_bn"):
        torch.manual_seed(0)
        sd = getattr(torchvision.models, name)(num_classes=10).state_dict()
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        big = max(sd, key=lambda k: sd[k].numel())
        small = min((k for k, t in sd.items() if t.is_floating_point() and t.numel() >= 16384),
                    key=lambda k: sd[k].numel())  # the smallest tensor of 64 KiB or more
        pt = os.path.join(tmp, name + ".pt")
        files = {"default": os.path.join(tmp, name + ".mbz"), "best": os.path.join(tmp, name + "_best.mbz")}
        torch.save(sd, pt)
        t = {k: [] for k in ("pack_default", "pack_best", "torch_load", "load_default", "load_best", "load_mmap",
                             "open_one_big", "open_one_small")}

        def timed(key, fn):
            t0 = time.perf_counter()
            r = fn()
            t[key].append(time.perf_counter() - t0)
            return r
        for _ in range(repeats):  # alternated
            timed("pack_default", lambda: mbz.save(sd, files["default"]))
            timed("pack_best", lambda: mbz.save(sd, files["best"], profile="best"))
            timed("torch_load", lambda: torch.load(pt, map_location="cpu", weights_only=True))
            timed("load_default", lambda: mbz.load(files["default"]))
            timed("load_best", lambda: mbz.load(files["best"]))
            timed("load_mmap", lambda: [float(v.reshape(-1)[-1]) if v.numel() else 0
                                        for v in mbz.load(files["default"], mmap=True).values()])

            def one(key):
                with mbz.open(files["default"]) as r:
                    return float(r[key].sum())  # every element touched
            timed("open_one_big", lambda: one(big))
            timed("open_one_small", lambda: one(small))
        med = {k: _median(v) for k, v in t.items()}
        row = {"tensor_bytes": nbytes, "torch_save_bytes": os.path.getsize(pt),
               "mbz_bytes_default": os.path.getsize(files["default"]), "mbz_bytes_best": os.path.getsize(files["best"]),
               "runs_s": {k: [round(x, 4) for x in v] for k, v in t.items()},
               "pack_mb_per_s_default": nbytes / 1e6 / med["pack_default"],
               "pack_mb_per_s_best": nbytes / 1e6 / med["pack_best"],
               "load_ratio_default": med["load_default"] / med["torch_load"],
               "load_ratio_best": med["load_best"] / med["torch_load"],
               "load_mmap_ratio": med["load_mmap"] / med["torch_load"],
               "open_one_tensor": {"big": [big, sd[big].numel() * 4], "small": [small, sd[small].numel() * 4],
                                   "big_vs_load_default": med["open_one_big"] / med["load_default"],
                                   "small_vs_load_default": med["open_one_small"] / med["load_default"]}}
        for prof, path in files.items():
            back = mbz.load(path)
            row[f"round_trip_exact_{prof}"] = compare(sd, back).ok
            del back
            with mbz.open(path) as r:
                row[f"filters_{prof}"] = sorted({s.filter.name for rec in r.layout.records for s in rec.sections})
                row[f"align_{prof}"] = r.layout.align
        out[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "runs_s"}), flush=True)
        del sd
    out["targets"] = {"pack_mb_per_s_min": {"resnet18": 50, "vgg11_bn": 100}, "load_ratio_max": 1.0}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--only", choices=("prune", "ptq", "speed"), action="append", help="run only these parts")
    ap.add_argument("--repeats", type=int, default=3, help="speed: alternated runs per model (medians)")
    ap.add_argument("--reference", default=REFERENCE, help="fp32 CIFAR MobileNet-v2 state_dict (else random init)")
    ap.add_argument("--data", default=os.environ.get("MBZ_DATA") and f"npz:{os.environ['MBZ_DATA']}",
                    help="calibration data spec for ptq (e.g. npz:/work/shared/data); random inputs without it")
    ap.add_argument("--calib", type=int, default=512, help="ptq: calibration images")
    ap.add_argument("--best", action="store_true", help="ptq: also pack with --best (ARANS; slow) and time mbz.load")
    a = ap.parse_args()
    parts = a.only or ["prune", "ptq", "speed"]
    res = {"command": "python tools/bench_inputs.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        if "prune" in parts:
            res["prune"] = bench_prune(tmp, a.reference)
            print("prune", json.dumps(res["prune"], indent=1))
        if "ptq" in parts:
            res["ptq"] = bench_ptq(tmp, a.reference, a.calib, a.data, best=a.best, runs=a.repeats)
            print("ptq", json.dumps(res["ptq"], indent=1))
        if "speed" in parts:
            res["speed"] = bench_speed(tmp, a.repeats)
            print("speed", json.dumps(res["speed"], indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
