"""Entropy profiles and plain (unfiltered) RAW sections: stored without zstd by the default profile when zstd
saves less than half, read with no decoding (a private mapping in mbz.open, one checked copy in mbz.load)."""
import os
import zlib

import numpy as np
import pytest
import torch

import mbz
from mbz import container
from mbz.container import crc32_combine, crc_copy
from mbz.errors import ChecksumError

from conftest import bits_equal


def _checkpoint():
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(400_000, generator=g)
    sparse[torch.rand(400_000, generator=g) < 0.75] = 0  # 75% zeros, 100,000 distinct nonzeros (no codebook,
    # no grid): byte-plane zstd saves more than half
    return {"w": torch.randn(300, 200, generator=g), "sparse": sparse, "b": torch.randn(16, generator=g)}


def _filters(path):
    with mbz.open(path) as r:
        return {rec.name: [s.filter.name for s in rec.sections] for rec in r.layout.records}, r.layout.align


def test_default_profile_stores_large_raw_sections_plain_unless_zstd_halves_them(tmp_path, monkeypatch):
    monkeypatch.setattr("mbz.encoder.BITMAP_MIN_ZEROS", 2.0)  # DENSE RAW only (BITMAP: test_raw_bitmap.py)
    sd = _checkpoint()
    d = mbz.save(sd, tmp_path / "d.mbz")
    b = mbz.save(sd, tmp_path / "b.mbz", profile="best", rans=False)
    fd, align_d = _filters(tmp_path / "d.mbz")
    fb, _ = _filters(tmp_path / "b.mbz")
    assert fd["w"] == ["NONE"] and fb["w"] == ["SHUFFLE_ZSTD"]          # zstd saves ~10%: plain by default
    # zstd saves > 1/2: kept; of the two zstd filters the smaller, plain zstd on pruned floats (zero runs span
    # every byte of an element), though the section is large
    assert fd["sparse"] == fb["sparse"] == ["ZSTD"]
    assert fd["b"] == fb["b"]                                          # small sections: the smallest
    assert d.file_bytes > b.file_bytes
    assert align_d == 64                                               # plain sections start aligned
    for path in ("d.mbz", "b.mbz"):
        back = mbz.load(tmp_path / path)
        assert all(bits_equal(sd[k], back[k]) for k in sd)


def test_sampled_estimate_skips_compressing_large_incompressible_sections(tmp_path, monkeypatch):
    from mbz.codecs import filters
    calls = []
    real = filters.ShuffleZstdFilter.encode
    monkeypatch.setattr(filters.ShuffleZstdFilter, "encode", lambda self, d, *a, **k: calls.append(len(d)) or real(self, d, *a, **k))
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(1 << 20, generator=g)}  # 4 MiB: estimated on 8 samples of 64 KiB, never compressed whole
    mbz.save(sd, tmp_path / "x.mbz")
    assert calls and max(calls) <= 64 << 10
    assert _filters(tmp_path / "x.mbz")[0]["w"] == ["NONE"]
    assert bits_equal(mbz.load(tmp_path / "x.mbz")["w"], sd["w"])


def test_small_files_keep_byte_alignment(tmp_path):
    mbz.save({"b": torch.randn(16)}, tmp_path / "s.mbz")
    assert _filters(tmp_path / "s.mbz")[1] == 1


