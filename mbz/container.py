"""The .mbz container: writing, and all validation of untrusted bytes (spec §2–§4, §7).

Writer and reader are separate and symmetric.  ``FileLayout`` is what the
reader learned from a file after checking every field against the spec; the
tensor decoder (decoder.py) only ever sees validated records.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import zlib
from dataclasses import dataclass

import msgpack

from .codecs.affine import n_groups, numel_of
from .codecs.bitpack import packed_size
from .codecs.filters import FILTERS, max_decoded, unfilter, zstd_available
from .codecs.raw import ITEMSIZE
from .errors import ChecksumError, FormatError, LimitError, TruncatedError, VersionError
from .spec import (ENCODING_ROLES, H_ALIGN, H_CRCS, H_FORMAT, H_META, H_PAYLOAD, H_TENSORS, MAGIC,
                   MAX_ALIGN, MAX_HEADER_BYTES, MAX_RANK, MAX_WIDTH, PREAMBLE, PREAMBLE_SIZE, T_DTYPE,
                   T_ENC, T_NAME, T_PARAMS, T_SECTIONS, T_SHAPE, VERSION_MAJOR, VERSION_MINOR, DType,
                   P_AXIS, P_COUNT, P_GRAN, P_GROUP, P_IWIDTH, P_K, P_NEGZERO, P_SIGNED, P_SPARSE, P_WIDTH,
                   P_ZPWIDTH, Encoding, Filter, Granularity, HeaderCodec, Role, Sparsity)
from .spec import H_MAIN, H_TREE, P_SCALE_BYTES, P_ZPSIGNED, QUANTIZED_DTYPES


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


# --------------------------------------------------------------------------- writer
def write_file(path, tensors, meta: dict | None = None, align: int = 1, compress_header: bool = True,
               structure: dict | None = None) -> int:
    """Write encoded tensors atomically; returns the file size.

    `structure`: the optional header keys of spec §3.1 ({'tree': node, 'main': [key...]})."""
    if align < 1 or align > MAX_ALIGN or align & (align - 1):
        raise FormatError(f"align must be a power of two in 1..{MAX_ALIGN}, got {align}")
    records, chunks, crcs = [], [], []
    off = 0
    for et in tensors:
        secs, crc = [], 0
        for s in et.sections:
            start = align_up(off, align)
            if start > off:
                chunks.append(b"\0" * (start - off))
            chunks.append(s.data)
            secs.append([int(s.role), start, len(s.data), int(s.filter), s.decoded_len])
            crc = zlib.crc32(s.data, crc)
            off = start + len(s.data)
        crcs.append(crc)
        records.append({T_NAME: et.name, T_DTYPE: int(et.dtype), T_SHAPE: [int(d) for d in et.shape],
                        T_ENC: int(et.encoding), T_PARAMS: et.params, T_SECTIONS: secs})
    crc_off = align_up(off, align)
    if crc_off > off:
        chunks.append(b"\0" * (crc_off - off))
    chunks.append(b"".join(c.to_bytes(4, "little") for c in crcs))
    payload = crc_off + 4 * len(crcs)
    header = msgpack.packb({H_FORMAT: "mbz", H_PAYLOAD: payload, H_ALIGN: align, H_CRCS: crc_off,
                            H_META: meta or {}, H_TENSORS: records, **(structure or {})}, use_bin_type=True)
    codec, block = HeaderCodec.NONE, header
    if compress_header and zstd_available():
        z = FILTERS[Filter.ZSTD].encode(header, 1, 19)
        if len(z) < len(header) and len(header) <= max_decoded(len(z)):
            codec, block = HeaderCodec.ZSTD, z
    if len(header) > MAX_HEADER_BYTES:
        raise FormatError(f"header of {len(header)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    pre = PREAMBLE.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, int(codec), b"\0\0\0", len(block), zlib.crc32(block))
    head_end = PREAMBLE_SIZE + len(block)
    pad = align_up(head_end, align) - head_end
    atomic_write(path, [pre, block, b"\0" * pad] + chunks)
    return head_end + pad + payload


def atomic_write(path, chunks) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: never a partial file."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(2, "output folder does not exist", d)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "output is a directory", path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------- reader
@dataclass
class SectionRef:
    role: Role
    offset: int       # absolute file offset
    stored: int
    filter: Filter
    decoded: int


@dataclass
class Record:
    index: int
    name: str
    dtype: DType
    shape: tuple
    encoding: Encoding
    params: dict
    sections: list    # [SectionRef]
    crc: int


@dataclass
class FileLayout:
    file_size: int
    major: int
    minor: int
    header_codec: HeaderCodec
    header_stored: int
    header_raw: bytes
    payload_start: int
    align: int
    crc_offset: int
    meta: dict
    records: list
    tree: object = None      # spec §3.1: the checkpoint's structure (None: a flat state_dict)
    main: list = None        # key path of the state_dict within the tree


def _fail(what: str, where: str = "") -> FormatError:
    return FormatError(f"{where}: {what}" if where else what)


def _int(v, where, lo=0, hi=None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _fail(f"expected an integer in {rng}, got {v!r}", where)
    return v


# value -> member of every enum a file's fields name (a dict lookup is ~10x cheaper than cls(v))
_MEMBERS: dict = {cls: {int(m): m for m in cls}
                  for cls in (HeaderCodec, Role, Filter, DType, Encoding, Sparsity, Granularity)}


def _enum(cls, v, where):
    m = _MEMBERS[cls].get(v) if type(v) is int else None
    if m is not None:
        return m
    _int(v, where)
    raise _fail(f"unknown {cls.__name__} value {v} (known: {[int(x) for x in cls]})", where)


def parse(buf) -> FileLayout:
    """Validate a whole file held in `buf` (bytes or mmap); checksums of tensor data are checked on decode."""
    size = len(buf)
    if size < PREAMBLE_SIZE:
        if size >= 8 and bytes(buf[:8]) != MAGIC:
            raise FormatError(f"not an .mbz file: bad magic at offset 0 (expected {MAGIC!r})")
        raise TruncatedError(f"file is {size} bytes; the preamble alone is {PREAMBLE_SIZE}")
    magic, major, minor, codec, reserved, hlen, hcrc = PREAMBLE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"not an .mbz file: bad magic {magic!r} at offset 0 (expected {MAGIC!r})")
    if major > VERSION_MAJOR:
        raise VersionError(f"file format version {major}.{minor} is newer than this reader "
                           f"({VERSION_MAJOR}.{VERSION_MINOR}); upgrade mbz to read it")
    if major < 1:
        raise VersionError(f"file format version {major}.{minor} is not a released version")
    codec = _enum(HeaderCodec, codec, "preamble offset 12 (header codec)")
    if reserved != b"\0\0\0":
        raise FormatError("preamble offset 13: reserved bytes must be zero")
    if hlen > size - PREAMBLE_SIZE:
        raise TruncatedError(f"header claims {hlen} bytes at offset {PREAMBLE_SIZE}, file has only {size - PREAMBLE_SIZE} after the preamble")
    block = bytes(buf[PREAMBLE_SIZE:PREAMBLE_SIZE + hlen])
    if zlib.crc32(block) != hcrc:
        raise ChecksumError(f"header checksum mismatch (offset {PREAMBLE_SIZE}, {hlen} bytes): file is corrupt")
    if codec == HeaderCodec.ZSTD:
        raw_len = min(MAX_HEADER_BYTES, max_decoded(hlen))
        try:
            import io

            import zstandard
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(block)) as r:
                raw = r.read(raw_len + 1)
        except ImportError:
            raise FormatError("header is zstd-compressed; install 'zstandard' to read it") from None
        except Exception as e:
            raise FormatError(f"header block does not decompress: {e}") from None
        if len(raw) > raw_len:
            raise LimitError(f"header expands to {len(raw)} bytes, limit {raw_len}")
    else:
        raw = block
    if len(raw) > MAX_HEADER_BYTES:
        raise LimitError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:
        raise FormatError(f"header is not valid msgpack: {e}") from None
    if not isinstance(h, dict):
        raise FormatError(f"header must be a map, got {type(h).__name__}")
    if h.get(H_FORMAT) != "mbz":
        raise FormatError(f"header key '{H_FORMAT}' must be 'mbz', got {h.get(H_FORMAT)!r}")
    align = _int(h.get(H_ALIGN), f"header '{H_ALIGN}'", 1, MAX_ALIGN)
    if align & (align - 1):
        raise FormatError(f"header '{H_ALIGN}' must be a power of two, got {align}")
    payload = _int(h.get(H_PAYLOAD), f"header '{H_PAYLOAD}'")
    pstart = align_up(PREAMBLE_SIZE + hlen, align)
    if pstart + payload > size:
        raise TruncatedError(f"file is {size} bytes but header and payload need {pstart + payload}")
    if pstart + payload < size:
        raise FormatError(f"{size - pstart - payload} unexpected bytes after the payload end at offset {pstart + payload}")
    if any(bytes(buf[PREAMBLE_SIZE + hlen:pstart])):
        raise FormatError(f"padding at offsets {PREAMBLE_SIZE + hlen}..{pstart} must be zero")
    meta = h.get(H_META, {})
    if not isinstance(meta, dict):
        raise FormatError(f"header '{H_META}' must be a map")
    tensors = h.get(H_TENSORS)
    if not isinstance(tensors, list):
        raise FormatError(f"header '{H_TENSORS}' must be a list")
    crc_off = _int(h.get(H_CRCS), f"header '{H_CRCS}'")
    if crc_off + 4 * len(tensors) != payload:
        raise FormatError(f"checksum table at payload offset {crc_off} with {len(tensors)} entries "
                          f"does not end at the payload end {payload}")
    records, names, cursor = [], set(), 0
    for i, r in enumerate(tensors):
        rec, cursor = _record(i, r, cursor, align, pstart, buf)
        if rec.name in names:
            raise FormatError(f"tensor '{rec.name}' appears twice")
        names.add(rec.name)
        records.append(rec)
    if align_up(cursor, align) != crc_off:
        raise FormatError(f"checksum table expected at payload offset {align_up(cursor, align)}, header says {crc_off}")
    if any(bytes(buf[pstart + cursor:pstart + crc_off])):
        raise FormatError(f"padding before the checksum table (offset {pstart + cursor}) must be zero")
    for rec in records:
        rec.crc = int.from_bytes(bytes(buf[pstart + crc_off + 4 * rec.index:pstart + crc_off + 4 * rec.index + 4]), "little")
    tree, main = h.get(H_TREE), h.get(H_MAIN, [])
    if not isinstance(main, list) or not all(type(k) in (str, int) for k in main):
        raise FormatError(f"header '{H_MAIN}' must be a list of keys (strings or integers), got {main!r}")
    return FileLayout(size, major, minor, codec, hlen, raw, pstart, align, crc_off, meta, records, tree, main)


def _record(i: int, r, cursor: int, align: int, pstart: int, buf):
    where = f"tensor #{i}"
    if not isinstance(r, dict):
        raise FormatError(f"{where}: record must be a map")
    name = r.get(T_NAME)
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"tensor '{name}'"
    dtype = _enum(DType, r.get(T_DTYPE), f"{where} dtype")
    shape = r.get(T_SHAPE)
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise FormatError(f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
    shape = tuple(_int(d, f"{where} shape", 0, 1 << 48) for d in shape)
    numel = numel_of(shape)
    enc = _enum(Encoding, r.get(T_ENC), f"{where} encoding")
    p = r.get(T_PARAMS, {})
    if not isinstance(p, dict):
        raise FormatError(f"{where}: params must be a map")
    if dtype in QUANTIZED_DTYPES and enc != Encoding.AFFINE:
        raise FormatError(f"{where}: quantized dtype {dtype.name} needs the AFFINE encoding")
    p = _params(enc, p, shape, numel, where, dtype)
    secs = r.get(T_SECTIONS)
    if not isinstance(secs, list):
        raise FormatError(f"{where}: sections must be a list")
    refs, roles = [], set()
    roles_by_value, filters_by_value = _MEMBERS[Role], _MEMBERS[Filter]
    for j, s in enumerate(secs):
        sw = f"{where} section #{j}"
        # fast path: five well-formed fields; anything else takes the checks that name the fault
        if (type(s) is list and len(s) == 5 and type(s[1]) is int and type(s[2]) is int and type(s[4]) is int
                and s[1] >= 0 and s[2] >= 0 and s[4] >= 0
                and type(s[0]) is int and s[0] in roles_by_value and type(s[3]) is int and s[3] in filters_by_value):
            role, off, stored, filt, dec = roles_by_value[s[0]], s[1], s[2], filters_by_value[s[3]], s[4]
        else:
            if not isinstance(s, list) or len(s) != 5:
                raise FormatError(f"{sw}: expected [role, offset, stored, filter, decoded], got {s!r}")
            role = _enum(Role, s[0], f"{sw} role")
            off = _int(s[1], f"{sw} offset")
            stored = _int(s[2], f"{sw} stored length")
            filt = _enum(Filter, s[3], f"{sw} filter")
            dec = _int(s[4], f"{sw} decoded length")
        if role in roles:
            raise FormatError(f"{sw}: role {role.name} appears twice")
        roles.add(role)
        want = align_up(cursor, align)
        if off != want:
            what = "overlaps the previous section" if off < want else "leaves a gap after the previous section"
            raise FormatError(f"{sw} ({role.name}) at payload offset {off} {what}; expected offset {want}")
        if any(bytes(buf[pstart + cursor:pstart + off])):
            raise FormatError(f"{sw}: padding before payload offset {off} must be zero")
        cursor = off + stored
        if filt == Filter.NONE and dec != stored:
            raise FormatError(f"{sw}: unfiltered section stores {stored} bytes but declares {dec}")
        if filt != Filter.NONE and dec > max_decoded(stored):
            raise LimitError(f"{sw}: {stored} stored bytes may not expand to {dec} (limit {max_decoded(stored)})")
        exp = _expected_len(role, enc, p, dtype, shape, numel)
        if exp is not None and dec != exp:
            raise FormatError(f"{sw} ({role.name}): decoded length {dec}, expected {exp}")
        if role == Role.NEGZERO and dec > (numel + 7) // 8:
            raise FormatError(f"{sw}: NEGZERO of {dec} bytes exceeds one bit per element")
        refs.append(SectionRef(role, pstart + off, stored, filt, dec))
    required, allowed = ENCODING_ROLES[enc]
    required = set(required)
    if enc != Encoding.RAW:
        sp = p[P_SPARSE]
        required |= {Role.MASK} if sp == Sparsity.BITMAP else {Role.DELTAS} if sp == Sparsity.DELTA else set()
        if p.get(P_ZPWIDTH):
            required.add(Role.ZERO_POINTS)
        if p.get(P_NEGZERO):
            required.add(Role.NEGZERO)
    if roles != required:
        raise FormatError(f"{where}: sections {sorted(x.name for x in roles)}, expected {sorted(x.name for x in required)}")
    return Record(i, name, dtype, shape, enc, p, refs, 0), cursor


def _params(enc: Encoding, p: dict, shape, numel: int, where: str, dtype=None) -> dict:
    if enc == Encoding.RAW:
        return {}
    w = f"{where} params"
    out = {P_WIDTH: _int(p.get(P_WIDTH), f"{w} 'b' (code width)", 1, MAX_WIDTH),
           P_SPARSE: int(_enum(Sparsity, p.get(P_SPARSE), f"{w} 'sp' (sparsity)")),
           P_COUNT: _int(p.get(P_COUNT), f"{w} 'm' (stored codes)", 0, 1 << 48)}
    if out[P_SPARSE] == Sparsity.DELTA:
        out[P_IWIDTH] = _int(p.get(P_IWIDTH), f"{w} 'iw' (index width)", 1, MAX_WIDTH)
        if numel > (out[P_COUNT] + 1) << out[P_IWIDTH]:
            raise LimitError(f"{where}: {out['m']} delta entries of {out['iw']} bits cannot cover {numel} elements")
    elif out[P_SPARSE] == Sparsity.BITMAP and out[P_COUNT] > numel:
        raise FormatError(f"{where}: {out['m']} stored codes for {numel} elements")
    if enc == Encoding.AFFINE:
        g = int(_enum(Granularity, p.get(P_GRAN), f"{w} 'g' (granularity)"))
        out[P_GRAN] = g
        if g == Granularity.CHANNEL:
            out[P_AXIS] = _int(p.get(P_AXIS, 0), f"{w} 'ax' (axis)", 0, max(0, len(shape) - 1))
            if not shape:
                raise FormatError(f"{where}: per-channel scales need a tensor of rank >= 1")
        if g == Granularity.GROUP:
            out[P_GROUP] = _int(p.get(P_GROUP), f"{w} 'gs' (group size)", 1, 1 << 48)
        out[P_ZPWIDTH] = _int(p.get(P_ZPWIDTH, 0), f"{w} 'zb' (zero-point width)", 0, MAX_WIDTH)
        sb = p.get(P_SCALE_BYTES, 4)
        if sb not in (4, 8) or (sb == 8) != (dtype in QUANTIZED_DTYPES):
            raise FormatError(f"{w} 'sb' (scale bytes) must be 8 for quantized dtypes, else 4; got {sb!r}")
        if sb == 8:
            out[P_SCALE_BYTES] = 8
        for key in (P_SIGNED, P_NEGZERO, P_ZPSIGNED):
            v = p.get(key, False)
            if not isinstance(v, bool):
                raise FormatError(f"{w} '{key}' must be a boolean, got {v!r}")
            out[key] = v
    else:
        out[P_K] = _int(p.get(P_K), f"{w} 'k' (codebook entries)", 1, 1 << MAX_WIDTH)
        if out[P_K] > 1 << out[P_WIDTH]:
            raise FormatError(f"{where}: {out['k']} codebook entries cannot be indexed with {out['b']} bits")
    return out


def _expected_len(role: Role, enc: Encoding, p: dict, dtype: DType, shape, numel: int):
    if role == Role.RAW:
        return numel * ITEMSIZE[dtype]
    if role == Role.CODES:
        return packed_size(p[P_COUNT], p[P_WIDTH])
    if role == Role.MASK:
        return (numel + 7) // 8
    if role == Role.DELTAS:
        return packed_size(p[P_COUNT], p[P_IWIDTH])
    if role in (Role.SCALES, Role.ZERO_POINTS):
        g = n_groups(Granularity(p[P_GRAN]), shape, p.get(P_AXIS, 0), p.get(P_GROUP, 0))
        return p.get(P_SCALE_BYTES, 4) * g if role == Role.SCALES else packed_size(g, p[P_ZPWIDTH])
    if role == Role.CODEBOOK:
        return p[P_K] * ITEMSIZE[dtype]
    return None  # NEGZERO: one bit per zero element, known only after decoding


class Source:
    """The bytes of an open file: an mmap (zero copy) or an in-memory buffer."""

    def __init__(self, path=None, data=None):
        self._f = self._mm = None
        if data is not None:
            self.buf = memoryview(data)
            return
        if os.path.isdir(path):
            raise IsADirectoryError(21, "is a directory, not a .mbz file", os.fspath(path))
        self._f = open(path, "rb")
        size = os.fstat(self._f.fileno()).st_size
        if size == 0:
            self.buf = memoryview(b"")
        else:
            self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
            self.buf = memoryview(self._mm)

    def close(self):
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a traceback still holds a slice; the map closes when it is freed
                pass
            self._mm = None
        if self._f is not None:
            self._f.close()


def read_sections(buf, rec: Record) -> dict:
    """Stored bytes of a record's sections, checksum-verified, then unfiltered."""
    crc = 0
    stored = []
    for s in rec.sections:
        b = buf[s.offset:s.offset + s.stored]
        crc = zlib.crc32(b, crc)
        stored.append(b)
    if crc != rec.crc:
        raise ChecksumError(f"tensor '{rec.name}': data checksum mismatch (sections at offset "
                            f"{rec.sections[0].offset if rec.sections else '-'}): file is corrupt")
    item = ITEMSIZE[rec.dtype]
    return {s.role: unfilter(s.role, s.filter, b, s.decoded, item) for s, b in zip(rec.sections, stored)}


__all__ = ["write_file", "parse", "read_sections", "Source", "FileLayout", "Record"]
