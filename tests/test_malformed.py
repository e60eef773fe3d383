"""Untrusted bytes: every corruption raises an MbzError subclass that says what is wrong."""
import zlib

import msgpack
import pytest
import torch

import mbz
from mbz.api import MbzReader
from mbz.errors import ChecksumError, FormatError, LimitError, MbzError, TruncatedError, VersionError

from conftest import bits_equal, rebuild


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-3, 4, (4, 2, 3, 3), generator=g).float()
    q[torch.rand(q.shape, generator=g) < 0.5] = 0
    neg = q.clone()
    neg[neg == 0] = -0.0
    sd = {"a.weight": q * 0.125, "n.weight": neg * 0.5, "b": torch.randn(6, generator=g),
          "c": torch.randn(5, generator=g)[torch.randint(0, 5, (40,), generator=g)],
          "i": torch.tensor([1, 2, 3]), "d": torch.zeros(600)}
    sd["d"][::97] = 3.0
    p = tmp_path_factory.mktemp("m") / "small.mbz"
    mbz.save(sd, p)
    return sd, p.read_bytes()


def read_all(data: bytes) -> dict:
    with MbzReader(data=data) as r:
        return dict(r.items())


def test_small_file_reads(small):
    sd, data = small
    got = read_all(data)
    assert all(bits_equal(got[k], sd[k]) for k in sd)
    assert len(data) < 2000


def test_truncated_at_every_offset(small):
    _, data = small
    for cut in range(len(data)):
        with pytest.raises(MbzError):
            read_all(data[:cut])


def test_trailing_bytes(small):
    _, data = small
    with pytest.raises(FormatError, match="unexpected bytes after the payload"):
        read_all(data + b"\0")


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_every_byte_flipped(small, mask):
    """A flipped byte is detected, or (minor version only) changes nothing we return."""
    sd, data = small
    silent = []
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        try:
            got = read_all(bytes(bad))
        except MbzError:
            continue
        assert all(bits_equal(got[k], sd[k]) for k in sd), f"byte {i} ^ {mask:#x}: silently wrong tensor"
        silent.append(i)
    assert set(silent) <= {10, 11}, silent   # only the minor version field may change harmlessly


def test_bad_magic(small):
    _, data = small
    with pytest.raises(FormatError, match="bad magic"):
        read_all(b"PK\x03\x04" + data[4:])
    with pytest.raises(FormatError, match="bad magic"):
        read_all(b"hello world, not a model at all")
    with pytest.raises(TruncatedError):
        read_all(b"")


def test_future_major_refused_newer_minor_read(small):
    sd, data = small
    with pytest.raises(VersionError, match=r"version 2\.0 is newer than this reader \(1\.\d+\)"):
        read_all(rebuild(data, major=2, minor=0))
    newer = rebuild(data, minor=7, edit_header=lambda h: h.update(future_key={"x": 1}))
    got = read_all(newer)
    assert all(bits_equal(got[k], sd[k]) for k in sd)


def test_oversized_header_length(small):
    _, data = small
    bad = bytearray(data)
    bad[16:20] = (10**9).to_bytes(4, "little")
    with pytest.raises(TruncatedError, match="header claims 1000000000 bytes"):
        read_all(bytes(bad))


def test_header_zstd_bomb_refused():
    import zstandard
    from mbz.spec import MAGIC, PREAMBLE
    block = zstandard.ZstdCompressor(level=3).compress(msgpack.packb({"pad": b"\0" * (80 << 20)}))
    data = PREAMBLE.pack(MAGIC, 1, 0, 1, b"\0\0\0", len(block), zlib.crc32(block)) + block
    with pytest.raises(LimitError, match="header expands|declares .* content bytes"):
        read_all(data)


def _edit_section(h, name, idx, field, value):
    for r in h["tensors"]:
        if r["n"] == name:
            r["x"][idx][field] = value
    return h


def test_offsets_out_of_range_or_overlapping(small):
    _, data = small
    with pytest.raises(FormatError, match="overlaps the previous section"):
        read_all(rebuild(data, lambda h: _edit_section(h, "b", 0, 1, 0)))
    with pytest.raises(FormatError, match="leaves a gap"):
        read_all(rebuild(data, lambda h: _edit_section(h, "b", 0, 1, 10**6)))
    with pytest.raises(MbzError):
        read_all(rebuild(data, lambda h: h.update(payload=h["payload"] + 10)))


def test_oversized_counts(small):
    _, data = small

    def huge_shape(h):
        h["tensors"][2]["s"] = [2**40, 2**40]

    def huge_m(h):
        h["tensors"][0]["p"]["m"] = 2**47

    def huge_decoded(h):
        h["tensors"][0]["x"][0][4] = 2**40

    for edit, pat in [(huge_shape, "decoded length|product of nonzero sizes"), (huge_m, "decoded length|cannot cover|stored codes|stores .* codes for"),
                      (huge_decoded, "may not expand|decoded length|declares")]:
        with pytest.raises(MbzError, match=pat):
            read_all(rebuild(data, edit))


