"""The public API: save, load, open, load_model."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .accounting import account
from .codecs.affine import numel_of
from .codecs.raw import TORCH_DTYPE
from .container import Source, parse, read_sections, write_file
from .decoder import decode_record
from .encoder import EntropyPolicy, encode_tensor
from .errors import MbzError
from .quantize import DEFAULT_INCLUDE, QuantPolicy, error_stats, quantize_tensor
from .spec import Encoding, Sparsity
from .torch_io import as_state_dict, build_model, guess_arch

PARALLEL_MIN_ELEMENTS = 1 << 16  # tensors this large are encoded / decoded on a thread pool


def map_small_first(fn, items: list, sizes: list, workers: int, tick=None) -> list:
    """[fn(x) for x in items]: small items here, then items of PARALLEL_MIN_ELEMENTS or more on threads.

    Encoding or decoding a large tensor is numpy and zstd work that releases the
    GIL, so it scales with threads; a small one is mostly Python and would only
    slow the pool down by contending for the GIL, so small ones go first, serially.
    Large ones run largest first, so that the pool does not end on one big tensor.
    """
    big = sorted((i for i, n in enumerate(sizes) if n >= PARALLEL_MIN_ELEMENTS), key=lambda i: -sizes[i])
    out = [None] * len(items)
    pooled = set(big) if workers > 1 and len(big) > 1 else set()
    for i, x in enumerate(items):
        if i not in pooled:
            out[i] = fn(x)
            if tick is not None:
                tick()
    if pooled:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:
            for i, r in zip(big, pool.map(fn, (items[i] for i in big))):
                out[i] = r
                if tick is not None:
                    tick()
    return out


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
         workers: int | None = None) -> SaveReport:
    """Write a state_dict (or module, or wrapped checkpoint) to `path` as .mbz.

    Without `wbits` every tensor is stored exactly (detected grids, codebooks
    or raw bytes).  With `wbits`, tensors matching `include` (default: conv /
    linear weights) are quantized first and their error is reported.
    `workers` threads encode tensors side by side (default: up to 4, one per core).
    """
    sd = as_state_dict(obj)
    policy = QuantPolicy(wbits, granularity, axis, group_size, symmetric, include) if wbits else None
    ent = EntropyPolicy(zstd=zstd, level=zstd_level).resolved(sum(t.numel() * t.element_size() for t in sd.values()))
    meta = dict(metadata or {})
    arch = arch or meta.get("arch") or guess_arch(sd)
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


class MbzReader:
    """An open .mbz file: validated on open, tensors decoded on demand.

    >>> with mbz.open("model.mbz") as r:
    ...     w = r["features.0.0.weight"]   # decodes this tensor only
    """

    def __init__(self, path=None, *, data: bytes | None = None):
        self.path = path
        self._src = Source(path, data)
        try:
            self.layout = parse(self._src.buf)
        except BaseException:
            self._src.close()
            raise
        self._by_name = {r.name: r for r in self.layout.records}

    # mapping interface
    def keys(self):
        return list(self._by_name)

    def __iter__(self):
        return iter(self._by_name)

    def __len__(self):
        return len(self._by_name)

    def __contains__(self, name):
        return name in self._by_name

    def __getitem__(self, name: str) -> torch.Tensor:
        rec = self._by_name.get(name)
        if rec is None:
            raise KeyError(name)
        return self._decode(rec)

    def _decode(self, rec) -> torch.Tensor:
        if self._src.buf is None:
            raise MbzError("file is closed")
        secs = read_sections(self._src.buf, rec)
        try:
            return decode_record(rec.dtype, rec.shape, rec.encoding, rec.params, secs)
        except MbzError as e:
            raise type(e)(f"tensor '{rec.name}': {e}") from None

    def items(self):
        for rec in self.layout.records:
            yield rec.name, self._decode(rec)

    def decode_all(self, workers: int | None = None) -> "OrderedDict[str, torch.Tensor]":
        """All tensors, in stored order; large ones decoded on `workers` threads (see map_small_first)."""
        recs = self.layout.records
        out = map_small_first(self._decode, recs, [numel_of(r.shape) for r in recs],
                              workers or min(8, os.cpu_count() or 1))
        return OrderedDict((r.name, t) for r, t in zip(recs, out))

    @property
    def metadata(self) -> dict:
        return self.layout.meta

    @property
    def version(self) -> tuple:
        return (self.layout.major, self.layout.minor)

    def accounting(self) -> dict:
        return account(self.layout)

    def describe(self) -> list[dict]:
        """Per tensor: shape, dtype, encoding, bits, layout (no decoding)."""
        rows = []
        for rec in self.layout.records:
            p = rec.params
            rows.append({
                "name": rec.name, "shape": list(rec.shape), "dtype": str(TORCH_DTYPE[rec.dtype]).replace("torch.", ""),
                "numel": numel_of(rec.shape), "encoding": rec.encoding.name,
                "bits": p.get("b") if rec.encoding != Encoding.RAW else 8 * TORCH_DTYPE[rec.dtype].itemsize,
                "layout": Sparsity(p["sp"]).name if rec.encoding != Encoding.RAW else "DENSE",
                "granularity": ["tensor", "channel", "group"][p["g"]] if rec.encoding == Encoding.AFFINE else None,
                "filters": {s.role.name: s.filter.name for s in rec.sections},
            })
        return rows

    def close(self):
        self._src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(path) -> MbzReader:  # noqa: A001 - mirrors safetensors.safe_open / builtins.open
    return MbzReader(path)


def load(path) -> "OrderedDict[str, torch.Tensor]":
    """Every tensor of a .mbz file, bit-exact, in stored order."""
    with MbzReader(path) as r:
        return r.decode_all()


def load_model(path, *, strict: bool = True) -> torch.nn.Module:
    """Rebuild the model described by the file's 'arch' metadata and load its tensors (eval mode)."""
    with MbzReader(path) as r:
        arch = r.metadata.get("arch")
        if not arch:
            raise MbzError(f"{path}: no 'arch' metadata; pass --arch when packing, or use mbz.load()")
        model = build_model(arch)
        model.load_state_dict(r.decode_all(), strict=strict)
    return model.eval()
