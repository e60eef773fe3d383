"""The structure-aware fuzzer (tests/fuzz_format.py) in CI: a few thousand mutated files, no failure.

The long campaign (>= 100,000 files) is `python tests/fuzz_format.py --cases 100000 ...`; its table is
committed under results/fuzz/.
"""
import os
import tempfile

import pytest

import fuzz_format as F


def test_seeds_cover_every_dtype_encoding_layout_filter_alignment_and_codec():
    with tempfile.TemporaryDirectory() as d:
        seeds = F.make_seeds(d)
    seen = {k: set() for k in ("dtype", "enc", "sp", "g", "filter", "codec", "align", "zb", "nz", "sg")}
    for s in seeds:
        m = F.parse_model(s["data"])
        seen["codec"].add(m["codec"])
        seen["align"].add(m["header"]["align"] > 1)
        for r, secs in zip(m["header"]["tensors"], m["secs"]):
            p = r["p"]
            seen["dtype"].add(r["t"])
            seen["enc"].add(r["e"])
            if r["e"] == 0 and p.get("sp"):   # BITMAP RAW (format 1.2), with and without negative zeros
                seen["sp"].add((0, p["sp"], bool(p.get("nz"))))
            if r["e"]:
                seen["sp"].add((r["e"], p["sp"]) if r["e"] == 2 else p["sp"])
            if r["e"] == 1:
                seen["g"].add(p["g"])
                seen["zb"].add(bool(p.get("zb")))
                seen["nz"].add(bool(p.get("nz")))
                seen["sg"].add(bool(p.get("sg")))
            seen["filter"].update(x["filter"] for x in secs)
    assert set(range(10)) <= seen["dtype"]
    # format 1.1: quantized (qint8, quint8), float8, uint16, complex64, under a structure tree with VIEW nodes
    assert {10, 11, 13, 18, 22} <= seen["dtype"]
    trees = [F.parse_model(s["data"])["header"].get("tree") for s in seeds]
    assert any(t is not None and "[12, " in str(t) for t in trees)
    assert seen["enc"] == {0, 1, 2}
    assert {0, 1, 2} <= seen["sp"] and {(2, 0), (2, 2)} <= seen["sp"] and {(0, 1, True), (0, 1, False)} <= seen["sp"]
    assert seen["g"] == {0, 1, 2}
    assert seen["filter"] == {0, 1, 2}
    assert seen["codec"] == {0, 1} and seen["align"] == {False, True}
    assert seen["zb"] == seen["nz"] == seen["sg"] == {False, True}


def test_mutation_kinds():
    assert len(F.KINDS) >= 12


def test_fuzz_campaign_in_ci():
    """~2,000 mutated files over every kind: MbzError or the right tensors, nothing else."""
    res = F.campaign(int(os.environ.get("MBZ_FUZZ_CASES", 2000)), seed=0, cli_every=4)
    assert res["failures"] == 0, res["examples"][:3]
    # the mutations reach past the checksums: most files are refused, some decode (unchanged or validly changed)
    t = res["totals"]
    assert t.get("mbzerror", 0) > res["cases"] // 3
    assert t.get("ok", 0) + t.get("valid_changed", 0) > res["cases"] // 10


def test_oracle_catches_a_broken_reader(monkeypatch):
    """The fuzzer itself can fail: a reader raising a plain Python error, or decoding wrongly, is reported."""
    import mbz.codecs.raw as raw

    orig = raw.tensor_from_bytes
    folder = tempfile.mkdtemp()
    seeds = F.make_seeds(folder)

    def broken(buf, dtype, shape):
        if len(shape) == 1 and shape[0] == 2:
            raise ValueError("boom")
        return orig(buf, dtype, shape)

    monkeypatch.setattr("mbz.decoder.tensor_from_bytes", broken)
    res = F.campaign(32, seed=1, cli_every=100, folder=folder, seeds=seeds)
    assert res["totals"].get("exception", 0) > 0
    monkeypatch.undo()

    def wrong(buf, dtype, shape):
        t = orig(buf, dtype, shape)
        return t.flip(0) if len(shape) == 1 and shape[0] == 20 else t

    monkeypatch.setattr("mbz.decoder.tensor_from_bytes", wrong)
    res = F.campaign(32, seed=1, cli_every=100, folder=folder, seeds=seeds)
    assert res["totals"].get("silent_wrong", 0) > 0
