"""The .mbz container: writing, and all validation of untrusted bytes (spec §2–§4, §7).

Writer and reader are separate and symmetric.  ``FileLayout`` is what the
reader learned from a file after checking every field against the spec; the
tensor decoder (decoder.py) only ever sees validated records.
"""
from __future__ import annotations

import errno
import mmap
import os
import stat
import tempfile
import zlib
from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from .codecs.affine import n_groups, numel_of
from .codecs.bitpack import packed_size
from .codecs.filters import FILTERS, max_decoded, unfilter, zstd_available, zstd_decompress
from .codecs.raw import ITEMSIZE
from .errors import (ChecksumError, EncodeError, FormatError, LimitError, MbzError, TruncatedError, VersionError,
                     path_error)
from .headerscan import checked_object
from .paths import open_input
from .spec import (ELEMENT_SLACK, ELEMENTS_PER_BYTE, ENCODING_DTYPES, ENCODING_ROLES, ENCODING_SPARSITY, H_ALIGN,
                   H_CRCS, H_FORMAT, H_META, H_PAYLOAD, H_TENSORS, HEADER_KEYS, KNOWN_PARAMS, MAGIC, MAX_ALIGN,
                   MAX_DIM_PRODUCT, MAX_HEADER_BYTES, MAX_RANK, PARAM_DEFAULTS, PARAM_RULES, PREAMBLE, PREAMBLE_SIZE,
                   RECORD_KEYS, T_DTYPE, T_ENC, T_NAME, T_PARAMS, T_SECTIONS, T_SHAPE, VERSION_MAJOR, VERSION_MINOR,
                   DType, P_AXIS, P_COUNT, P_GRAN, P_GROUP, P_IWIDTH, P_K, P_NEGZERO, P_SIGNED, P_SPARSE, P_WIDTH,
                   P_ZPWIDTH, Encoding, Filter, Granularity, HeaderCodec, Role, Sparsity, max_elements,
                   max_header_objects)
from .spec import FLOAT_DTYPES, H_MAIN, H_TREE, P_SCALE_BYTES, P_ZPSIGNED, QUANTIZED_DTYPES
from .structure import check_tree


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


# --------------------------------------------------------------------------- writer
PLAIN_ALIGN = 64  # the alignment auto_align picks for files with large unfiltered RAW sections


def auto_align(tensors) -> int:
    """PLAIN_ALIGN when the tensors hold an unfiltered RAW section of PLAIN_MIN bytes or more (read in place,
    see read_sections) and the padding costs at most 1/256 of those sections' bytes; else 1."""
    plain = sum(len(s.data) for et in tensors for s in et.sections
                if s.role == Role.RAW and s.filter == Filter.NONE and len(s.data) >= PLAIN_MIN)
    if not plain:
        return 1
    off = pad = 0
    for et in tensors:
        for s in et.sections:
            start = align_up(off, PLAIN_ALIGN)
            pad += start - off
            off = start + len(s.data)
    return PLAIN_ALIGN if pad * 256 <= plain else 1


def write_file(path, tensors, meta: dict | None = None, align: int | None = 1, compress_header: bool = True,
               structure: dict | None = None) -> int:
    """Write encoded tensors atomically; returns the file size.

    `align` None: auto_align.  `structure`: the optional header keys of spec §3.1 ({'tree': node, 'main': [key...]})."""
    if align is None:
        align = auto_align(tensors)
    if align < 1 or align > MAX_ALIGN or align & (align - 1):
        raise EncodeError(f"header '{H_ALIGN}' must be a power of two in 1..{MAX_ALIGN}, got {align}")
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
    try:
        header = msgpack.packb({H_FORMAT: "mbz", H_PAYLOAD: payload, H_ALIGN: align, H_CRCS: crc_off,
                                H_META: meta or {}, H_TENSORS: records, **(structure or {})}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"metadata cannot be stored as msgpack ({type(e).__name__}: {e}); use str keys and "
                          "None, bool, int, float, str, bytes, list and dict values") from None
    codec, block = HeaderCodec.NONE, header
    if compress_header and zstd_available():
        z = FILTERS[Filter.ZSTD].encode(header, 1, 19)
        if len(z) < len(header) and len(header) <= max_decoded(len(z)):
            codec, block = HeaderCodec.ZSTD, z
    if len(header) > MAX_HEADER_BYTES:
        raise EncodeError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    head_end = PREAMBLE_SIZE + len(block)
    pad = align_up(head_end, align) - head_end
    try:  # the reader's own checks: what it would refuse is refused here first, with its message
        check_header(header_object(header, head_end + pad + payload), len(block), head_end + pad + payload)
    except FormatError as e:
        raise EncodeError(str(e)) from None
    pre = PREAMBLE.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, int(codec), b"\0\0\0", len(block), zlib.crc32(block))
    atomic_write(path, [pre, block, b"\0" * pad] + chunks)
    return head_end + pad + payload