def test_bad_fields_named(small):
    _, data = small
    cases = [
        (lambda h: h["tensors"][0].update(t=99), "tensor 'a.weight' dtype: unknown DType value 99"),
        (lambda h: h["tensors"][0].update(e=7), "unknown Encoding value 7"),
        (lambda h: h["tensors"][0]["p"].update(b=17), r"'b' \(code width\)"),
        (lambda h: h["tensors"][0].update(n=""), "name must be a non-empty string"),
        (lambda h: h["tensors"][1].update(n="a.weight"), "appears twice"),
        (lambda h: h.update(tensors="x"), "'tensors' must be a list"),
        (lambda h: h.update(align=3), "power of two"),
        (lambda h: h["tensors"][0]["x"].pop(), "sections"),
    ]
    for edit, pat in cases:
        with pytest.raises(MbzError, match=pat):
            read_all(rebuild(data, edit))


def test_data_corruption_is_checksum_error(small):
    _, data = small
    bad = bytearray(data)
    bad[-30] ^= 0x10     # inside the last sections, before the CRC table
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        read_all(bytes(bad))


def test_not_msgpack_header():
    from mbz.spec import MAGIC, PREAMBLE
    block = b"\xc1\xc1\xc1"
    data = PREAMBLE.pack(MAGIC, 1, 0, 0, b"\0\0\0", len(block), zlib.crc32(block)) + block
    with pytest.raises(FormatError, match="not valid msgpack"):
        read_all(data)


def test_header_fast_path_refuses_what_the_scan_refuses():
    """checked_object (unpack first for small headers) raises the scan's own error for every rule it checks."""
    import msgpack
    from mbz.headerscan import checked_object, scan, unpack

    deep = {"a": 1}
    for _ in range(70):
        deep = {"a": deep}
    bad = [
        msgpack.packb({"a": 1}) + b"\x00",                      # bytes after the object
        b"\x82\xa1a\x01\xa1a\x02",                               # duplicate key
        b"\x81\xc4\x01a\x01",                                    # bin (non-string) key
        b"\x81\x01\x01",                                         # int key
        b"\x81\xa1a\xd4\x01\x00",                                # ext type
        msgpack.packb(deep),                                     # nested deeper than 64
        b"\x81\xa1a",                                            # truncated
        b"\x81\xa1a\xc1",                                        # unused byte
    ]
    for raw in bad:
        with pytest.raises(MbzError) as slow:
            scan(raw, 1 << 20)
            unpack(raw)
        with pytest.raises(MbzError) as fast:
            checked_object(raw, 1 << 20)
        assert str(fast.value) == str(slow.value), raw
    good = msgpack.packb({"a": [1, {"b": b"x"}], "c": 2.5})
    assert checked_object(good, 1 << 20) == unpack(good)


def test_inspect_no_decode_checks_every_tensors_checksum(small, tmp_path, capsys):
    """`mbz inspect --no-decode` (MbzReader.check_checksums) catches a flipped payload byte of any tensor without
    decoding it, in one line naming the tensor; an intact file passes."""
    from mbz.cli import main
    _, data = small
    ok = tmp_path / "ok.mbz"
    ok.write_bytes(data)
    assert main(["inspect", str(ok), "--no-decode"]) == 0
    capsys.readouterr()
    with MbzReader(data=data) as r:
        recs = [(rec.name, rec.sections[-1].offset + rec.sections[-1].stored - 1) for rec in r.layout.records
                if rec.sections]
    assert len(recs) >= 4
    for name, at in recs:
        bad = bytearray(data)
        bad[at] ^= 0x01
        p = tmp_path / "bad.mbz"
        p.write_bytes(bytes(bad))
        with MbzReader(p) as r, pytest.raises(ChecksumError, match=f"tensor '{name}'"):
            r.check_checksums()
        assert main(["inspect", str(p), "--no-decode"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"tensor '{name}'" in err and "checksum" in err, err


def test_a_short_file_is_named_not_an_mbz_unless_it_starts_like_one(tmp_path):
    """A 6-byte text file is 'not an .mbz file'; the first 5 bytes of a real one are a truncated .mbz."""
    import mbz
    from mbz.errors import FormatError, TruncatedError
    (tmp_path / "text.mbz").write_bytes(b"hello\n")
    with pytest.raises(FormatError, match="not an .mbz file"):
        mbz.open(tmp_path / "text.mbz")
    mbz.save({"w": torch.zeros(3)}, tmp_path / "ok.mbz")
    (tmp_path / "cut.mbz").write_bytes((tmp_path / "ok.mbz").read_bytes()[:5])
    with pytest.raises(TruncatedError, match="preamble alone"):
        mbz.open(tmp_path / "cut.mbz")
