"""The header's msgpack, checked before it is unpacked (spec §3, §7).

`scan` walks the bytes of one msgpack object without building it: it counts the
objects (every map, array, key and value), measures the nesting depth, refuses
ext types, non-string map keys and bytes after the object, so that unpacking
afterwards allocates no more than the file's size justifies.  `unpack` then
builds the object, refusing duplicate map keys.

`checked_object` does both.  Every msgpack object takes at least one byte, so a
header of no more bytes than the object limit cannot exceed it; such a header is
unpacked directly (msgpack bounds every container by the bytes left) with the
same rules checked on the way, and only a header that breaks one is scanned, for
the error that names the byte.  Larger headers are scanned first.
"""
from __future__ import annotations

import msgpack

from .errors import FormatError, LimitError
from .spec import MAX_HEADER_DEPTH

# first byte -> (kind, size of the length field or the value) for the non-fix formats
_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
          0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}
_BLOB = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}   # bin8/16/32, str8/16/32: length field size
_STR = {0xd9, 0xda, 0xdb}
_ARRAY = {0xdc: 2, 0xdd: 4}
_MAP = {0xde: 2, 0xdf: 4}
_EXT = {0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8}


def scan(raw, max_objects: int, max_depth: int = MAX_HEADER_DEPTH) -> int:
    """Check the msgpack bytes `raw` as described in the module docstring; returns the object count."""
    buf = bytes(raw)
    n = len(buf)
    i = count = 0
    # open containers: [items left, is a map]; a map of n pairs has 2n items, keys at even counts left
    stack = [[1, False]]
    while stack:
        top = stack[-1]
        if top[0] == 0:
            stack.pop()
            continue
        is_key = top[1] and top[0] % 2 == 0
        top[0] -= 1
        if i >= n:
            raise FormatError(f"header is not valid msgpack: it ends at byte {n} inside an object")
        b = buf[i]
        count += 1
        if count > max_objects:
            raise LimitError(f"header holds more than {max_objects} msgpack objects (limit for this file size)")
        if is_key and not (0xa0 <= b <= 0xbf or b in _STR):
            raise FormatError(f"header map key at byte {i} is not a string")
        if b <= 0x7f or b >= 0xe0:                    # fixint
            i += 1
        elif 0xa0 <= b <= 0xbf:                         # fixstr
            i += 1 + (b & 0x1f)
        elif 0x80 <= b <= 0x9f:                         # fixmap / fixarray
            items = (b & 0x0f) * 2 if b <= 0x8f else b & 0x0f
            i += 1
            if len(stack) >= max_depth + 1:
                raise FormatError(f"header nests maps / arrays deeper than {max_depth} levels (byte {i - 1})")
            stack.append([items, b <= 0x8f])
        elif b in _FIXED:
            i += 1 + _FIXED[b]
        elif b in _BLOB:
            w = _BLOB[b]
            if i + 1 + w > n:
                raise FormatError(f"header is not valid msgpack: it ends at byte {n} inside a length field")
            i += 1 + w + int.from_bytes(buf[i + 1:i + 1 + w], "big")
        elif b in _ARRAY or b in _MAP:
            w = _ARRAY.get(b) or _MAP[b]
            if i + 1 + w > n:
                raise FormatError(f"header is not valid msgpack: it ends at byte {n} inside a length field")
            items = int.from_bytes(buf[i + 1:i + 1 + w], "big")
            if b in _MAP:
                items *= 2
            if items > max_objects:
                raise LimitError(f"header container at byte {i} claims {items} items, "
                                 f"limit {max_objects} objects for this file size")
            i += 1 + w
            if len(stack) >= max_depth + 1:
                raise FormatError(f"header nests maps / arrays deeper than {max_depth} levels (byte {i - 1 - w})")
            stack.append([items, b in _MAP])
        elif b in _EXT:
            raise FormatError(f"header holds a msgpack ext type at byte {i}; only nil, bool, int, float, str, bin, "
                              "array and map are allowed")
        else:                                           # 0xc1: never used
            raise FormatError(f"header is not valid msgpack: unused byte 0x{b:02x} at byte {i}")
        if i > n:
            raise FormatError(f"header is not valid msgpack: an object runs past its end ({n} bytes)")
    if i != n:
        raise FormatError(f"{n - i} bytes follow the header's msgpack map (at byte {i})")
    return count


def _pairs(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(f"header map holds the key {dup!r} twice")
    return d


class _Refused(Exception):
    pass


def _refuse_ext(code, data):
    raise _Refused


def _pairs_str(pairs):
    d = dict(pairs)
    if len(d) != len(pairs) or not all(type(k) is str for k in d):
        raise _Refused
    return d


def _depth_ok(obj, max_depth: int) -> bool:
    """Whether maps / arrays nest at most `max_depth` levels (the outer object is level 1)."""
    level, depth = [obj], 1
    while level:
        if depth > max_depth:
            return False
        level = [v for x in level for v in (x.values() if type(x) is dict else x) if type(v) in _CONTAINERS]
        depth += 1
    return True


_CONTAINERS = (dict, list)


def checked_object(raw, max_objects: int, max_depth: int = MAX_HEADER_DEPTH):
    """`scan` then `unpack` in effect, faster for headers of at most `max_objects` bytes (see module docstring)."""
    raw = bytes(raw)
    if len(raw) <= max_objects:
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                                  object_pairs_hook=_pairs_str, ext_hook=_refuse_ext)
        except Exception:
            obj = None
        if type(obj) is dict and _depth_ok(obj, max_depth):
            return obj
    scan(raw, max_objects, max_depth)
    return unpack(raw)


def unpack(raw):
    """Build the scanned header object (str keys, no ext types, UTF-8 strings)."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, object_pairs_hook=_pairs)
    except FormatError:
        raise
    except Exception as e:
        text = str(e).strip()
        raise FormatError(f"header is not valid msgpack ({type(e).__name__}{': ' + text if text else ''})") from None
