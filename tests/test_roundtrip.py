"""Round trips: every tensor comes back bit for bit, whatever its grid, width, sparsity or dtype."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mbz
from mbz.encoder import EntropyPolicy, encode_tensor
from mbz.quantize import QuantPolicy, quantize_state_dict
from mbz.spec import Encoding, Sparsity

from conftest import bits_equal


def make_grid_tensor(rng, shape, width, sparsity, gran, signed=True):
    """q * scale with q of `width` bits, a share `sparsity` of exact zeros, scales per tensor/channel."""
    n = int(np.prod(shape))
    lo, hi = (-(1 << (width - 1)) + 1, (1 << (width - 1)) - 1) if signed and width > 1 else (0, (1 << width) - 1)
    q = rng.integers(lo, hi + 1, n).astype(np.float32)
    q[rng.random(n) < sparsity] = 0
    if gran == "channel" and len(shape) >= 2:
        s = (rng.random(shape[0]) * 0.1 + 1e-3).astype(np.float32)
        x = (q.reshape(shape[0], -1) * s[:, None]).reshape(shape)
    else:
        x = (q * np.float32(rng.random() * 0.1 + 1e-3)).reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, width=st.integers(1, 16), sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
       gran=st.sampled_from(["tensor", "channel"]), seed=st.integers(0, 2**31 - 1), signed=st.booleans())
def test_lossless_grid_roundtrip(tmp_path_factory, shape, width, sparsity, gran, seed, signed):
    rng = np.random.default_rng(seed)
    x = make_grid_tensor(rng, shape, width, sparsity, gran, signed)
    p = tmp_path_factory.mktemp("rt") / "x.mbz"
    mbz.save({"w": x}, p)
    assert bits_equal(mbz.load(p)["w"], x)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, bits=st.integers(2, 16), sparsity=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
       gran=st.sampled_from(["tensor", "channel", "group"]), group=st.integers(1, 17),
       symmetric=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_lossy_equals_quantize_state_dict(tmp_path_factory, shape, bits, sparsity, gran, group, symmetric, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x[torch.from_numpy(rng.random(shape) < sparsity)] = 0
    sd = {"layer.weight": x.reshape(1, *shape) if x.dim() < 2 else x}
    p = tmp_path_factory.mktemp("lossy") / "x.mbz"
    kw = dict(wbits=bits, granularity=gran, group_size=group, symmetric=symmetric,
              axis=int(rng.integers(0, sd["layer.weight"].dim())))
    rep = mbz.save(sd, p, **kw)
    want = quantize_state_dict(sd, QuantPolicy(bits, gran, kw["axis"], group, symmetric))
    got = mbz.load(p)
    assert bits_equal(got["layer.weight"], want["layer.weight"])
    assert rep.tensors[0].quantized and rep.tensors[0].error["max_abs_err"] >= 0
    # zeros stay exact zeros under quantization (pruned weights remain pruned)
    assert bool((got["layer.weight"][sd["layer.weight"] == 0] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_raw_dtypes(tmp_mbz, dtype):
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        x = torch.rand(5, 7, generator=g) > 0.5
    elif dtype.is_floating_point:
        x = torch.randn(5, 7, generator=g).to(dtype)
    else:
        x = torch.randint(0, 100, (5, 7), generator=g).to(dtype)
    sd = {"a": x, "scalar": torch.tensor(3, dtype=torch.int64), "empty": torch.zeros(0, 4, dtype=dtype)}
    mbz.save(sd, tmp_mbz)
    back = mbz.load(tmp_mbz)
    for k in sd:
        assert bits_equal(back[k], sd[k]), k


def test_special_floats_and_negative_zero(tmp_mbz):
    q = torch.randint(-7, 8, (16, 9)).float() * 0.25
    neg = q.clone()
    neg[neg == 0] = -0.0                                   # w * mask on negative weights gives -0.0
    nan = torch.randn(4, 4)
    nan[0, 0] = float("nan")
    nan[1, 1] = float("inf")
    sd = {"neg": neg, "nan": nan, "denorm": torch.tensor([1e-45, -1e-45, 0.0, 3e-45])}
    mbz.save(sd, tmp_mbz)
    back = mbz.load(tmp_mbz)
    for k in sd:
        assert bits_equal(back[k], sd[k]), k
    with mbz.open(tmp_mbz) as r:
        rec = {x.name: x for x in r.layout.records}
    assert rec["neg"].encoding == Encoding.AFFINE and rec["neg"].params["nz"]


def test_fake_quantize_outputs_detected_losslessly(tmp_mbz):
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    s = w.abs().amax(dim=(1, 2, 3)) / 127
    per_ch = torch.fake_quantize_per_channel_affine(w, s, torch.zeros(32, dtype=torch.int32), 0, -128, 127)
    s2 = (w.amax(dim=(1, 2, 3)) - w.amin(dim=(1, 2, 3))) / 15
    zp = torch.randint(0, 16, (32,), dtype=torch.int32)
    asym = torch.fake_quantize_per_channel_affine(w, s2, zp, 0, 0, 15)
    per_t = torch.fake_quantize_per_tensor_affine(w, 0.0173, 3, 0, 15)
    lin = torch.fake_quantize_per_channel_affine(torch.randn(10, 64), torch.rand(10) * 0.01 + 1e-3,
                                                 torch.zeros(10, dtype=torch.int32), 0, -8, 7)
    sd = {"a.weight": per_ch, "b.weight": asym, "c.weight": per_t, "d.weight": lin}
    mbz.save(sd, tmp_mbz)
    back = mbz.load(tmp_mbz)
    with mbz.open(tmp_mbz) as r:
        encs = {x.name: x for x in r.layout.records}
    for k in sd:
        assert bits_equal(back[k], sd[k]), k
        assert encs[k].encoding == Encoding.AFFINE, k
        assert encs[k].params["b"] <= 8, k       # found the grid, not stored as fp32


def test_codebook_detected(tmp_mbz):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(13, generator=g)
    x = table[torch.randint(0, 13, (64, 64), generator=g)]
    x[x.abs() < 0.5] = 0
    mbz.save({"x": x}, tmp_mbz)
    assert bits_equal(mbz.load(tmp_mbz)["x"], x)
    with mbz.open(tmp_mbz) as r:
        assert r.layout.records[0].encoding == Encoding.CODEBOOK


def test_sparse_layouts_all_reachable(monkeypatch):
    # AFFINE's layouts: RAW's BITMAP layout (format 1.2; 368 B against AFFINE DELTA's 410 B on the sparsest
    # case) is left out here and tested in test_raw_bitmap.py
    monkeypatch.setattr("mbz.encoder.BITMAP_MIN_ZEROS", 2.0)
    rng = np.random.default_rng(0)
    seen = set()
    for n, density in [(4096, 1.0), (4096, 0.4), (102400, 0.001)]:
        q = rng.integers(1, 8, n).astype(np.float32)
        q[rng.random(n) > density] = 0
        # with zstd as the entropy stage (RANS codes a dense stream's zeros about as cheaply as a bitmap)
        et = encode_tensor("x", torch.from_numpy(q * np.float32(0.5)).reshape(-1, 64), ent=EntropyPolicy(rans=False))
        seen.add(Sparsity(et.params["sp"]))
    assert seen == {Sparsity.DENSE, Sparsity.BITMAP, Sparsity.DELTA}


@pytest.mark.parametrize("iw_gap", [1, 300, 70000])
def test_delta_fillers_long_runs(tmp_mbz, iw_gap):
    x = torch.zeros(200000)
    x[::iw_gap] = 2.0
    x[-1] = -1.0
    mbz.save({"x": x.reshape(400, 500)}, tmp_mbz)
    assert bits_equal(mbz.load(tmp_mbz)["x"], x.reshape(400, 500))


def test_all_zero_and_no_zero(tmp_mbz):
    sd = {"zero": torch.zeros(300, 300), "full": torch.randint(1, 4, (50, 50)).float() * 0.5}
    mbz.save(sd, tmp_mbz)
    back = mbz.load(tmp_mbz)
    assert bits_equal(back["zero"], sd["zero"]) and bits_equal(back["full"], sd["full"])
    with mbz.open(tmp_mbz) as r:
        assert r.accounting()["tensors"][0]["bytes"]["values"] < 16  # 90,000 zeros cost (almost) nothing


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
       sparsity=st.sampled_from([0.0, 0.5, 0.97, 1.0]), gran=st.sampled_from(["tensor", "channel", "group"]),
       group=st.integers(1, 30), chunk=st.sampled_from([8, 24, 64, 1 << 17]), seed=st.integers(0, 2**31 - 1))
def test_chunked_decode_of_every_candidate(shape, sparsity, gran, group, chunk, seed):
    """Load decodes a chunk at a time; every layout, width, zero-point and granularity crosses chunk edges."""
    import mbz.codecs.affine as affine
    saved, affine.CHUNK_ELEMENTS = affine.CHUNK_ELEMENTS, chunk
    try:
        _decode_every_candidate(shape, sparsity, gran, group, seed)
    finally:
        affine.CHUNK_ELEMENTS = saved


def _decode_every_candidate(shape, sparsity, gran, group, seed):
    from mbz.decoder import decode_record
    from mbz.encoder import affine_candidates
    from mbz.quantize import quantize_tensor
    from mbz.spec import DType
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x[torch.from_numpy(rng.random(shape) < sparsity)] = 0
    grid = quantize_tensor(x, QuantPolicy(int(rng.integers(2, 9)), gran, int(rng.integers(0, len(shape))), group,
                                          bool(rng.integers(0, 2))))
    want = grid.values()
    cands = affine_candidates(grid, None, big=False)
    assert cands
    for p, secs in cands:
        got = decode_record(DType.F32, shape, Encoding.AFFINE, p, dict(secs)).numpy().reshape(-1)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), p


@pytest.mark.parametrize("n,density", [(50000, 0.5), (50000, 0.05), (300000, 0.0005), (70000, 0.9)])
def test_delta_width_histogram_matches_direct_count(n, density):
    """best_delta_width counts fillers from a gap histogram; it must pick what counting every gap picks."""
    from mbz.codecs.bitpack import packed_size
    from mbz.codecs.sparse import best_delta_width, delta_count
    rng = np.random.default_rng(int(n * density) + 1)
    pos = np.flatnonzero(rng.random(n) < density)
    centre = max(1, int(n / max(1, pos.size)).bit_length())
    widths = range(max(1, centre - 4), min(16, centre + 4) + 1)
    cost = {iw: packed_size(delta_count(pos, n, iw), iw) + packed_size(delta_count(pos, n, iw), 8) for iw in widths}
    assert best_delta_width(pos, n, 8) == min(widths, key=lambda iw: (cost[iw], iw))
