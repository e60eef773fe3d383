"""Where every byte of a .mbz file goes (spec §6).

Each byte belongs to exactly one Category; per-tensor rows plus the file's
own rows sum to the file size exactly.  A tensor record's share of the header
block is measured: the byte span of its msgpack map in the decoded header.
When the header is stored uncompressed that span is its share; when it is
zstd-compressed, the stored block's H bytes are apportioned between the global
part (decoded length minus the spans) and the records in proportion to their
decoded lengths (floors, then one more byte to the largest remainders, ties to
the earlier one, the global part first).
"""
from __future__ import annotations

import msgpack

from .spec import H_TENSORS, PREAMBLE_SIZE, ROLE_CATEGORY, Category, HeaderCodec

CATEGORIES = [c.value for c in Category]


def record_spans(raw: bytes) -> list[int]:
    """Byte length of each tensor record's msgpack map inside the decoded header `raw` (spec §6)."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(raw), 1))
    u.feed(raw)
    spans = []
    for _ in range(u.read_map_header()):
        key = u.unpack()
        if key != H_TENSORS:
            u.skip()
            continue
        for _ in range(u.read_array_header()):
            start = u.tell()
            u.skip()
            spans.append(u.tell() - start)
    return spans


def apportion(total: int, weights: list[int]) -> list[int]:
    """floor(total * w_i / sum w), then one more byte to the largest remainders, ties to the lower index."""
    s = sum(weights)
    if s == 0:
        return [0] * len(weights)
    out = [total * w // s for w in weights]
    rest = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % s), i))
    for i in order[:rest]:
        out[i] += 1
    return out


def account(layout) -> dict:
    """{'file_bytes', 'categories': {cat: bytes}, 'tensors': [{name, bytes: {cat: bytes}}]}."""
    totals = dict.fromkeys(CATEGORIES, 0)
    per = [dict.fromkeys(CATEGORIES, 0) for _ in layout.records]
    # preamble: 20 bytes of fields, 4 bytes of header CRC
    totals[Category.FILE_HEADER.value] += PREAMBLE_SIZE - 4
    totals[Category.CHECKSUMS.value] += 4
    # header block: global part vs one share per record, measured in the decoded header
    spans = record_spans(layout.header_raw)
    if layout.header_codec == HeaderCodec.NONE:
        shares = spans
    else:
        # the global part (raw length minus the spans) is weight 0, each record its span
        shares = apportion(layout.header_stored, [len(layout.header_raw) - sum(spans)] + spans)[1:]
    totals[Category.FILE_HEADER.value] += layout.header_stored - sum(shares)
    for row, share in zip(per, shares):
        row[Category.TENSOR_RECORDS.value] += share
    # padding after the header
    totals[Category.PADDING.value] += layout.payload_start - PREAMBLE_SIZE - layout.header_stored
    cursor = layout.payload_start
    for rec, row in zip(layout.records, per):
        for s in rec.sections:
            row[Category.PADDING.value] += s.offset - cursor
            row[ROLE_CATEGORY[s.role].value] += s.stored
            cursor = s.offset + s.stored
        row[Category.CHECKSUMS.value] += 4
    totals[Category.PADDING.value] += layout.payload_start + layout.crc_offset - cursor
    for row in per:
        for k, v in row.items():
            totals[k] += v
    assert sum(totals.values()) == layout.file_size, "accounting does not cover the file"
    return {
        "file_bytes": layout.file_size,
        "categories": totals,
        "tensors": [{"name": r.name, "bytes": row} for r, row in zip(layout.records, per)],
    }
