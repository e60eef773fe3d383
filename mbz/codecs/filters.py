"""Entropy stage of one payload section (spec §5.6, table 7).

Each filter is a small class with ``encode(data, stride) -> bytes`` and
``decode(stored, decoded_len, stride) -> bytes``; FILTERS is the registry.
zstandard is imported lazily so that GPU-side tools (which may lack it) can
import mbz; only writing or reading a zstd section needs it.
"""
from __future__ import annotations

import numpy as np

from ..errors import EncodeError, FormatError, LimitError
from ..spec import EXPANSION_SLACK, MAX_EXPANSION, Filter, role_stride


def _zstd():
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - exercised only without zstandard
        raise EncodeError("the zstd entropy stage needs the 'zstandard' package (pip install zstandard)") from e
    return zstandard


STREAM_BYTES = 4 << 20   # byte-plane sections this large are decoded in chunks of STREAM_CHUNK bytes
STREAM_CHUNK = 256 << 10
MT_BYTES = 16 << 20  # sections this large are compressed by zstd's worker threads


def max_decoded(stored_len: int) -> int:
    """Largest decoded size a stored block of this length may claim (spec §7)."""
    return stored_len * MAX_EXPANSION + EXPANSION_SLACK


def shuffle(data: bytes, stride: int) -> bytes:
    if stride <= 1 or len(data) % stride:
        return bytes(data)
    x = np.frombuffer(data, np.uint8).reshape(-1, stride)
    out = np.empty((stride, x.shape[0]), np.uint8)
    for j in range(stride):  # one plane at a time: several times faster than a transposed copy
        out[j] = x[:, j]
    return out.reshape(-1)


def unshuffle(data, stride: int):
    """The byte-plane transpose undone; a writable buffer (a uint8 array) that decoders may keep."""
    if stride <= 1 or len(data) % stride:
        return data
    p = np.frombuffer(data, np.uint8).reshape(stride, -1)
    out = np.empty((p.shape[1], stride), np.uint8)
    for j in range(stride):
        out[:, j] = p[j]
    return out.reshape(-1)


class NoFilter:
    id = Filter.NONE

    def encode(self, data: bytes, stride: int = 1, level: int = 0) -> bytes:
        return data

    def decode(self, stored, decoded_len: int, stride: int = 1):
        if len(stored) != decoded_len:
            raise FormatError(f"unfiltered section is {len(stored)} bytes but declares {decoded_len}")
        return bytearray(stored)  # a private copy: decoded tensors never alias the file's memory map


class ZstdFilter:
    id = Filter.ZSTD

    def encode(self, data: bytes, stride: int = 1, level: int = 19) -> bytes:
        # large sections: zstd's own worker threads (still one frame, decoded as any other)
        threads = -1 if len(data) >= MT_BYTES else 0
        return _zstd().ZstdCompressor(level=level, write_content_size=False, write_checksum=False,
                                      threads=threads).compress(data)

    def decode(self, stored, decoded_len: int, stride: int = 1) -> bytes:
        if decoded_len > max_decoded(len(stored)):
            raise LimitError(f"zstd section of {len(stored)} bytes claims {decoded_len} decoded bytes (limit {max_decoded(len(stored))})")
        out = np.empty(decoded_len, np.uint8)  # decoded straight into a writable buffer: tensors keep it, no copy
        try:
            with _zstd().ZstdDecompressor().stream_reader(stored, read_across_frames=False) as r:
                got = 0
                view = memoryview(out).cast("B")
                while got < decoded_len:
                    n = r.readinto(view[got:])
                    if not n:
                        break
                    got += n
                extra = r.read(1) if got == decoded_len else b""
        except EncodeError:
            raise
        except Exception as e:  # zstandard.ZstdError and friends
            raise FormatError(f"zstd section does not decompress: {e}") from None
        if got != decoded_len or extra:
            raise FormatError(f"zstd section decodes to {'more than ' if extra else ''}{got} bytes, "
                              f"header says {decoded_len}")
        return out


class ShuffleZstdFilter(ZstdFilter):
    id = Filter.SHUFFLE_ZSTD

    def encode(self, data: bytes, stride: int = 1, level: int = 19) -> bytes:
        return super().encode(shuffle(data, stride), stride, level)

    def decode(self, stored, decoded_len: int, stride: int = 1):
        if stride <= 1 or decoded_len % stride or decoded_len < STREAM_BYTES:
            return unshuffle(super().decode(stored, decoded_len, stride), stride)
        if decoded_len > max_decoded(len(stored)):
            raise LimitError(f"zstd section of {len(stored)} bytes claims {decoded_len} decoded bytes "
                             f"(limit {max_decoded(len(stored))})")
        # large sections: decoded a cache-sized chunk at a time, each chunk's bytes put straight into
        # their byte plane of the output (no section-sized intermediate buffer)
        n = decoded_len // stride
        out = np.empty((n, stride), np.uint8)
        buf = np.empty(STREAM_CHUNK, np.uint8)
        view = memoryview(buf).cast("B")
        pos = 0
        try:
            with _zstd().ZstdDecompressor().stream_reader(stored, read_across_frames=False) as r:
                while pos < decoded_len:
                    got = r.readinto(view[:min(STREAM_CHUNK, decoded_len - pos)])
                    if not got:
                        break
                    i = 0
                    while i < got:
                        j, off = divmod(pos + i, n)
                        take = min(got - i, n - off)
                        out[off:off + take, j] = buf[i:i + take]
                        i += take
                    pos += got
                extra = r.read(1) if pos == decoded_len else b""
        except Exception as e:  # zstandard.ZstdError and friends
            raise FormatError(f"zstd section does not decompress: {e}") from None
        if pos != decoded_len or extra:
            raise FormatError(f"zstd section decodes to {'more than ' if extra else ''}{pos} bytes, "
                              f"header says {decoded_len}")
        return out.reshape(-1)


FILTERS = {f.id: f for f in (NoFilter(), ZstdFilter(), ShuffleZstdFilter())}


def get_filter(fid: int):
    try:
        return FILTERS[Filter(fid)]
    except (ValueError, KeyError):
        raise FormatError(f"unknown section filter {fid!r}; known: {[int(f) for f in Filter]}") from None


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
        return True
    except ImportError:
        return False


def unfilter(role, fid: int, stored, decoded_len: int, itemsize: int):
    """The decoded bytes of one section: filter `fid` undone with the role's element stride (spec §5.6)."""
    return get_filter(fid).decode(stored, decoded_len, role_stride(role, itemsize))
