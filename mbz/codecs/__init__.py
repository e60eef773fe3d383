"""Codecs: small classes with encode / decode, found through registries.

* ``bitpack``  — integer codes of width 1..16 bits, LSB-first.
* ``filters``  — the per-section entropy stage (none, zstd, shuffle+zstd).
* ``sparse``   — which elements have a stored code (dense, bitmap, delta).
* ``affine``   — scale / zero-point grids (tensor, channel, group).
* ``codebook`` — a table of values plus indices.
"""
from .bitpack import pack_codes, unpack_codes, signed_width, unsigned_width  # noqa: F401
from .filters import FILTERS, get_filter  # noqa: F401
