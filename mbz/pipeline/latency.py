"""Inference latency of a packed model, rebuilt with `mbz.load_model`, on the CPU and on a GPU.

What is timed: one forward pass of the rebuilt PyTorch module (eval mode, `torch.inference_mode`)
on a random input of the file's `preprocess.input_size` (3 x 32 x 32 when the file records none),
after `warmup` untimed passes; `runs` timed passes give the median and the 10th / 90th
percentiles.  On a GPU each pass is bracketed by `torch.cuda.synchronize()`, so the time is the
kernels' and not only their launch.  The model computes in float32 (activation quantizers are
simulated), so this is the latency of the PyTorch model a user gets from the file, not of an
integer inference engine.  Timings depend on the machine and its load: record them beside the
command and the machine (`bench_file` returns both).
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from ..errors import UsageError
from ..models import load_model
from ..reader import MbzReader

DEFAULT_INPUT = (3, 32, 32)


def input_size(path) -> tuple:
    """The C x H x W input the file's `preprocess` metadata records (3 x 32 x 32 if none)."""
    with MbzReader(path) as r:
        pre = r.metadata.get("preprocess") or {}
    size = pre.get("input_size") if isinstance(pre, dict) else None
    if isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and 0 < v <= 4096 for v in size):
        return tuple(size)
    return DEFAULT_INPUT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_model(model: torch.nn.Module, x: torch.Tensor, runs: int = 20, warmup: int = 3) -> dict:
    """{'median_ms', 'p10_ms', 'p90_ms', 'mean_ms', 'runs_ms'} of `model(x)` on x's device."""
    if runs < 1 or warmup < 0:
        raise UsageError(f"runs must be >= 1 and warm-up >= 0 (got {runs}, {warmup})")
    dev = x.device
    for _ in range(warmup):
        model(x)
    _sync(dev)
    times = []
    for _ in range(runs):
        _sync(dev)
        t = time.perf_counter()
        model(x)
        _sync(dev)
        times.append((time.perf_counter() - t) * 1e3)
    a = np.asarray(times)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "runs_ms": [round(v, 4) for v in times]}


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def bench_file(path, batches=(1, 256), devices=None, runs: int = 20, warmup: int = 3, threads: int | None = None,
               progress=None, model=None) -> dict:
    """Latency of the model in `path` for every (device, batch): {'file', 'input_size', ..., 'results': [...]}.

    `devices`: e.g. ['cpu', 'cuda'] (default: the CPU, and the GPU where there is one).
    `threads`: torch CPU threads (default: as torch sets them).  `progress(row)` is called after
    each measurement.  `model`: a torch.nn.Module to fill with the file's tensors instead of the one its 'arch'
    metadata describes (mbz.load_model(path, model=...))."""
    devices = list(devices or available_devices())
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"device {d}: no CUDA device here")
        if not (d == "cpu" or d.startswith("cuda")):
            raise UsageError(f"device {d!r}: use cpu or cuda[:N]")
    if any(b < 1 for b in batches):
        raise UsageError(f"batch sizes must be >= 1 (got {list(batches)})")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    shape = input_size(path)
    model = load_model(path, model=model)
    gen = torch.Generator().manual_seed(0)
    out = {"file": os.fspath(path), "file_bytes": os.path.getsize(path), "input_size": list(shape),
           "warmup": warmup, "runs": runs, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.platform(), "cpu_count": os.cpu_count(), "results": []}
    for d in devices:
        dev = torch.device(d)
        m = model.to(dev)
        if dev.type == "cuda":
            out.setdefault("gpu", torch.cuda.get_device_name(dev))
        for b in batches:
            x = torch.randn(b, *shape, generator=gen).to(dev)
            row = {"device": d, "batch": b, **time_model(m, x, runs, warmup)}
            row["images_per_s"] = b / (row["median_ms"] / 1e3) if row["median_ms"] > 0 else float("inf")
            out["results"].append(row)
            if progress is not None:
                progress(row)
    model.to("cpu")
    return out


def format_table(res: dict) -> str:
    lines = [f"{'device':<8} {'batch':>6} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'images/s':>10}"]
    for r in res["results"]:
        lines.append(f"{r['device']:<8} {r['batch']:>6} {r['median_ms']:>10.3f} {r['p10_ms']:>9.3f} "
                     f"{r['p90_ms']:>9.3f} {r['images_per_s']:>10.1f}")
    return "\n".join(lines)
