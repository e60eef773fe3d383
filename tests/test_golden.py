"""A file written by format 1.0 must keep decoding to the same bits, forever."""
import hashlib
import json
import os

import torch

import mbz
from mbz.compare import fingerprint
from mbz.spec import Encoding

DATA = os.path.join(os.path.dirname(__file__), "data")


def digest(t: torch.Tensor) -> str:
    """sha256 of the tensor's raw bytes (tools/make_golden.py wrote the expected ones with the same function)."""
    b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(b).hexdigest()


def test_golden_file_decodes():
    with open(os.path.join(DATA, "golden_v1.json")) as f:
        expect = json.load(f)
    got = mbz.load(os.path.join(DATA, "golden_v1.mbz"))
    assert sorted(got) == sorted(expect)
    for name, e in expect.items():
        t = got[name]
        assert str(t.dtype) == e["dtype"] and list(t.shape) == e["shape"], name
        assert digest(t) == e["sha256"], name


def test_golden_file_covers_encodings():
    with mbz.open(os.path.join(DATA, "golden_v1.mbz")) as r:
        encs = {rec.encoding for rec in r.layout.records}
        assert encs == {Encoding.RAW, Encoding.AFFINE, Encoding.CODEBOOK}
        assert r.metadata["purpose"].startswith("golden")
        assert r.version == (1, 0)


leaves = fingerprint   # what tools/make_golden_v1_1.py wrote into the golden JSON files


def test_golden_v1_1_file_decodes():
    """Format 1.1: structure tree, quantized / float8 / uint16 / complex dtypes, sparse, shared storage."""
    with open(os.path.join(DATA, "golden_v1_1.json")) as f:
        expect = json.load(f)
    path = os.path.join(DATA, "golden_v1_1.mbz")
    got = mbz.load_checkpoint(path)
    assert json.loads(json.dumps(leaves(got))) == expect
    m = got["model"]
    assert m["emb.weight"] is m["head.weight"]
    assert m["a"].untyped_storage().data_ptr() == m["b"].untyped_storage().data_ptr()
    assert mbz.load(path).keys() == m.keys()
    with mbz.open(path) as r:
        assert r.version == (1, 1) and r.metadata["purpose"].startswith("golden")


def test_rans_golden_file_decodes_and_covers_the_filter():
    """Format 1.1: the RANS filter (spec §5.7) in both alphabets, with contexts and several lanes."""
    from mbz.codecs.rans import _Section
    from mbz.spec import Filter, RansAlphabet
    path = os.path.join(DATA, "golden_v1_1_rans.mbz")
    with open(os.path.join(DATA, "golden_v1_1_rans.json")) as f:
        expect = json.load(f)
    got = mbz.load(path)
    assert sorted(got) == sorted(expect)
    for name, e in expect.items():
        assert digest(got[name]) == e["sha256"], name
    seen = set()
    with mbz.open(path) as r:
        assert r.version == (1, 1)
        for rec in r.layout.records:
            assert digest(r[rec.name]) == expect[rec.name]["sha256"]  # the per-tensor path too
            for s in rec.sections:
                if s.filter == Filter.RANS:
                    h = _Section(r._src.buf[s.offset:s.offset + s.stored], s.decoded)
                    seen |= {RansAlphabet(h.alpha).name, "left" if h.tl > 1 else "", "up" if h.tu > 1 else "",
                             "lanes" if h.K > 1 else "", s.role.name}
    assert {"DIRECT", "CLASSES", "left", "up", "lanes", "CODES", "MASK"} <= seen


def test_golden_v1_2_quantized_float32_scales_decode():
    """Format 1.2: a quantized dtype's scales stored as float32 (sb = 4) widen exactly to torch's float64."""
    with open(os.path.join(DATA, "golden_v1_2_qscales.json")) as f:
        expect = json.load(f)
    path = os.path.join(DATA, "golden_v1_2_qscales.mbz")
    assert json.loads(json.dumps(leaves(mbz.load_checkpoint(path)))) == expect
    with mbz.open(path) as r:
        assert r.version == (1, 2)
        assert {x.name: x.params.get("sb", 4) for x in r.layout.records} == {"conv.weight": 4, "fc.weight": 8, "act": 4}


