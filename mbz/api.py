"""The public API: save, and the readers' open / load (mbz.reader); load_model lives in mbz.models."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .checkpoint import as_state_dict
from .container import write_file
from .encoder import RANS_PROFILES, EntropyPolicy, encode_tensor
from .errors import EncodeError
from .quantize import DEFAULT_INCLUDE, QuantPolicy, error_stats, quantize_tensor
from .reader import MbzReader, load, map_small_first, open  # noqa: F401,A004


@dataclass
class TensorReport:
    name: str
    encoding: str
    stored_bytes: int
    quantized: bool = False
    error: dict = field(default_factory=dict)


@dataclass
class SaveReport:
    path: str
    file_bytes: int
    tensors: list


def _progress_bar(enabled: bool, desc: str, total: int):
    """A tqdm bar to update by hand, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, unit="tensor", leave=False, total=total)


def save(obj, path, *, wbits: int | None = None, granularity: str = "channel", axis: int = 0,
         group_size: int = 64, symmetric: bool = True, include: str = DEFAULT_INCLUDE,
         detect: bool = True, zstd: bool = True, zstd_level: int | None = None, align: int = 1,
         metadata: dict | None = None, arch: dict | None = None, progress: bool = False,
         workers: int | None = None, rans: bool = True, profile: str = "default") -> SaveReport:
    """Write a state_dict (or module, or wrapped checkpoint) to `path` as .mbz.

    Without `wbits` every tensor is stored exactly (detected grids, codebooks
    or raw bytes).  With `wbits`, tensors matching `include` (default: conv /
    linear weights) are quantized first and their error is reported.
    `workers` threads encode tensors side by side (default: up to 4, one per core).
    `arch` ({'name': ..., builder arguments}, see mbz.models) is recorded as the
    file's 'arch' metadata for mbz.load_model; nothing is guessed here.
    `rans` tries the RANS entropy coder (spec §5.7) on integer sections; `profile` "default" keeps it
    where it saves at least 3% over zstd with 1024-step lanes, "best" wherever it is smaller, with
    16384-step lanes (smaller files, slower decoding).  Raises EncodeError for an unknown profile.
    """
    if profile not in RANS_PROFILES:
        raise EncodeError(f"unknown entropy profile {profile!r}; known: {sorted(RANS_PROFILES)}")
    sd = as_state_dict(obj)
    policy = QuantPolicy(wbits, granularity, axis, group_size, symmetric, include) if wbits else None
    ent = EntropyPolicy(zstd=zstd, level=zstd_level, rans=rans, profile=profile).resolved(sum(t.numel() * t.element_size() for t in sd.values()))
    meta = dict(metadata or {})
    arch = arch or meta.get("arch")
    if arch:
        meta["arch"] = arch

    def encode(item):
        name, t = item
        grid = quantize_tensor(t, policy) if policy is not None and policy.applies(name, t) else None
        et = encode_tensor(name, t, grid=grid, ent=ent, detect=detect)
        rep = TensorReport(name, et.encoding.name, et.stored_bytes, grid is not None)
        if grid is not None:
            rep.error = error_stats(t, torch.from_numpy(grid.values()).reshape(t.shape))
        return et, rep

    items = list(sd.items())
    bar = _progress_bar(progress, "pack", len(items))
    done = map_small_first(encode, items, [t.numel() for _, t in items], workers or min(4, os.cpu_count() or 1),
                           tick=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    encoded, reports = [d[0] for d in done], [d[1] for d in done]
    size = write_file(path, encoded, meta, align=align, compress_header=ent.zstd)
    return SaveReport(os.fspath(path), size, reports)
