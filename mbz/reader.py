"""Reading .mbz files: `open` (validated on open, tensors decoded on demand) and `load` (spec §5, §6)."""
from __future__ import annotations

import os
import zlib
from collections import OrderedDict

import torch

from .accounting import account
from .codecs import arans, rans
from .codecs.affine import numel_of
from .codecs.raw import DTYPE_NAME, ITEMSIZE
from .container import Source, check_record, parse, read_sections
from .decoder import decode_record
from .errors import FormatError, MbzError, TensorNotFoundError
from .spec import P_GRAN, P_SPARSE, P_WIDTH, Encoding, Filter, Granularity, Sparsity

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
    pooled = big if workers > 1 and len(big) > 1 else []
    pool = futures = None
    if pooled:  # the large ones start first; the small ones run here meanwhile
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(workers)
        futures = [pool.submit(fn, items[i]) for i in pooled]
    try:
        skip = set(pooled)
        for i, x in enumerate(items):
            if i not in skip:
                out[i] = fn(x)
                if tick is not None:
                    tick()
        for i, f in zip(pooled, futures or ()):
            out[i] = f.result()
            if tick is not None:
                tick()
    finally:
        if pool is not None:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True)
    return out


class MbzReader:
    """An open .mbz file: validated on open, tensors decoded on demand.

    >>> with mbz.open("model.mbz") as r:
    ...     w = r["features.0.0.weight"]   # decodes this tensor only

    `plain` says how an unfiltered RAW section (spec §5.2, 64 KiB or more) becomes a tensor: "map" (default
    for a path) views a private copy-on-write mapping of the file (no copy, no decoding: reading one tensor of
    a large file touches only its pages; writes to the tensor stay private; the file must not be truncated
    or rewritten in place while the tensor lives), "copy" copies it (what mbz.load does).

    Raises PathNotFoundError / PathIsDirectoryError / PathPermissionError (mbz.paths.open_input: MbzError
    subclasses that are also FileNotFoundError / IsADirectoryError / PermissionError) when `path` names no
    readable file, FormatError (or a subclass) naming the file when its bytes are not a valid .mbz file;
    open, load and load_checkpoint raise the same.
    """

    def __init__(self, path=None, *, data: bytes | None = None, plain: str = "map"):
        if plain not in ("map", "copy"):
            raise ValueError(f"plain must be 'map' or 'copy', got {plain!r}")
        self.path = path
        self._plain = plain
        self._src = Source(path, data)
        try:
            self.layout = parse(self._src.buf)
        except FormatError as e:  # name the file: "x.mbz: not an .mbz file: bad magic ..."
            self._src.close()
            if path is None:
                raise
            raise type(e)(f"{os.fspath(path)}: {e}") from None
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
            import difflib
            near = difflib.get_close_matches(str(name), list(self._by_name), n=3)
            raise TensorNotFoundError(f"{self._where()}no tensor {name!r} among the {len(self._by_name)} of the file"
                                      + (f"; close: {', '.join(near)}" if near else ""))
        return self._decode(rec)

    def _decode(self, rec, decoded: dict | None = None) -> torch.Tensor:
        if self._src.buf is None:
            raise MbzError("file is closed")
        try:
            secs = read_sections(self._src.buf, rec, decoded, self._plain, self._src)
            return decode_record(rec.dtype, rec.shape, rec.encoding, rec.params, secs)
        except MbzError as e:
            msg = str(e) if str(e).startswith(f"tensor '{rec.name}'") else f"tensor '{rec.name}': {e}"
            raise type(e)(self._where() + msg) from None

    def check_checksums(self) -> None:
        """Checks every tensor's CRC-32 (spec §4) without decoding: the stored bytes are the ones written.  Raises
        ChecksumError naming the file, the tensor and its sections' offset."""
        if self._src.buf is None:
            raise MbzError("file is closed")
        for rec in self.layout.records:
            try:
                check_record(self._src.buf, rec)
            except MbzError as e:
                raise type(e)(self._where() + str(e)) from None

    def _where(self) -> str:
        """'PATH: ' for messages of a file opened from a path ('' for bytes or a file object)."""
        return f"{os.fspath(self.path)}: " if isinstance(self.path, (str, os.PathLike)) else ""

    def items(self):
        for rec in self.layout.records:
            yield rec.name, self._decode(rec)

    def decode_all(self, workers: int | None = None) -> "OrderedDict[str, torch.Tensor]":
        """All tensors, in stored order; large ones decoded on `workers` threads (see map_small_first)."""
        recs = self.layout.records
        pre = self._predecode_rans(recs)
        out = map_small_first(lambda r: self._decode(r, pre.get(r.index)), recs, [numel_of(r.shape) for r in recs],
                              workers or min(8, os.cpu_count() or 1))
        return OrderedDict((r.name, t) for r, t in zip(recs, out))

    def _predecode_rans(self, recs) -> dict:
        """{record index: {section index: decoded bytes}} for every RANS and ARANS section of `recs`, each
        filter's sections decoded in one batch (spec §5.7, §5.8: all lanes advance together).  Records whose
        checksum fails, and any batch that fails, are left to the per-record path, which raises the error
        naming the tensor."""
        buf = self._src.buf
        if buf is None:
            return {}
        batches = {Filter.RANS: ([], [], rans.decode_many), Filter.ARANS: ([], [], arans.decode_many)}
        for rec in recs:
            idx = [j for j, s in enumerate(rec.sections) if s.filter in batches]
            if not idx:
                continue
            crc = 0
            for s in rec.sections:
                crc = zlib.crc32(buf[s.offset:s.offset + s.stored], crc)
            if crc != rec.crc:
                continue
            for j in idx:
                s = rec.sections[j]
                items, keys, _ = batches[s.filter]
                items.append((buf[s.offset:s.offset + s.stored], s.decoded))
                keys.append((rec.index, j))
        pre: dict = {}
        for items, keys, decode_many in batches.values():
            if len(items) < 2:
                continue
            try:
                outs = decode_many(items)
            except MbzError:
                continue
            for (ri, j), b in zip(keys, outs):
                pre.setdefault(ri, {})[j] = b
        return pre

    def _decode_names(self, names) -> dict:
        recs = [self._by_name[n] for n in self._by_name if n in names]
        pre = self._predecode_rans(recs)
        out = map_small_first(lambda r: self._decode(r, pre.get(r.index)), recs, [numel_of(r.shape) for r in recs],
                              min(8, os.cpu_count() or 1))
        return {r.name: t for r, t in zip(recs, out)}

    def _build(self, node):
        from .structure import Builder, referenced
        names = [r.name for r in self.layout.records]
        cache = self._decode_names(referenced(node, names, set()))
        try:
            return Builder(lambda n: cache[n] if n in cache else cache.setdefault(n, self[n]), names).build(node)
        except MbzError as e:
            if not self._where() or str(e).startswith(self._where()):
                raise
            raise type(e)(f"{self._where()}{e}") from None

    @property
    def has_structure(self) -> bool:
        """The file holds a structure tree (spec §3.1): more than a flat state_dict of tensors."""
        return self.layout.tree is not None

    def state_dict(self):
        """The model state_dict: the tree's 'main' entry (spec §3.1), else every record by name."""
        if self.layout.tree is None:
            return self.decode_all()
        from .structure import find
        return self._build(find(self.layout.tree, self.layout.main, [r.name for r in self.layout.records]))

    def checkpoint(self):
        """The whole checkpoint as it was packed (the structure tree rebuilt), else the flat state_dict."""
        if self.layout.tree is None:
            return self.decode_all()
        return self._build(self.layout.tree)

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
                "name": rec.name, "shape": list(rec.shape), "dtype": DTYPE_NAME[rec.dtype],
                "numel": numel_of(rec.shape), "encoding": rec.encoding.name,
                "bits": p.get(P_WIDTH) if rec.encoding != Encoding.RAW else 8 * ITEMSIZE[rec.dtype],
                "layout": Sparsity(p.get(P_SPARSE, Sparsity.DENSE)).name,
                "granularity": Granularity(p[P_GRAN]).name.lower() if rec.encoding == Encoding.AFFINE else None,
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


def load(path, *, mmap: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The model state_dict of a .mbz file, bit-exact, in stored order (see MbzReader.state_dict).

    Tensors own their memory; with `mmap`, unfiltered RAW tensors view private copy-on-write mappings of the
    file instead (no copy: see MbzReader)."""
    with MbzReader(path, plain="map" if mmap else "copy") as r:
        return r.state_dict()


def load_checkpoint(path, *, mmap: bool = False):
    """The whole checkpoint a .mbz file holds (epoch, optimizer state, ...), as torch.load returned it
    (`mmap`: as in load)."""
    with MbzReader(path, plain="map" if mmap else "copy") as r:
        return r.checkpoint()