def test_arans_golden_file_decodes_and_covers_the_filter():
    """Format 1.2: the ARANS filter (spec §5.8) on 2-D and 1-D integer sections and float32 scales."""
    from mbz.codecs.arans import _Header
    from mbz.spec import AransKind, Filter
    path = os.path.join(DATA, "golden_v1_2_arans.mbz")
    with open(os.path.join(DATA, "golden_v1_2_arans.json")) as f:
        expect = json.load(f)
    got = mbz.load(path)
    assert sorted(got) == sorted(expect)
    for name, e in expect.items():
        assert digest(got[name]) == e["sha256"], name
    seen = set()
    with mbz.open(path) as r:
        assert r.version == (1, 2)
        for rec in r.layout.records:
            assert digest(r[rec.name]) == expect[rec.name]["sha256"]  # the per-tensor path too
            for s in rec.sections:
                if s.filter == Filter.ARANS:
                    h = _Header(r._src.buf[s.offset:s.offset + s.stored], s.decoded)
                    seen |= {AransKind(h.kind).name, "signed" if h.signed else "", "row" if h.R else "",
                             "lanes" if h.K > 1 else "", s.role.name}
    assert {"INT", "FLOAT32", "signed", "row", "lanes", "CODES", "MASK", "SCALES", "ZERO_POINTS"} <= seen


def test_golden_v1_2_raw_bitmap_decodes():
    """Format 1.2: the BITMAP layout of RAW (spec §5.2) for float32 (with -0.0 and NaN payloads), float16,
    bfloat16, int16 and bool tensors, its sections unfiltered, zstd and byte-plane zstd."""
    from mbz.spec import Filter, Sparsity
    path = os.path.join(DATA, "golden_v1_2_raw_bitmap.mbz")
    with open(os.path.join(DATA, "golden_v1_2_raw_bitmap.json")) as f:
        expect = json.load(f)
    assert json.loads(json.dumps(leaves(mbz.load_checkpoint(path)))) == expect
    with mbz.open(path) as r:
        assert r.version == (1, 2)
        sp = {x.name: x.params.get("sp", 0) for x in r.layout.records}
        assert sp == dict.fromkeys(["conv.weight", "fc.weight", "half.weight", "bf16.weight", "counts", "keep"],
                                   Sparsity.BITMAP) | {"bias": Sparsity.DENSE}
        filters = {s.filter for x in r.layout.records for s in x.sections}
        assert filters == {Filter.NONE, Filter.ZSTD, Filter.SHUFFLE_ZSTD}
        for name, e in expect.items():
            if name:
                assert fingerprint(r[name[1:]], name) == {name: e}  # the per-tensor path (mmap) too


def test_golden_v1_2_raw_bitmap_nz_decodes():
    """Format 1.2: negative zeros of BITMAP RAW (param nz, a NEGZERO section, spec §5.2) in float32, float16,
    bfloat16 and float64 tensors with about half their zeros -0.0; one tensor without any (no nz)."""
    import torch
    path = os.path.join(DATA, "golden_v1_2_raw_bitmap_nz.mbz")
    with open(os.path.join(DATA, "golden_v1_2_raw_bitmap_nz.json")) as f:
        expect = json.load(f)
    assert json.loads(json.dumps(leaves(mbz.load_checkpoint(path)))) == expect
    with mbz.open(path) as r:
        nz = {x.name: bool(x.params.get("nz")) for x in r.layout.records}
        assert nz == {"f32.weight": True, "f16.weight": True, "bf16.weight": True, "f64.weight": True,
                      "plus.weight": False}
        t = r["f32.weight"]
        assert bool(((t == 0) & torch.signbit(t)).any()) and bool(((t == 0) & ~torch.signbit(t)).any())

