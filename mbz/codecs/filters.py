"""Entropy stage of one payload section (spec §5.6, table 7).

Each filter is a small class with ``encode(data, stride) -> bytes`` and
``decode(stored, decoded_len, stride) -> bytes``; FILTERS is the registry.
zstandard is imported lazily so that GPU-side tools (which may lack it) can
import mbz; only writing or reading a zstd section needs it.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import EncodeError, FormatError, LimitError
from ..spec import EXPANSION_SLACK, MAX_EXPANSION, ZSTD_MIN_WINDOW, Filter, role_stride


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


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_zstd_frame(stored, max_len: int, exact: bool) -> None:
    """Check that `stored` is exactly one zstd frame (RFC 8878) fit to decode into at most `max_len` bytes.

    Spec §5.6: one frame, nothing before or after it; no dictionary; the reserved bit zero; a content
    size field, when present, equal to the decoded length (`exact`) or at most `max_len`; a window of
    at most max(ZSTD_MIN_WINDOW, 2 * max_len) bytes; every block header within the bytes.  The block
    walk reads only the 3-byte block headers.  Raises FormatError / LimitError.
    """
    mv = memoryview(stored)
    n = len(mv)
    if n < 6 or bytes(mv[:4]) != ZSTD_MAGIC:
        raise FormatError(f"not a zstd frame (expected magic {ZSTD_MAGIC.hex()} and at least 6 bytes, got {n} bytes)")
    fhd = mv[4]
    fcs_flag, single, reserved, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 3) & 1, (fhd >> 2) & 1, fhd & 3
    if reserved:
        raise FormatError("zstd frame header has its reserved bit set")
    if dict_flag:
        raise FormatError("zstd frame names a dictionary; mbz sections use none")
    i = 5
    window = None
    if not single:
        wd = mv[i]
        i += 1
        base = 1 << (10 + (wd >> 3))
        window = base + (base >> 3) * (wd & 7)
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if i + fcs_len > n:
        raise FormatError(f"zstd frame header needs {i + fcs_len} bytes, section has {n}")
    fcs = None
    if fcs_len:
        fcs = int.from_bytes(mv[i:i + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        i += fcs_len
        if exact and fcs != max_len:
            raise FormatError(f"zstd frame declares {fcs} content bytes, the header says {max_len}")
        if fcs > max_len:
            raise LimitError(f"zstd frame declares {fcs} content bytes, limit {max_len}")
    if window is None:
        window = fcs
    wmax = max(ZSTD_MIN_WINDOW, 2 * max_len)
    if window > wmax:
        raise LimitError(f"zstd frame window of {window} bytes exceeds max({ZSTD_MIN_WINDOW}, 2 x {max_len}) = {wmax}")
    while True:
        if i + 3 > n:
            raise FormatError(f"zstd block header at byte {i} runs past the section end ({n} bytes)")
        bh = mv[i] | (mv[i + 1] << 8) | (mv[i + 2] << 16)
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        i += 3
        if btype == 3:
            raise FormatError(f"zstd block at byte {i - 3} has the reserved block type")
        i += 1 if btype == 1 else bsize
        if last:
            break
    i += 4 if checksum else 0
    if i != n:
        what = f"{n - i} bytes follow the zstd frame" if i < n else f"zstd frame runs {i - n} bytes past the section end"
        raise FormatError(f"{what}; a section holds exactly one frame")


def zstd_decompress(stored, decoded_len: int, exact: bool = True):
    """One checked zstd frame -> its bytes: exactly `decoded_len` of them (`exact`), else at most that many.

    The bytes are decoded straight into a writable uint8 array that decoded tensors may keep (no copy).
    Never allocates more than `decoded_len` output bytes, whatever the frame declares.
    """
    if 0 < decoded_len <= ONESHOT_BYTES:
        check_zstd_frame(stored, decoded_len, exact)
        try:  # one call; anything unexpected is decoded again below, which names the fault
            got = _dctx().decompress(stored, max_output_size=decoded_len)
        except Exception:
            got = None
        if got is not None and len(got) == decoded_len:
            return np.frombuffer(bytearray(got), np.uint8)
    out = np.empty(decoded_len, np.uint8)
    view = memoryview(out).cast("B")

    def sink(pos, got):
        return view[pos:]
    got = _zstd_stream(stored, decoded_len, exact, sink)
    return out if got == decoded_len else out[:got]


ONESHOT_BYTES = 64 << 10  # sections decoding to at most this many bytes: one decompress call, no stream
_local = threading.local()


def _dctx():
    """This thread's zstd decompressor for small sections (a decompressor is not shared between threads)."""
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = _zstd().ZstdDecompressor(max_window_size=max(ZSTD_MIN_WINDOW, 2 * ONESHOT_BYTES))
    return d


