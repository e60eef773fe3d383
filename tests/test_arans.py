"""The ARANS filter (format_spec.md §5.8): round trips, batched decoding, malformed sections, pack --best."""
import numpy as np
import pytest
import torch

import mbz
from mbz.codecs import arans
from mbz.codecs.bitpack import pack_codes
from mbz.codecs.filters import FILTERS
from mbz.errors import EncodeError, FormatError, MbzError
from mbz.spec import RANS_L, AransKind, Filter


def codes(w, signed, n, seed=0, zeros=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if signed else (0, (1 << w) - 1)
    v = np.clip(np.round(rng.laplace(0, scale, n)), lo, hi).astype(np.int64)
    v[rng.random(n) < zeros] = 0
    return pack_codes(v, w, signed) if n else b""


def floats(n, seed=0, fb=7):
    rng = np.random.default_rng(seed)
    f = (rng.random(n) * 0.2 + 0.01).astype(np.float32)
    f[rng.random(n) < 0.3] = 1.0
    f[:2] = [-3.5, np.inf] if n >= 2 else f[:2]
    u = f.view(np.uint32) & np.uint32((0xFFFFFFFF << (23 - fb)) & 0xFFFFFFFF)
    return u.astype("<u4").tobytes()


# (w, signed, n, row, steps)
INT_CASES = [(4, True, 1000, 10, 300), (1, False, 3000, 50, 500), (8, True, 300, 0, 1024), (16, False, 777, 7, 500),
             (4, True, 9, 0, 4), (3, False, 1, 0, 1), (8, False, 0, 0, 10), (12, True, 2000, 40, 3000),
             (2, False, 64, 8, 7), (1, True, 100, 0, 50), (2, True, 10, 0, 3)]


@pytest.mark.parametrize("w,signed,n,row,steps", INT_CASES)
def test_int_round_trip(w, signed, n, row, steps):
    d = codes(w, signed, n, seed=w * 7 + n)
    e = arans.encode(d, AransKind.INT, w, signed, row, steps)
    assert arans.decode(e, len(d)) == d


@pytest.mark.parametrize("fb,n,steps", [(7, 500, 1000), (23, 40, 30), (0, 20, 100), (3, 1, 1), (7, 0, 1)])
def test_float_round_trip(fb, n, steps):
    d = floats(n, seed=n, fb=fb)
    assert arans.fraction_bits(d) <= fb
    e = arans.encode(d, AransKind.FLOAT32, fb, False, 0, steps)
    assert arans.decode(e, len(d)) == d


def test_empty_lanes_and_batch_equals_single():
    # n = 9 codes in K = 4 lanes: S = 3, the last lane holds none (spec §5.8 "a lane may be empty")
    d = codes(4, True, 9, seed=1)
    e = arans.encode_many([(d, AransKind.INT, 4, True, 0, 1, 4)])[0]
    assert arans._Header(e, len(d)).K == 4 and arans.decode(e, len(d)) == d
    items = [(codes(w, s, n, seed=i), AransKind.INT, w, s, r, st) for i, (w, s, n, r, st) in enumerate(INT_CASES)]
    items.append((floats(300, 3), AransKind.FLOAT32, 7, False, 0, 200))
    together = arans.encode_many(items)
    alone = [arans.encode(*it) for it in items]
    assert together == alone  # a section's bytes do not depend on its batch
    assert arans.decode_many([(e, len(it[0])) for e, it in zip(together, items)]) == [it[0] for it in items]


def test_context_models_pay():
    # a row-structured mask: rows are dense or empty; the row / column counts must find it
    rng = np.random.default_rng(3)
    rows = rng.random(64) < 0.3
    cols = rng.random(128) < 0.5
    m = (rows[:, None] & cols[None, :] & (rng.random((64, 128)) < 0.9)).astype(np.int64).reshape(-1)
    d = pack_codes(m, 1)
    flat = arans.encode(d, AransKind.INT, 1, False, 0, 2048)
    ctx = arans.encode(d, AransKind.INT, 1, False, 128, 2048)
    assert len(ctx) < 0.7 * len(flat)
    # scales with 7 fraction bits: far below their 4 bytes, near the model's own bound
    f = floats(1000, 4)
    e = arans.encode(f, AransKind.FLOAT32, 7, False, 0, 4000)
    bound = arans.model_bits([(f, AransKind.FLOAT32, 7, False, 0, 4000)])[0] / 8
    assert len(e) < 0.5 * len(f) and len(e) <= 1.01 * bound + 16


def test_density_and_sign_contexts_pay():
    # rows of different densities: the row / column density classes must find them
    rng = np.random.default_rng(5)
    dens = rng.choice([0.5, 0.8, 0.95], 24)
    z = (rng.random((24, 200)) < dens[:, None]).astype(np.int64)
    bits = arans.model_bits([(pack_codes(z.reshape(-1), 1), AransKind.INT, 1, False, 200, 2000)])[0]
    rows_h = sum(200 * _h2(z[r].mean()) for r in range(24))  # each row's own zero-flag entropy
    assert rows_h < 0.85 * z.size * _h2(z.mean())
    assert bits < 1.05 * rows_h + 60
    # no zeros, signs that flip 3% of the time along a row: the left neighbour's sign must find it
    sgn = np.where(np.cumsum(rng.random((24, 200)) < 0.03, axis=1) % 2 == 0, 1, -1)
    v = (sgn * rng.integers(1, 8, (24, 200))).reshape(-1)
    bits = arans.model_bits([(pack_codes(v, 4, True), AransKind.INT, 4, True, 200, 2000)])[0]
    assert bits < v.size * (np.log2(7) + 0.3)  # magnitudes: log2(7) bits; signs: H(0.03) = 0.19 bits, learning


def _h2(p):
    return 0.0 if p in (0, 1) else float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


@pytest.mark.parametrize("w,signed,n,row,steps", INT_CASES[:5] + [(4, True, 600, 30, 200), (3, True, 200, 0, 60)])
def test_spec_decoder_agrees(w, signed, n, row, steps):
    # tests/fuzz_format.py decodes from format_spec.md §5.8 alone, one decision at a time
    import fuzz_format
    d = codes(w, signed, n, seed=n + w)
    e = arans.encode(d, AransKind.INT, w, signed, row, steps)
    assert fuzz_format._arans_decode(e, len(d)) == d
    f = floats(60, 7)
    assert fuzz_format._arans_decode(arans.encode(f, AransKind.FLOAT32, 7, False, 0, 100), len(f)) == f


def _good():
    d = codes(4, True, 1200, seed=9)
    return d, arans.encode(d, AransKind.INT, 4, True, 40, 400)


def test_malformed_sections_raise():
    d, e = _good()
    h = arans._Header(e, len(d))
    sstart = len(e) - h.stream.size  # states end here
    bad = {
        "cut header": e[:1],
        "mode": bytes([e[0] | 0x40]) + e[1:],
        "float signed": bytes([1 | 4]) + e[1:],
        "width": e[:1] + bytes([0]) + e[2:],
        "n": e[:2] + bytes([e[2] ^ 1]) + e[3:],
        "states cut": e[:sstart - 2],
        "state below L": e[:sstart - 4] + (RANS_L - 1).to_bytes(4, "little") + e[sstart:],
        "state above range": e[:sstart - 4] + (1 << 31).to_bytes(4, "little") + e[sstart:],
        "truncated lanes": e[:sstart + h.stream.size // 2],
        "extra bytes": e + b"\0",
        "lane stream": e[:sstart + 5] + bytes([e[sstart + 5] ^ 0xFF]) + e[sstart + 6:],
    }
    for what, b in bad.items():
        with pytest.raises(FormatError):
            arans.decode(b, len(d))
            pytest.fail(what)
    with pytest.raises(FormatError):
        arans.decode(e, len(d) + 1)
    # one lane for 20,000 codes: more elements per lane than the spec allows (a bound on decode steps)
    one = bytes([0, 1]) + bytes([0xA0, 0x9C, 0x01, 0, 1]) + RANS_L.to_bytes(4, "little")
    with pytest.raises(FormatError, match="per lane"):
        arans.decode(one, 2500)
    # codes outside the range: an unsigned 1-bit stream whose model decodes a magnitude bit of 1 (v = 2)
    hdr = bytes([0, 1]) + bytes([1, 0, 1])
    with pytest.raises(FormatError, match="outside|unread|final|ends early"):
        arans.decode(hdr + (RANS_L + 12345).to_bytes(4, "little") + b"\x00\x00\x00", 1)


def test_random_mutations_raise_mbz_errors_only():
    d, e = _good()
    rng = np.random.default_rng(0)
    for _ in range(15):
        b = bytearray(e)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        try:
            out = arans.decode(bytes(b), len(d))
        except MbzError:
            continue
        assert len(out) == len(d)


def test_encode_rejects_bad_input():
    with pytest.raises(EncodeError):
        arans.encode(b"\x01\x02", AransKind.INT, 17)
    with pytest.raises(EncodeError):
        arans.encode(b"\xf0", AransKind.INT, 3)  # non-zero padding bits
    with pytest.raises(EncodeError):
        arans.encode(np.float32(0.1).tobytes(), AransKind.FLOAT32, 7)  # fraction bits below the top 7


def model():
    g = torch.Generator().manual_seed(0)
    q = torch.round(torch.randn(48, 64, generator=g) * 2).clamp(-7, 7)
    q[torch.rand(48, 64, generator=g) < 0.85] = 0
    q[::3] = 0  # empty output channels
    s = (torch.rand(48, 1, generator=g) * 0.1 + 0.01).bfloat16().float()
    return {"a.weight": q * s, "c.bias": torch.round(torch.randn(48, generator=g) * 40).clamp(-127, 127) * 0.01}


def test_pack_best_uses_arans_and_loads_back(tmp_path):
    sd = model()
    sizes = {}
    for prof in ("default", "best"):
        p = tmp_path / f"{prof}.mbz"
        mbz.save(sd, p, rans=True, profile=prof)
        with mbz.open(p) as r:
            filters = {(rec.name, s.role.name): s.filter for rec in r.layout.records for s in rec.sections}
            one = r["a.weight"]  # the per-tensor path (no batch)
            assert sum(r.accounting()["categories"].values()) == p.stat().st_size
        got = mbz.load(p)
        for k, v in sd.items():
            assert torch.equal(got[k].view(torch.int32), v.view(torch.int32)), k
        assert torch.equal(one.view(torch.int32), sd["a.weight"].view(torch.int32))
        assert (Filter.ARANS in filters.values()) == (prof == "best")
        sizes[prof] = p.stat().st_size
    assert filters[("a.weight", "SCALES")] == Filter.ARANS
    assert sizes["best"] < sizes["default"]


def test_corrupt_arans_section_in_a_file(tmp_path):
    p = tmp_path / "m.mbz"
    mbz.save(model(), p, profile="best")
    with mbz.open(p) as r:
        rec = next(rec for rec in r.layout.records if any(s.filter == Filter.ARANS for s in rec.sections))
        s = next(s for s in rec.sections if s.filter == Filter.ARANS)
    raw = bytearray(p.read_bytes())
    raw[s.offset + s.stored - 2] ^= 0x5A
    p.write_bytes(bytes(raw))
    with pytest.raises(MbzError, match=rec.name):
        mbz.load(p)


def test_filter_registry():
    f = FILTERS[Filter.ARANS]
    d = codes(4, True, 500)
    assert f.decode(f.encode(d, kind=AransKind.INT, w=4, signed=True, row=20), len(d)) == d
    with pytest.raises(MbzError):
        f.decode(b"\x00\x04\x01", 10 ** 6)  # claims far more than its bytes allow (spec §7)
