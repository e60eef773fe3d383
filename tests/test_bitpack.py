import numpy as np
import pytest

from mbz.codecs.bitpack import pack_bits, pack_codes, packed_size, signed_width, unpack_bits, unpack_codes, unsigned_width
from mbz.errors import EncodeError, FormatError


def reference_pack(v, w):
    bits = [(int(x) >> k) & 1 for x in v for k in range(w)]
    return np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes() if len(v) else b""


@pytest.mark.parametrize("width", range(1, 17))
@pytest.mark.parametrize("signed", [False, True])
def test_roundtrip_and_bit_order(width, signed):
    rng = np.random.default_rng(width)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    for n in (0, 1, 7, 8, 9, 63, 1000):
        v = rng.integers(lo, hi + 1, n)
        if n >= 2:
            v[0], v[1] = lo, hi
        b = pack_codes(v, width, signed)
        assert len(b) == packed_size(n, width)
        assert b == reference_pack(v, width)       # spec §5.1: LSB-first, two's complement
        assert np.array_equal(unpack_codes(b, n, width, signed), v)


def test_out_of_range_rejected():
    with pytest.raises(EncodeError):
        pack_codes(np.array([8]), 3, signed=True)
    with pytest.raises(EncodeError):
        pack_codes(np.array([-1]), 4)


def test_wrong_length_rejected():
    with pytest.raises(FormatError, match="must be 2 bytes"):
        unpack_codes(b"\0\0\0", 3, 5)
    with pytest.raises(FormatError):
        unpack_bits(b"\0", 9)


def test_widths():
    assert unsigned_width(0) == 1 and unsigned_width(255) == 8 and unsigned_width(256) == 9
    assert signed_width(-128, 127) == 8 and signed_width(-129, 0) == 9 and signed_width(-1, 0) == 1
    assert signed_width(0, 1) == 2


def test_bitmap():
    f = np.random.default_rng(0).random(77) < 0.3
    assert np.array_equal(unpack_bits(pack_bits(f), 77), f)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
def test_every_integer_input_type(dtype):
    """pack_codes reads codes of any integer type (masked in that type): the bytes equal those of int64."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    for width in range(1, 17):
        for signed in (False, True):
            lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
            if lo < info.min or hi > info.max:
                continue
            v = rng.integers(lo, hi + 1, 1001)
            v[:2] = lo, hi
            assert pack_codes(v.astype(dtype), width, signed) == pack_codes(v, width, signed), (width, signed)
            assert np.array_equal(unpack_codes(pack_codes(v.astype(dtype), width, signed), 1001, width, signed), v)