def _file_backed(t: torch.Tensor, path) -> bool:
    """Whether the tensor's memory lies in a mapping of `path` (/proc/self/maps)."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return line.rstrip().endswith(os.path.basename(path))
    return False


def test_open_maps_plain_tensors_privately_and_load_copies(tmp_path):
    sd = _checkpoint()
    p = tmp_path / "d.mbz"
    mbz.save(sd, p)
    with mbz.open(p) as r:
        a, b = r["w"], r["w"]
        assert a.data_ptr() != b.data_ptr() and bits_equal(a, sd["w"])
        if os.path.exists("/proc/self/maps"):
            assert _file_backed(a, p) and not _file_backed(r["sparse"], p)  # no copy; decoded ones are memory
        a.add_(1)                                   # private: neither the file nor the next read sees it
        assert bits_equal(b, sd["w"]) and bits_equal(r["w"], sd["w"])
    assert bits_equal(b, sd["w"])                   # still readable after the file is closed
    back = mbz.load(p)
    if os.path.exists("/proc/self/maps"):
        assert not _file_backed(back["w"], p) and _file_backed(mbz.load(p, mmap=True)["w"], p)
    back["w"].add_(1)
    assert bits_equal(mbz.load(p, mmap=True)["w"], sd["w"])
    assert bits_equal(mbz.open(p)["w"], sd["w"])
    raw = open(p, "rb").read()
    with mbz.MbzReader(data=raw) as r:              # bytes in memory: copied, writable
        t = r["w"]
        t.add_(0)
        assert bits_equal(t, sd["w"])


@pytest.mark.parametrize("mmap", [False, True])
def test_corrupt_plain_section_raises_checksum_error(tmp_path, monkeypatch, mmap):
    monkeypatch.setattr(container, "PARALLEL_BYTES", 1 << 16)  # the chunked, threaded path too
    monkeypatch.setattr(container, "CRC_CHUNK", 1 << 14)
    sd = _checkpoint()
    p = tmp_path / "d.mbz"
    mbz.save(sd, p)
    assert bits_equal(mbz.load(p, mmap=mmap)["w"], sd["w"])
    with mbz.open(p) as r:
        off = next(rec for rec in r.layout.records if rec.name == "w").sections[0].offset
    data = bytearray(open(p, "rb").read())
    data[off + 100_000] ^= 1
    open(p, "wb").write(bytes(data))
    with pytest.raises(ChecksumError, match="tensor 'w'"):
        mbz.load(p, mmap=mmap)


def test_crc32_combine_and_chunked_copy(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.bytes(1000), rng.bytes(77777)
    assert crc32_combine(zlib.crc32(a, 5), zlib.crc32(b), len(b)) == zlib.crc32(a + b, 5)
    assert crc32_combine(9, 0, 0) == 9
    monkeypatch.setattr(container, "PARALLEL_BYTES", 1 << 12)
    monkeypatch.setattr(container, "CRC_CHUNK", 1000)
    src = rng.bytes(10_001)
    dest = np.empty(len(src), np.uint8)
    if (os.cpu_count() or 1) >= 2:
        assert crc_copy(src, 3, dest) == zlib.crc32(src, 3) and dest.tobytes() == src


def test_quantized_scales_stored_as_float32_only_when_exact(tmp_path):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 8, generator=g)
    exact = (torch.rand(16, generator=g) / 50 + 1e-3).double()        # float32 values (torch.ao's observers)
    wide = exact.clone()
    wide[3] += 1e-12                                                   # one scale off the float32 grid
    zp = torch.zeros(16, dtype=torch.long)
    sd = {"a": torch.quantize_per_channel(w, exact, zp, 0, torch.qint8),
          "b": torch.quantize_per_channel(w, wide, zp, 0, torch.qint8),
          "c": torch.quantize_per_tensor(w, 0.1, 2, torch.quint8)}    # 0.1: not a float32 value
    mbz.save(sd, tmp_path / "q.mbz")
    with mbz.open(tmp_path / "q.mbz") as r:
        sb = {x.name: x.params.get("sb", 4) for x in r.layout.records}
        scale_bytes = {x.name: next(s.decoded for s in x.sections if s.role.name == "SCALES") for x in r.layout.records}
    assert sb == {"a": 4, "b": 8, "c": 8} and scale_bytes == {"a": 64, "b": 128, "c": 8}
    back = mbz.load(tmp_path / "q.mbz")
    assert all(bits_equal(sd[k], back[k]) for k in sd)
    assert back["a"].q_per_channel_scales().dtype == torch.float64


def test_default_profile_keeps_zstd_on_codes_of_large_models_only_where_it_saves_an_eighth(tmp_path, monkeypatch):
    from mbz import encoder
    from mbz.encoder import EntropyPolicy, encode_tensor
    g = torch.Generator().manual_seed(4)
    flat = (torch.randn(400, 256, generator=g) * 40).round().clamp(-127, 127) * 0.01  # 8-bit codes: zstd saves ~7%
    peaked = (torch.randn(400, 256, generator=g) * 6).round().clamp(-127, 127) * 0.01  # ~4.6 bits of 8: > 1/8
    sd = {"flat": flat, "peaked": peaked}
    mbz.save(sd, tmp_path / "s.mbz")                   # a small model keeps the smallest
    assert _filters(tmp_path / "s.mbz")[0]["flat"][0] == "ZSTD"
    monkeypatch.setattr(encoder, "LARGE_MODEL", 1 << 16)  # as if the model were large
    mbz.save(sd, tmp_path / "d.mbz")
    fd = _filters(tmp_path / "d.mbz")[0]
    with mbz.open(tmp_path / "d.mbz") as r:
        assert all(x.encoding.name == "AFFINE" for x in r.layout.records)
    assert fd["flat"][0] == "NONE" and fd["peaked"][0] == "ZSTD"
    best = encode_tensor("flat", flat, ent=EntropyPolicy(profile="best"))  # the smallest: zstd
    assert best.sections[0].filter.name == "ZSTD"
    back = mbz.load(tmp_path / "d.mbz")
    assert all(bits_equal(sd[k], back[k]) for k in sd)


def test_chunked_checksum_pool_works_in_a_forked_child(tmp_path, monkeypatch):
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs fork and 2 cores")
    monkeypatch.setattr(container, "PARALLEL_BYTES", 1 << 12)
    monkeypatch.setattr(container, "CRC_CHUNK", 1000)
    src = np.random.default_rng(1).bytes(10_001)
    assert crc_copy(src, 0) == zlib.crc32(src)   # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: a fresh pool, else the call would wait forever on the parent's threads
        os._exit(0 if crc_copy(src, 0) == zlib.crc32(src) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_reader_plain_mode_is_checked():
    with pytest.raises(ValueError, match="plain must be"):
        mbz.MbzReader(data=b"", plain="mmap")


def test_best_compresses_large_well_compressing_sections_at_level_19(tmp_path, monkeypatch):
    """--best: a large raw section the trial level already halves (pruned floats) is compressed again at level
    19 (smaller); a large section that compresses poorly (dense floats) keeps the trial level (fast)."""
    from mbz import encoder
    monkeypatch.setattr(encoder, "BITMAP_MIN_ZEROS", 2.0)  # DENSE RAW only (BITMAP: test_raw_bitmap.py)
    sd = _checkpoint()

    def sections(path):
        with mbz.open(path) as r:
            return {rec.name: sum(s.stored for s in rec.sections) for rec in r.layout.records}
    mbz.save(sd, tmp_path / "deep.mbz", profile="best", rans=False)
    monkeypatch.setattr(encoder, "BEST_DEEP", 0.0)  # no large section is compressed again
    mbz.save(sd, tmp_path / "trial.mbz", profile="best", rans=False)
    deep, trial = sections(tmp_path / "deep.mbz"), sections(tmp_path / "trial.mbz")
    assert deep["sparse"] < 0.97 * trial["sparse"], (deep, trial)
    assert deep["w"] == trial["w"]  # 240 KB of dense floats: the trial level's bytes