def atomic_write(path, chunks) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: never a partial file."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise path_error(errno.ENOENT, f"output folder {d} does not exist", path)
    if os.path.isdir(path):
        raise path_error(errno.EISDIR, "is a directory; give a file name for the output", path)
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        # a rename would replace a device, pipe or link with a regular file
        raise path_error(errno.EEXIST, "output exists and is not a regular file (a device, pipe or link); "
                                       "mbz writes regular files only", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    except OSError as e:  # name the output the user gave, not the temporary file
        raise path_error(e.errno, f"cannot write the output: {e.strerror or e}", path) from None
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
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # a full disk, a quota ...: named by the output the user gave
            raise path_error(e.errno, f"cannot write the output: {e.strerror or e}", path) from None
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
    """Validate a whole file held in `buf` (bytes or mmap); checksums of tensor data are checked on decode.

    Every structural rule of spec §2–§4 and §7 is checked here, before anything is decoded; raises a
    FormatError subclass naming the field, tensor, section or offset.
    """
    size = len(buf)
    if size < PREAMBLE_SIZE:
        if size and bytes(buf[:8]) != MAGIC[:min(size, 8)]:  # a text file of a few bytes is no .mbz either
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
    raw = decode_header_block(codec, block)
    h = header_object(raw, size)
    layout = check_header(h, hlen, size, buf)
    layout.major, layout.minor, layout.header_codec, layout.header_raw = major, minor, codec, raw
    return layout


def decode_header_block(codec: HeaderCodec, block: bytes) -> bytes:
    """The header's msgpack bytes from its stored block (spec §2 table 1, §7 header limits)."""
    if codec == HeaderCodec.NONE:
        raw = block
    else:
        if not zstd_available():
            raise FormatError("header is zstd-compressed; install 'zstandard' to read it")
        limit = min(MAX_HEADER_BYTES, max_decoded(len(block)))
        try:
            raw = zstd_decompress(block, limit, exact=False)
        except FormatError as e:
            raise type(e)(f"header block (offset {PREAMBLE_SIZE}): {e}") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise LimitError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return raw


def header_object(raw: bytes, file_size: int):
    """Scan (objects, depth, key types, ext types) then unpack the header msgpack (spec §3, §7)."""
    return checked_object(raw, max_header_objects(file_size))


def check_header(h, hlen: int, size: int, buf=None) -> FileLayout:
    """Every rule of the unpacked header (spec §3–§5, §7); `buf` (the file) adds the zero-padding checks."""
    if not isinstance(h, dict):
        raise FormatError(f"header must be a map, got {type(h).__name__}")
    for key, required in HEADER_KEYS.items():
        if required and key not in h:
            raise FormatError(f"header lacks the required key '{key}'")
    if h[H_FORMAT] != "mbz":
        raise FormatError(f"header key '{H_FORMAT}' must be 'mbz', got {h[H_FORMAT]!r}")
    align = _int(h[H_ALIGN], f"header '{H_ALIGN}'", 1, MAX_ALIGN)
    if align & (align - 1):
        raise FormatError(f"header '{H_ALIGN}' must be a power of two, got {align}")
    payload = _int(h[H_PAYLOAD], f"header '{H_PAYLOAD}'")
    pstart = align_up(PREAMBLE_SIZE + hlen, align)
    if pstart + payload > size:
        raise TruncatedError(f"file is {size} bytes but header and payload need {pstart + payload}")
    if pstart + payload < size:
        raise FormatError(f"{size - pstart - payload} unexpected bytes after the payload end at offset {pstart + payload}")
    if buf is not None and any(bytes(buf[PREAMBLE_SIZE + hlen:pstart])):
        raise FormatError(f"padding at offsets {PREAMBLE_SIZE + hlen}..{pstart} must be zero")
    meta = h.get(H_META, {})
    if not isinstance(meta, dict):
        raise FormatError(f"header '{H_META}' must be a map, got {type(meta).__name__}")
    tensors = h[H_TENSORS]
    if not isinstance(tensors, list):
        raise FormatError(f"header '{H_TENSORS}' must be a list, got {type(tensors).__name__}")
    crc_off = _int(h[H_CRCS], f"header '{H_CRCS}'")
    if crc_off + 4 * len(tensors) != payload:
        raise FormatError(f"checksum table at payload offset {crc_off} with {len(tensors)} entries "
                          f"does not end at the payload end {payload}")
    records, names, cursor, elements = [], set(), 0, 0
    budget = max_elements(size)
    for i, r in enumerate(tensors):
        rec, cursor = _record(i, r, cursor, align, pstart, buf)
        if rec.name in names:
            raise FormatError(f"tensor '{rec.name}' appears twice")
        names.add(rec.name)
        elements += numel_of(rec.shape)
        if elements > budget:
            raise LimitError(f"tensor '{rec.name}': the tensors up to this one hold {elements} elements; a file of "
                             f"{size} bytes may hold at most {budget} ({ELEMENTS_PER_BYTE} x size + {ELEMENT_SLACK})")
        records.append(rec)
    if align_up(cursor, align) != crc_off:
        raise FormatError(f"checksum table expected at payload offset {align_up(cursor, align)}, header says {crc_off}")
    if buf is not None:
        if any(bytes(buf[pstart + cursor:pstart + crc_off])):
            raise FormatError(f"padding before the checksum table (offset {pstart + cursor}) must be zero")
        for rec in records:
            at = pstart + crc_off + 4 * rec.index
            rec.crc = int.from_bytes(bytes(buf[at:at + 4]), "little")
    tree, main = h.get(H_TREE), h.get(H_MAIN, [])
    if not isinstance(main, list) or not all(type(k) in (str, int) for k in main):
        raise FormatError(f"header '{H_MAIN}' must be a list of keys (strings or integers), got {main!r}")
    if tree is not None:
        check_tree(tree, main, records)
    return FileLayout(size, VERSION_MAJOR, VERSION_MINOR, HeaderCodec.NONE, hlen, b"", pstart, align, crc_off,
                      meta, records, tree, main)


_F_NONE, _R_NEGZERO = Filter.NONE, Role.NEGZERO


def _sw(where: str, j: int) -> str:
    return f"{where} section #{j}"


_REQUIRED_RECORD_KEYS = frozenset(k for k, required in RECORD_KEYS.items() if required)


def _record(i: int, r, cursor: int, align: int, pstart: int, buf):
    where = f"tensor #{i}"
    if not isinstance(r, dict):
        raise FormatError(f"{where}: record must be a map, got {type(r).__name__}")
    name = r.get(T_NAME)
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"tensor '{name}'"
    if not r.keys() >= _REQUIRED_RECORD_KEYS:
        key = next(k for k, required in RECORD_KEYS.items() if required and k not in r)
        raise FormatError(f"{where}: record lacks the required key '{key}'")
    dtype = _MEMBERS[DType].get(r[T_DTYPE]) if type(r[T_DTYPE]) is int else None
    if dtype is None:
        dtype = _enum(DType, r[T_DTYPE], f"{where} dtype")
    shape = r[T_SHAPE]
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise FormatError(f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
    if not all(type(d) is int and 0 <= d <= MAX_DIM_PRODUCT for d in shape):
        shape = tuple(_int(d, f"{where} shape", 0, MAX_DIM_PRODUCT) for d in shape)
    shape = tuple(shape)
    nonzero = numel_of(d for d in shape if d)
    if nonzero > MAX_DIM_PRODUCT:
        raise LimitError(f"{where}: shape {list(shape)} has a product of nonzero sizes {nonzero}, "
                         f"limit {MAX_DIM_PRODUCT}")
    numel = numel_of(shape)
    enc = _MEMBERS[Encoding].get(r[T_ENC]) if type(r[T_ENC]) is int else None
    if enc is None:
        enc = _enum(Encoding, r[T_ENC], f"{where} encoding")
    if dtype not in ENCODING_DTYPES[enc]:
        raise FormatError(f"{where}: encoding {enc.name} is not defined for dtype {dtype.name} "
                          f"(allowed: {', '.join(d.name for d in DType if d in ENCODING_DTYPES[enc])})")
    p = r.get(T_PARAMS, {})
    if not isinstance(p, dict):
        raise FormatError(f"{where}: params must be a map, got {type(p).__name__}")
    p = _params(enc, p, shape, numel, where, dtype)
    secs = r[T_SECTIONS]
    if not isinstance(secs, list):
        raise FormatError(f"{where}: sections must be a list, got {type(secs).__name__}")
    required, allowed = ENCODING_ROLES[enc]
    refs, roles = [], set()
    roles_by_value, filters_by_value = _MEMBERS[Role], _MEMBERS[Filter]
    for j, s in enumerate(secs):
        # fast path: five well-formed fields; anything else takes the checks that name the fault
        if (type(s) is list and len(s) == 5 and type(s[1]) is int and type(s[2]) is int and type(s[4]) is int
                and s[1] >= 0 and s[2] >= 0 and s[4] >= 0
                and type(s[0]) is int and s[0] in roles_by_value and type(s[3]) is int and s[3] in filters_by_value):
            role, off, stored, filt, dec = roles_by_value[s[0]], s[1], s[2], filters_by_value[s[3]], s[4]
        else:
            sw = f"{where} section #{j}"
            if not isinstance(s, list) or len(s) != 5:
                raise FormatError(f"{sw}: expected [role, offset, stored, filter, decoded], got {s!r}")
            role = _enum(Role, s[0], f"{sw} role")
            off = _int(s[1], f"{sw} offset")
            stored = _int(s[2], f"{sw} stored length")
            filt = _enum(Filter, s[3], f"{sw} filter")
            dec = _int(s[4], f"{sw} decoded length")
        if role not in allowed:
            raise FormatError(f"{_sw(where, j)}: role {role.name} is not a section of {enc.name} "
                              f"(allowed: {', '.join(x.name for x in Role if x in allowed)})")
        if role in roles:
            raise FormatError(f"{_sw(where, j)}: role {role.name} appears twice")
        roles.add(role)
        want = cursor if align == 1 else align_up(cursor, align)
        if off != want:
            what = "overlaps the previous section" if off < want else "leaves a gap after the previous section"
            raise FormatError(f"{_sw(where, j)} ({role.name}) at payload offset {off} {what}; "
                              f"expected offset {want}")
        if buf is not None and off > cursor and any(bytes(buf[pstart + cursor:pstart + off])):
            raise FormatError(f"{_sw(where, j)}: padding before payload offset {off} must be zero")
        cursor = off + stored
        if filt == _F_NONE:
            if dec != stored:
                raise FormatError(f"{_sw(where, j)} ({role.name}): unfiltered section stores {stored} bytes "
                                  f"but declares {dec}")
        elif dec > max_decoded(stored):
            raise LimitError(f"{_sw(where, j)} ({role.name}): {stored} stored bytes may not expand to {dec} "
                             f"(limit {max_decoded(stored)})")
        exp = _expected_len(role, enc, p, dtype, shape, numel)
        if exp is not None and dec != exp:
            raise FormatError(f"{_sw(where, j)} ({role.name}): decoded length {dec}, expected {exp}")
        if role == _R_NEGZERO and dec > (numel + 7) // 8:
            raise FormatError(f"{_sw(where, j)} (NEGZERO): {dec} bytes exceed one bit per element "
                              f"({(numel + 7) // 8})")
        refs.append(SectionRef(role, pstart + off, stored, filt, dec))
    required = set(required)
    sp = p[P_SPARSE]
    required |= {Role.MASK} if sp == Sparsity.BITMAP else {Role.DELTAS} if sp == Sparsity.DELTA else set()
    if enc != Encoding.RAW and p.get(P_ZPWIDTH):
        required.add(Role.ZERO_POINTS)
    if p.get(P_NEGZERO):
        required.add(Role.NEGZERO)
    if roles != required:
        raise FormatError(f"{where}: sections {sorted(x.name for x in roles)}, expected {sorted(x.name for x in required)}")
    return Record(i, name, dtype, shape, enc, p, refs, 0), cursor


_PARAMS_SEEN: dict = {}   # (encoding, dtype, rank, params but the count, with types) -> checked params


def _params(enc: Encoding, p: dict, shape, numel: int, where: str, dtype: DType) -> dict:
    """Params checked against spec table 9 (PARAM_RULES); returns them with defaults filled in.

    The rules that do not involve the stored count `m` depend only on the encoding, dtype, rank and the
    other params, which repeat from tensor to tensor: their outcome is remembered, the count checked each time."""
    m = p.get(P_COUNT)
    try:
        key = (enc, dtype, len(shape), tuple((k, type(v), v) for k, v in p.items() if k != P_COUNT))
        hit = _PARAMS_SEEN.get(key)
    except TypeError:  # an unhashable value (a list): the full checks name it
        key = hit = None
    if hit is not None and type(m) is int and m >= 0:
        out = dict(hit)
        out[P_COUNT] = m
        return _count_rules(enc, out, numel, where)
    out = _params_checked(enc, p, shape, numel, where, dtype)
    if key is not None and enc != Encoding.RAW:
        if len(_PARAMS_SEEN) > 4096:
            _PARAMS_SEEN.clear()
        _PARAMS_SEEN[key] = out
    return out


def _params_checked(enc: Encoding, p: dict, shape, numel: int, where: str, dtype: DType) -> dict:
    rules = PARAM_RULES[enc]
    w = f"{where} params"
    for key in p:
        if key in KNOWN_PARAMS and key not in rules:
            raise FormatError(f"{w}: key '{key}' does not apply to {enc.name}")
    out = {}
    for key, (kind, lo, hi, when) in rules.items():
        if isinstance(when, tuple):
            present_ok = out.get(when[0]) == when[1]
            if not present_ok:
                if key in p:
                    raise FormatError(f"{w}: key '{key}' applies only when '{when[0]}' is {int(when[1])}")
                continue
        if key not in p:
            if when == "optional":
                out[key] = PARAM_DEFAULTS[key]
                continue
            raise FormatError(f"{w}: required key '{key}' ({PARAM_NAMES[key]}) is missing")
        v = p[key]
        if kind == "int" and type(v) is int and v >= lo and hi is None:
            out[key] = v
            continue
        label = f"{w} '{key}' ({PARAM_NAMES[key]})"
        if kind == "bool":
            if not isinstance(v, bool):
                raise FormatError(f"{label}: expected a boolean, got {v!r}")
            out[key] = v
        elif kind == "enum":
            out[key] = int(_enum(lo, v, label))
        elif kind == "choice":
            if type(v) is not int or v not in lo:
                raise FormatError(f"{label}: expected one of {', '.join(map(str, lo))}, got {v!r}")
            out[key] = v
        else:
            top = (MAX_DIM_PRODUCT if hi is None else len(shape) - 1 if hi == "rank-1"
                   else 1 << out[P_WIDTH] if hi == "2^b" else hi)
            if hi == "rank-1" and not shape:
                raise FormatError(f"{where}: per-channel scales need a tensor of rank >= 1, shape is []")
            out[key] = _int(v, label, lo, top)
    if out.get(P_SPARSE, 0) not in ENCODING_SPARSITY[enc]:
        raise FormatError(f"{w} 'sp' (sparse layout): {Sparsity(out[P_SPARSE]).name} is not a layout of {enc.name} "
                          f"(allowed: {', '.join(x.name for x in Sparsity if x in ENCODING_SPARSITY[enc])})")
    if enc == Encoding.RAW:
        if out.get(P_NEGZERO) and (out[P_SPARSE] != Sparsity.BITMAP or dtype not in FLOAT_DTYPES):
            raise FormatError(f"{w} 'nz' (negative zeros) of RAW needs sp = BITMAP and a float dtype "
                              f"(F32, F16, BF16, F64); got sp = {Sparsity(out[P_SPARSE]).name}, dtype {dtype.name}")
        return out if out[P_SPARSE] == Sparsity.DENSE else _count_rules(enc, out, numel, where)
    if enc == Encoding.AFFINE and out[P_SCALE_BYTES] == 8 and dtype not in QUANTIZED_DTYPES:
        raise FormatError(f"{w} 'sb' (scale bytes) may be 8 for quantized dtypes only, else 4; got 8 for {dtype.name}")
    if dtype in QUANTIZED_DTYPES and out[P_GRAN] == Granularity.GROUP:
        raise FormatError(f"{where}: quantized dtype {dtype.name} takes per-tensor or per-channel scales only")
    return _count_rules(enc, out, numel, where)


def _count_rules(enc: Encoding, out: dict, numel: int, where: str) -> dict:
    """The rules that involve the stored count 'm' (spec table 9)."""
    m, sp = out[P_COUNT], out[P_SPARSE]
    if sp == Sparsity.DENSE and m != numel:
        raise FormatError(f"{where}: DENSE layout stores {m} codes for {numel} elements ('m' must equal numel)")
    if sp == Sparsity.BITMAP and m > numel:
        raise FormatError(f"{where}: BITMAP layout stores {m} codes for {numel} elements")
    if sp == Sparsity.DELTA and numel > (m + 1) << out[P_IWIDTH]:
        raise LimitError(f"{where}: {m} delta entries of {out[P_IWIDTH]} bits cannot cover {numel} elements "
                         f"(at most (m + 1) x 2^iw)")
    return out


PARAM_NAMES = {P_WIDTH: "code width", P_SPARSE: "sparse layout", P_COUNT: "stored codes", P_GRAN: "granularity",
               P_AXIS: "axis", P_GROUP: "group size", P_IWIDTH: "index width", P_SIGNED: "signed codes",
               P_ZPWIDTH: "zero-point width", P_NEGZERO: "negative zeros", P_K: "codebook entries",
               P_SCALE_BYTES: "scale bytes", P_ZPSIGNED: "signed zero points"}


def _expected_len(role: Role, enc: Encoding, p: dict, dtype: DType, shape, numel: int):
    if role == Role.RAW:  # BITMAP (format 1.2): the m stored elements
        return (numel if p[P_SPARSE] == Sparsity.DENSE else p[P_COUNT]) * ITEMSIZE[dtype]
    if role == Role.CODES:
        return packed_size(p[P_COUNT], p[P_WIDTH])
    if role == Role.MASK:
        return (numel + 7) // 8 if p[P_SPARSE] == Sparsity.BITMAP else None
    if role == Role.DELTAS:
        return packed_size(p[P_COUNT], p[P_IWIDTH]) if p[P_SPARSE] == Sparsity.DELTA else None
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
        self._f = open_input(path, ".mbz file")
        size = os.fstat(self._f.fileno()).st_size
        if size == 0:
            self.buf = memoryview(b"")
        else:
            self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
            self.buf = memoryview(self._mm)

    def map_private(self, offset: int, length: int):
        """A writable uint8 array of `length` bytes at `offset` backed by a private copy-on-write mapping of the
        file (no copy: pages are read when touched; writes stay in this array); None for an in-memory source.

        Each call maps anew, so tensors made from two calls never share memory, nor with this source."""
        if self._f is None or self._f.closed or length == 0:
            return None
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(self._f.fileno(), offset + length - start, access=mmap.ACCESS_COPY, offset=start)
        return np.frombuffer(mm, np.uint8, length, offset - start)  # the array keeps the mapping alive

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


# --------------------------------------------------------------------------- checksums in parallel
CRC_CHUNK = 8 << 20    # unfiltered RAW sections of PARALLEL_BYTES or more: checksummed (and copied) in chunks
PARALLEL_BYTES = 32 << 20
PLAIN_MIN = 1 << 16    # unfiltered RAW sections this large are copied into torch-allocated memory or mapped


def _gf2_times(mat: list, vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


_SHIFT: dict = {}


def _shift_operator(nbytes: int) -> list:
    """The GF(2) matrix that advances a CRC-32 register over `nbytes` zero bytes (zlib's crc32_combine method,
    by repeated squaring of the one-zero-bit operator); cached per length."""
    m = _SHIFT.get(nbytes)
    if m is not None:
        return m
    op = [0xEDB88320] + [1 << k for k in range(31)]  # one zero bit
    op = [_gf2_times(op, op[k]) for k in range(32)]   # two
    op = [_gf2_times(op, op[k]) for k in range(32)]   # four
    op = [_gf2_times(op, op[k]) for k in range(32)]   # one zero byte
    m = [1 << k for k in range(32)]                   # identity
    n = nbytes
    while n:
        if n & 1:
            m = [_gf2_times(op, m[k]) for k in range(32)]
        n >>= 1
        if n:
            op = [_gf2_times(op, op[k]) for k in range(32)]
    _SHIFT[nbytes] = m
    return m


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc1 = crc32(A), crc2 = crc32(B) and len(B) (as zlib.crc32_combine)."""
    return _gf2_times(_shift_operator(len2), crc1) ^ crc2 if len2 else crc1


_POOL = None  # (process id, executor): a forked child makes its own (the parent's threads do not exist there)


def _pool():
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor
        _POOL = (os.getpid(), ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="mbz-crc"))
    return _POOL[1]


def crc_copy(src, crc: int, dest=None) -> int:
    """zlib.crc32(src, crc), copying `src` into the uint8 array `dest` on the way when given; sections of
    PARALLEL_BYTES or more in CRC_CHUNK pieces on a thread pool (zlib and numpy release the GIL)."""
    n = len(src)
    if n < PARALLEL_BYTES or (os.cpu_count() or 1) < 2:
        if dest is not None:
            dest[:] = np.frombuffer(src, np.uint8)
        return zlib.crc32(src, crc)

    def piece(a):
        b = src[a:a + CRC_CHUNK]
        if dest is not None:
            dest[a:a + len(b)] = np.frombuffer(b, np.uint8)
        return zlib.crc32(b), len(b)
    for c, length in _pool().map(piece, range(0, n, CRC_CHUNK)):
        crc = crc32_combine(crc, c, length)
    return crc


def _crc_mismatch(rec: Record) -> ChecksumError:
    return ChecksumError(f"tensor '{rec.name}': data checksum mismatch (sections at offset "
                         f"{rec.sections[0].offset if rec.sections else '-'}): file is corrupt")


def check_record(buf, rec: Record) -> None:
    """Checks a record's checksum (CRC-32 of its sections' stored bytes, spec §4) without unfiltering or decoding
    anything.  Raises ChecksumError naming the tensor and the sections' offset, as read_sections does."""
    crc = 0
    for s in rec.sections:
        crc = crc_copy(buf[s.offset:s.offset + s.stored], crc)
    if crc != rec.crc:
        raise _crc_mismatch(rec)


def read_sections(buf, rec: Record, decoded: dict | None = None, plain: str | None = None, src: Source = None) -> dict:
    """Stored bytes of a record's sections, checksum-verified, then unfiltered.

    `decoded` maps a section's index in the record to its bytes already unfiltered (batched RANS decoding).
    `plain` says what becomes of an unfiltered RAW section of PLAIN_MIN bytes or more: None, a private copy
    (bytearray); "copy", a copy into torch-allocated memory made while its checksum is computed; "map", a
    private copy-on-write mapping of the file (`src`, see Source.map_private; no copy; a copy when the
    section's offset is not a multiple of the dtype's size).  Every result is writable and owned by the caller.
    """
    crc = 0
    stored, ready = [], {}
    item = ITEMSIZE[rec.dtype]
    for j, s in enumerate(rec.sections):
        b = buf[s.offset:s.offset + s.stored]
        if plain and s.role == Role.RAW and s.filter == Filter.NONE and s.stored >= PLAIN_MIN:
            dest = src.map_private(s.offset, s.stored) if plain == "map" and src is not None else None
            if dest is not None and s.offset % item == 0:
                crc = crc_copy(b, crc)
            else:
                dest = torch.empty(s.stored, dtype=torch.uint8).numpy()
                crc = crc_copy(b, crc, dest)
            ready[j] = dest
        else:
            crc = zlib.crc32(b, crc)
        stored.append(b)
    if crc != rec.crc:
        raise _crc_mismatch(rec)
    out = {}
    for j, (s, b) in enumerate(zip(rec.sections, stored)):
        if j in ready:
            out[s.role] = ready[j]
            continue
        if decoded and j in decoded:
            out[s.role] = decoded[j]
            continue
        try:
            out[s.role] = unfilter(s.role, s.filter, b, s.decoded, item)
        except MbzError as e:
            raise type(e)(f"tensor '{rec.name}' section #{j} ({s.role.name}, {s.filter.name}) at offset "
                          f"{s.offset}: {e}") from None
    return out


__all__ = ["write_file", "parse", "read_sections", "Source", "FileLayout", "Record"]
