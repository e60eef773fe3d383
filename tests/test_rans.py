"""The RANS filter (format_spec.md §5.7): round trips, batched decoding, malformed sections, profiles."""
import numpy as np
import pytest
import torch

import mbz
from mbz.spec import VERSION_MINOR
from mbz.codecs import rans
from mbz.codecs.bitpack import pack_codes
from mbz.codecs.filters import FILTERS
from mbz.errors import EncodeError, FormatError, MbzError
from mbz.spec import RANS_L, Filter, RansAlphabet


def stream(w, signed, n, seed=0, zeros=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if signed else (0, (1 << w) - 1)
    v = np.clip(np.round(rng.laplace(0, scale, n)), lo, hi).astype(np.int64)
    v[rng.random(n) < zeros] = 0
    return pack_codes(v, w, signed) if n else b""


CASES = [(4, True, 1000, 10, 64), (1, False, 3000, 50, 100), (8, True, 300, 0, 1024), (16, False, 777, 7, 50),
         (4, True, 9, 0, 4), (3, False, 1, 0, 1), (8, False, 0, 0, 10), (12, True, 2000, 40, 30), (2, False, 64, 8, 7)]


@pytest.mark.parametrize("w,signed,n,row,steps", CASES)
@pytest.mark.parametrize("alpha", [RansAlphabet.DIRECT, RansAlphabet.CLASSES])
def test_round_trip(w, signed, n, row, steps, alpha):
    if alpha == RansAlphabet.DIRECT and w > 8:
        pytest.skip("DIRECT holds codes of at most 8 bits")
    d = stream(w, signed, n, seed=w * 7 + n)
    ctxs = [(1, 1), (3, 1)] + ([(2, 2), (4, 3)] if 0 < row < len(d) * 8 // w else [])
    for tl, tu in ctxs:
        e = rans.encode(d, w, signed, row, steps, alphabets=[alpha], contexts=[(tl, tu)])
        assert rans.decode(e, len(d)) == d


def test_batched_decode_equals_single_and_contexts_pay():
    items, expect = [], []
    for i, (w, signed, n, row, steps) in enumerate(CASES):
        d = stream(w, signed, n, seed=i)
        items.append((rans.encode(d, w, signed, row, steps), len(d)))
        expect.append(d)
    assert rans.decode_many(items) == expect
    # a column-pruned mask: the upper neighbour predicts it; the context model must win by far
    cols = np.random.default_rng(3).random(128) < 0.5
    mask = np.tile(cols, 64) & (np.random.default_rng(4).random(128 * 64) < 0.9)
    d = pack_codes(mask.astype(np.int64), 1)
    plain = rans.encode(d, 1, False, 128, 4096, contexts=[(1, 1)])
    ctx = rans.encode(d, 1, False, 128, 4096)
    assert len(ctx) < 0.7 * len(plain)
    assert rans.decode(ctx, len(d)) == d


def test_size_near_entropy_for_a_large_stream():
    d = stream(4, True, 1 << 16, seed=5)
    e = rans.encode(d, 4, True, 0, 16384)
    assert len(e) <= 1.01 * rans.entropy_bound(d, 4, True) + 64


def _good():
    d = stream(4, True, 4000, seed=9)
    return d, rans.encode(d, 4, True, 40, 256, alphabets=[RansAlphabet.CLASSES], contexts=[(2, 2)])


def _fields(e):
    """Offsets of the header fields of an encoded section: (tables start, T, states start, K, stream len)."""
    pos = 4
    vals = []
    for _ in range(3):
        v, pos = rans._read_varint(e, pos, "x")
        vals.append(v)
    T, pos = rans._read_varint(e, pos, "T")
    tstart = pos
    pos += T
    B, pos = rans._read_varint(e, pos, "B")
    return tstart, T, pos, vals[2], B


def test_malformed_sections_raise():
    d, e = _good()
    tstart, T, sstart, K, B = _fields(e)
    bad = {
        "truncated lanes": e[:sstart + 4 * K + B // 2],
        "cut header": e[:3],
        "mode": bytes([e[0] | 0x40]) + e[1:],
        "width": e[:1] + bytes([0]) + e[2:],
        "precision": e[:2] + bytes([13]) + e[3:],
        "context": e[:3] + bytes([0x51]) + e[4:],
        "state below L": e[:sstart] + (RANS_L - 1).to_bytes(4, "little") + e[sstart + 4:],
        "state above range": e[:sstart] + (1 << 31).to_bytes(4, "little") + e[sstart + 4:],
        "extra bytes": e + b"\0",
        "lying table": e[:tstart] + bytes([e[tstart] ^ 0x06]) + e[tstart + 1:],
        "lane stream": e[:sstart + 4 * K + 3] + bytes([e[sstart + 4 * K + 3] ^ 0xFF]) + e[sstart + 4 * K + 4:],
    }
    for what, b in bad.items():
        with pytest.raises(FormatError):
            rans.decode(b, len(d))
            pytest.fail(what)
    with pytest.raises(FormatError):
        rans.decode(e, len(d) + 1)  # the declared decoded length disagrees with n and w


def test_random_mutations_raise_mbz_errors_only():
    d, e = _good()
    rng = np.random.default_rng(0)
    for _ in range(60):
        b = bytearray(e)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        try:
            out = rans.decode(bytes(b), len(d))
        except MbzError:
            continue
        assert len(out) == len(d)


def test_encode_rejects_bad_input():
    with pytest.raises(EncodeError):
        rans.encode(b"\x01\x02", 17)
    with pytest.raises(EncodeError):
        rans.encode(b"\xf0", 3)  # two 3-bit codes and two non-zero padding bits


def sparse_model():
    g = torch.Generator().manual_seed(0)
    q = torch.round(torch.randn(64, 128, generator=g) * 2).clamp(-7, 7)
    q[torch.rand(64, 128, generator=g) < 0.7] = 0
    return {"a.weight": q * (torch.rand(64, 1, generator=g) * 0.1 + 0.01),
            "b.weight": (torch.round(torch.randn(32, 300, generator=g) * 3).clamp(-7, 7) * 0.05),
            "c.bias": torch.randn(64, generator=g)}


def test_file_round_trip_profiles_and_no_rans(tmp_path):
    sd = sparse_model()
    sizes = {}
    for prof, use in (("default", True), ("best", True), ("none", False)):
        p = tmp_path / f"{prof}.mbz"
        mbz.save(sd, p, rans=use, profile=prof if use else "default")
        got = mbz.load(p)
        with mbz.open(p) as r:
            filters = {s.filter for rec in r.layout.records for s in rec.sections}
            one = r["a.weight"]                  # the per-tensor path (no batch)
            assert sum(r.accounting()["categories"].values()) == p.stat().st_size
            assert r.version == (1, VERSION_MINOR)
        assert bool(filters & {Filter.RANS, Filter.ARANS}) == use
        for k, v in sd.items():
            assert torch.equal(got[k].view(torch.int32), v.view(torch.int32)), k
        assert torch.equal(one.view(torch.int32), sd["a.weight"].view(torch.int32))
        sizes[prof] = p.stat().st_size
    assert sizes["best"] <= sizes["default"] < sizes["none"]
    with pytest.raises(EncodeError):
        mbz.save(sd, tmp_path / "x.mbz", profile="fastest")


def test_corrupt_rans_section_in_a_file(tmp_path):
    p = tmp_path / "m.mbz"
    mbz.save(sparse_model(), p, rans=True)
    with mbz.open(p) as r:
        rec = next(rec for rec in r.layout.records if any(s.filter == Filter.RANS for s in rec.sections))
        s = next(s for s in rec.sections if s.filter == Filter.RANS)
    raw = bytearray(p.read_bytes())
    raw[s.offset + s.stored - 2] ^= 0x5A
    p.write_bytes(bytes(raw))
    with pytest.raises(MbzError, match=rec.name):
        mbz.load(p)


def test_filter_registry():
    f = FILTERS[Filter.RANS]
    d = stream(4, True, 500)
    assert f.decode(f.encode(d, w=4, signed=True, row=20), len(d)) == d


def test_a_lane_longer_than_the_limit_is_refused():
    """spec §5.7: ceil(n / K) <= 16384 symbols per lane bounds the decoder's steps; a header claiming one lane for
    20,000 symbols is refused before anything is decoded."""
    import numpy as np
    from mbz.codecs import rans
    from mbz.errors import FormatError
    data = np.random.default_rng(0).integers(0, 16, 20000).astype(np.uint8).tobytes()
    enc = bytearray(rans.encode(data, 8, steps=1024))
    assert enc[8] == 20                       # 4-byte header, n = 20000 (3 varint bytes), R = 0, K = 20
    assert rans.decode(bytes(enc), len(data)) == data
    enc[8] = 1
    with pytest.raises(FormatError, match="20000 symbols per lane exceed 16384"):
        rans.decode(bytes(enc), len(data))
