"""Where every byte of a .mbz file goes (spec §6).

Each byte belongs to exactly one Category; per-tensor rows plus the file's
own rows sum to the file size exactly.  When the header block is
zstd-compressed, its stored bytes are apportioned between the global header
and each tensor record in proportion to their msgpack sizes (largest
remainder, so integers still sum exactly).
"""
from __future__ import annotations

import msgpack

from .spec import H_TENSORS, PREAMBLE_SIZE, ROLE_CATEGORY, Category, HeaderCodec

CATEGORIES = [c.value for c in Category]


def _apportion(total: int, weights: list[int]) -> list[int]:
    s = sum(weights)
    if s == 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    out = [int(x) for x in exact]
    rest = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: exact[i] - out[i], reverse=True)
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
    # header block: global part vs one share per record
    raw_records = msgpack.unpackb(layout.header_raw, raw=False)[H_TENSORS]
    rec_sizes = [len(msgpack.packb(r, use_bin_type=True)) for r in raw_records]
    raw_total = len(layout.header_raw)
    if layout.header_codec == HeaderCodec.NONE:
        rec_stored = sum(rec_sizes)
    else:
        rec_stored = round(layout.header_stored * sum(rec_sizes) / raw_total) if raw_total else 0
    shares = _apportion(rec_stored, rec_sizes)
    totals[Category.FILE_HEADER.value] += layout.header_stored - rec_stored
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
