import os
import zlib

import msgpack
import pytest

from mbz.codecs.raw import bits_equal  # noqa: F401  (re-exported for the tests)
from mbz.spec import MAGIC, PREAMBLE, PREAMBLE_SIZE

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
REFERENCE = os.path.join(SHARED, "reference_mnv2_cifar10_fp32.pt")


def rebuild(data: bytes, edit_header=None, major=None, minor=None, codec=None, compress=False) -> bytes:
    """Re-emit a file with its header edited and checksums fixed (to test field validation)."""
    magic, mj, mn, cd, res, hlen, _ = PREAMBLE.unpack_from(data, 0)
    block = data[PREAMBLE_SIZE:PREAMBLE_SIZE + hlen]
    if cd == 1:
        import zstandard
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(block)
    else:
        raw = block
    h = msgpack.unpackb(raw, raw=False)
    rest = data[PREAMBLE_SIZE + hlen:]
    if edit_header:
        edit_header(h)
    new = msgpack.packb(h, use_bin_type=True)
    pre = PREAMBLE.pack(MAGIC, mj if major is None else major, mn if minor is None else minor,
                        0 if codec is None else codec, b"\0\0\0", len(new), zlib.crc32(new))
    return pre + new + rest


@pytest.fixture
def tmp_mbz(tmp_path):
    return tmp_path / "t.mbz"