def _zstd_stream(stored, decoded_len: int, exact: bool, target) -> int:
    """Decode one checked zstd frame (check_zstd_frame) through `target(pos, last) -> writable view`,
    called before each read with the bytes decoded so far; returns the count of decoded bytes.

    Raises FormatError for a frame that does not decompress, decodes to more than `decoded_len`
    bytes, or (`exact`) to fewer."""
    check_zstd_frame(stored, decoded_len, exact)
    dctx = _zstd().ZstdDecompressor(max_window_size=max(ZSTD_MIN_WINDOW, 2 * decoded_len))
    pos, extra, last = 0, b"", 0
    try:
        with dctx.stream_reader(stored, read_across_frames=False) as r:
            while pos < decoded_len:
                view = target(pos, last)
                last = r.readinto(view)
                if not last:
                    break
                pos += last
            target(pos, last) if pos and last else None
            if pos == decoded_len:
                extra = r.read(1)
    except (EncodeError, FormatError):
        raise
    except Exception as e:  # zstandard.ZstdError and friends
        raise FormatError(f"zstd frame does not decompress ({_why(e)})") from None
    if extra or exact and pos != decoded_len:
        raise FormatError(f"zstd frame decodes to {'more than ' if extra else ''}{pos} bytes, "
                          f"{'header says' if exact else 'limit'} {decoded_len}")
    return pos


def _why(e: Exception) -> str:
    """An exception as text that is never empty."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
        return zstd_decompress(stored, decoded_len)


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

        def target(pos, got):  # the chunk just read (`got` bytes ending at `pos`) put into its planes
            i, start = 0, pos - got
            while i < got:
                j, off = divmod(start + i, n)
                take = min(got - i, n - off)
                out[off:off + take, j] = buf[i:i + take]
                i += take
            return view[:min(STREAM_CHUNK, decoded_len - pos)]
        _zstd_stream(stored, decoded_len, True, target)
        return out.reshape(-1)


class RansFilter:
    """Static-model rANS of the section's packed codes (spec §5.7); the stored bytes describe themselves.

    encode(data, stride, level, w=8, signed=False, row=0, steps=1024): `w`/`signed` say how to read the
    decoded bytes as §5.1 codes, `row` the row length for the upper-neighbour context, `steps` the most
    symbols a lane codes (fewer steps: more lanes, faster decoding, a few more bytes).
    """
    id = Filter.RANS

    def encode(self, data: bytes, stride: int = 1, level: int = 0, w: int = 8, signed: bool = False,
               row: int = 0, steps: int = 1024) -> bytes:
        from . import rans
        return rans.encode(data, w, signed, row, steps)

    def decode(self, stored, decoded_len: int, stride: int = 1) -> bytes:
        from . import rans
        if decoded_len > max_decoded(len(stored)):
            raise LimitError(f"rans section of {len(stored)} bytes claims {decoded_len} decoded bytes (limit {max_decoded(len(stored))})")
        return rans.decode(stored, decoded_len)


class AransFilter:
    """Adaptive binary context models over lane-interleaved rANS (spec §5.8); the stored bytes describe
    themselves.  encode(data, stride, level, kind, w, signed, row, steps): see arans.encode_many."""
    id = Filter.ARANS

    def encode(self, data: bytes, stride: int = 1, level: int = 0, kind: int = 0, w: int = 8,
               signed: bool = False, row: int = 0, steps: int = 16384) -> bytes:
        from . import arans
        return arans.encode(data, kind, w, signed, row, steps)

    def decode(self, stored, decoded_len: int, stride: int = 1) -> bytes:
        from . import arans
        if decoded_len > max_decoded(len(stored)):
            raise LimitError(f"arans section of {len(stored)} bytes claims {decoded_len} decoded bytes (limit {max_decoded(len(stored))})")
        return arans.decode(stored, decoded_len)


FILTERS = {f.id: f for f in (NoFilter(), ZstdFilter(), ShuffleZstdFilter(), RansFilter(), AransFilter())}


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
