"""Hostile files: each a small file made by mbz.save, then edited with its lengths and CRCs recomputed.

Every input here once gave a Python exception, an unjustified allocation, a silently
different tensor or a valid file refused; each now gives what format_spec.md says.
"""
import contextlib
import io
import json
import struct
import zlib

import msgpack
import numpy as np
import pytest
import torch
import zstandard

import mbz
from mbz.api import MbzReader
from mbz.cli import main as cli_main
from mbz.errors import EncodeError, FormatError, LimitError, MbzError
from mbz.spec import MAGIC, PREAMBLE

from conftest import bits_equal
from fuzz_format import emit, fake_frame, parse_model, zstd_c


def read_all(data: bytes) -> dict:
    with MbzReader(data=data) as r:
        return dict(r.items())


def opened(data: bytes) -> MbzReader:
    return MbzReader(data=data)


def saved(tmp_path, sd, **kw) -> bytes:
    p = tmp_path / "s.mbz"
    kw.setdefault("rans", False)  # these files are edited as zstd / unfiltered sections (RANS: tests/test_rans.py)
    mbz.save(sd, p, **kw)
    return p.read_bytes()


def rec_of(m, name):
    for i, r in enumerate(m["header"]["tensors"]):
        if r["n"] == name:
            return i, r
    raise KeyError(name)


def sparse_grid(n=2000, keep=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(1, 4, (n,), generator=g).float()
    q[torch.rand(n, generator=g) > keep] = 0
    return q * 0.25


def no_empty_colon(msg: str) -> None:
    assert msg.strip() and not msg.rstrip().endswith(":"), repr(msg)


# --------------------------------------------------------------------------- allocation bounds
def test_delta_fillers_claiming_billions_of_elements(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid()}, zstd=True)
    m = parse_model(data)
    i, r = rec_of(m, "w")
    assert r["p"]["sp"] == 2
    entries = 4000
    r["p"]["iw"], r["p"]["m"] = 16, entries
    r["s"] = [(entries + 1) << 16]           # 262 million elements: within the DELTA rule (m + 1) x 2^iw
    for s in m["secs"][i]:
        if s["role"] == 3:
            s["decoded"], s["filter"] = b"\xff\xff" * entries, 1
        if s["role"] == 1:
            s["decoded"], s["filter"] = bytes((entries * r["p"]["b"] + 7) // 8), 1
    bad = emit(m)
    assert len(bad) < 1000
    with pytest.raises(LimitError, match="may hold at most"):
        opened(bad)


def test_bitmap_of_64m_elements_from_a_small_file(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid(keep=0.5)}, zstd=True)
    m = parse_model(data)
    i, r = rec_of(m, "w")
    n = 64_000_000
    mask = bytearray(n // 8)
    mask[::1000] = np.random.default_rng(0).integers(1, 256, len(mask[::1000]), dtype=np.uint8).tobytes()
    r["s"], r["p"] = [n], {"g": 0, "b": 1, "sp": 1, "m": 0}
    m["secs"][i] = [{"role": 1, "filter": 0, "decoded": b""}, {"role": 2, "filter": 1, "decoded": bytes(mask)},
                    {"role": 5, "filter": 0, "decoded": struct.pack("<f", 1.0)}]
    bad = emit(m)
    assert len(bad) < 64_000
    with pytest.raises(LimitError, match="may hold at most"):
        opened(bad)


@pytest.mark.parametrize("codec", [0, 1])
def test_header_of_many_empty_maps(tmp_path, codec):
    data = saved(tmp_path, {"b": torch.arange(3)}, zstd=True)
    m = parse_model(data)
    m["codec"] = codec
    m["header"]["meta"]["maps"] = [{}] * (600_000 if codec == 0 else 8_000_000)
    bad = emit(m)
    with pytest.raises(LimitError, match="objects for this file size" if codec == 0 else "window|more than"):
        opened(bad)


@pytest.mark.parametrize("claim", [2**28, 2**40])
def test_zstd_content_size_never_trusted(tmp_path, claim):
    """A frame whose own content-size field claims more than the header's decoded_length: refused, unallocated."""
    data = saved(tmp_path, {"b": torch.arange(4, dtype=torch.int32)}, zstd=False)
    m = parse_model(data)
    s = m["secs"][0][0]
    s["filter"], s["stored"] = 1, fake_frame(s["decoded"], claim)
    bad = emit(m)
    assert len(bad) < 300
    with pytest.raises(FormatError) as e:
        read_all(bad)
    assert "content bytes" in str(e.value) and "tensor 'b' section #0 (RAW, ZSTD) at offset" in str(e.value)
    no_empty_colon(str(e.value))


def test_zstd_window_limit(tmp_path):
    data = saved(tmp_path, {"b": torch.arange(4, dtype=torch.int32)}, zstd=False)
    m = parse_model(data)
    s = m["secs"][0][0]
    s["filter"], s["stored"] = 1, fake_frame(s["decoded"], None, window_log=30)
    with pytest.raises(LimitError, match="window of 1073741824 bytes"):
        read_all(emit(m))


def test_zero_dimension_beside_huge_ones(tmp_path):
    data = saved(tmp_path, {"e": torch.zeros(0, 3)}, zstd=False)
    m = parse_model(data)
    m["header"]["tensors"][0]["s"] = [0, 2**40, 2**40]
    with pytest.raises(LimitError, match="product of nonzero sizes"):
        opened(emit(m))


# --------------------------------------------------------------------------- malformed records and metadata
def test_extra_section_on_a_record(tmp_path):
    data = saved(tmp_path, {"b": torch.arange(3)}, zstd=False)
    m = parse_model(data)
    m["secs"][0].append({"role": 1, "filter": 0, "decoded": b"\x01"})
    with pytest.raises(FormatError, match="role CODES is not a section of RAW"):
        mbz_load(emit(m), tmp_path)


def mbz_load(data, tmp_path):
    p = tmp_path / "x.mbz"
    p.write_bytes(data)
    return mbz.load(p)


def test_bytes_key_in_metadata_refused_at_open_and_by_writer(tmp_path):
    data = saved(tmp_path, {"b": torch.ones(3)})
    m = parse_model(data)
    m["header"]["meta"][b"k"] = 1
    with pytest.raises(FormatError, match="map key at byte .* is not a string"):
        opened(emit(m))
    with pytest.raises(EncodeError, match="map key at byte .* is not a string"):
        mbz.save({"b": torch.ones(3)}, tmp_path / "w.mbz", metadata={b"k": 1})
    assert not (tmp_path / "w.mbz").exists()


@pytest.mark.parametrize("depth", [70, 1000])
def test_deeply_nested_metadata(tmp_path, depth):
    data = saved(tmp_path, {"b": torch.ones(3)})
    m = parse_model(data)
    v = 1
    for _ in range(depth):
        v = [v]
    m["header"]["meta"]["deep"] = v
    with pytest.raises(FormatError, match="deeper than 64 levels"):
        opened(emit(m))
    v = 1
    for _ in range(60):
        v = {"a": v}
    m["header"]["meta"]["deep"] = v
    p = tmp_path / "ok.mbz"
    p.write_bytes(emit(m))
    rc, out, err = run_cli(["inspect", "--json", str(p)])
    assert rc == 0 and json.loads(out)["metadata"]["deep"]["a"]["a"], err


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("arch", [[1, 2], "mobilenet_v2", 7, {"name": [1]}])
def test_inspect_with_odd_arch(tmp_path, arch):
    p = tmp_path / "a.mbz"
    mbz.save({"b": torch.ones(3)}, p, metadata={"arch": arch, "blob": b"\x00\xff", "nan": float("nan")})
    for argv in (["inspect", str(p)], ["inspect", "--json", str(p)]):
        rc, out, err = run_cli(argv)
        assert rc == 0 and err == "", err


def test_affine_with_integer_dtype_refused_at_open(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid()}, zstd=False)
    m = parse_model(data)
    m["header"]["tensors"][0]["t"] = 7  # int32
    with pytest.raises(FormatError, match="encoding AFFINE is not defined for dtype I32"):
        opened(emit(m))


def test_codebook_of_bool_refused_at_open(tmp_path):
    vals = torch.tensor([0.1, 1 / 3, 3.14159])
    data = saved(tmp_path, {"c": vals[torch.arange(40) % 3]}, zstd=False)
    m = parse_model(data)
    r = m["header"]["tensors"][0]
    assert r["e"] == 2
    r["t"] = 9
    m["secs"][0] = [s if s["role"] != 7 else {"role": 7, "filter": 0, "decoded": bytes(r["p"]["k"])}
                    for s in m["secs"][0]]
    with pytest.raises(FormatError, match="encoding CODEBOOK is not defined for dtype BOOL"):
        opened(emit(m))


def test_channel_without_axis_refused(tmp_path):
    w = torch.tensor([[1.0, 20.0], [3.0, 40.0]])
    data = saved(tmp_path, {"w": w}, wbits=8, granularity="channel", include=".*", zstd=False)
    m = parse_model(data)
    r = m["header"]["tensors"][0]
    assert r["p"]["g"] == 1 and r["p"]["ax"] == 0
    del r["p"]["ax"]
    with pytest.raises(FormatError, match=r"required key 'ax' \(axis\) is missing"):
        opened(emit(m))


def test_params_key_that_does_not_apply_refused(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid()}, zstd=False)
    m = parse_model(data)
    m["header"]["tensors"][0]["p"]["k"] = 3
    with pytest.raises(FormatError, match="key 'k' does not apply to AFFINE"):
        opened(emit(m))
    m = parse_model(data)
    m["header"]["tensors"][0]["p"]["future_key"] = [1, 2]   # unknown: a later minor version's, ignored
    assert bits_equal(read_all(emit(m))["w"], sparse_grid())


# --------------------------------------------------------------------------- what the spec says a file decodes to
def test_nan_scale_refused(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid()}, zstd=False)
    m = parse_model(data)
    for s in m["secs"][0]:
        if s["role"] == 5:
            s["decoded"] = struct.pack("<f", float("nan"))
    with pytest.raises(FormatError, match=r"tensor 'w': SCALES entry 0 \(of 1\) is NaN"):
        read_all(emit(m))


@pytest.mark.parametrize("scale", [-0.5, float("inf"), float("-inf"), -0.0])
def test_sparse_affine_unstored_positions_are_positive_zero(tmp_path, scale):
    w = sparse_grid()
    data = saved(tmp_path, {"w": w}, zstd=False)
    m = parse_model(data)
    i, r = rec_of(m, "w")
    assert r["p"]["sp"] in (1, 2)
    for s in m["secs"][i]:
        if s["role"] == 5:
            s["decoded"] = struct.pack("<f", scale)
    got = read_all(emit(m))["w"]
    unstored = w == 0
    assert torch.equal(got[unstored].view(torch.int32), torch.zeros(int(unstored.sum()), dtype=torch.int32))
    k = w[~unstored] / 0.25
    assert bits_equal(got[~unstored], (k * torch.tensor(scale)).float())


def test_sparse_with_infinite_scale_and_negative_zero_is_valid(tmp_path):
    w = sparse_grid()
    w[w == 0] = -0.0
    w[:5] = 0.0
    data = saved(tmp_path, {"w": w}, zstd=False)
    m = parse_model(data)
    i, r = rec_of(m, "w")
    assert r["p"].get("nz") and r["p"]["sp"] in (1, 2)
    for s in m["secs"][i]:
        if s["role"] == 5:
            s["decoded"] = struct.pack("<f", float("inf"))
    got = read_all(emit(m))["w"]
    zero = w == 0
    assert bits_equal(got[zero], w[zero])   # +0.0 and -0.0 where they were
    assert torch.isinf(got[~zero]).all()


@pytest.mark.parametrize("size", [1000, 40_000, 200_000])  # one decompress call below 64 KiB, a stream above
@pytest.mark.parametrize("change", [4, -4])
def test_zstd_frame_of_another_length_refused(tmp_path, size, change):
    """A frame that decodes to more or fewer bytes than the section's decoded_length: FormatError naming both."""
    data = saved(tmp_path, {"b": torch.arange(size // 4, dtype=torch.int32)}, zstd=True)
    m = parse_model(data)
    s = m["secs"][0][0]
    body = bytes(s["decoded"]) + b"\x01" * change if change > 0 else bytes(s["decoded"])[:change]
    s["filter"], s["stored"] = 1, zstd_c(body)
    what = f"more than {size}" if change > 0 else f"{size + change} bytes, header says {size}"
    with pytest.raises(FormatError, match=rf"tensor 'b' section #0 \(RAW, ZSTD\) at offset \d+: zstd frame decodes to "
                                          rf"{what}"):
        read_all(emit(m))


@pytest.mark.parametrize("where", ["section", "header"])
def test_bytes_after_a_zstd_frame_refused(tmp_path, where):
    data = saved(tmp_path, {"b": torch.arange(100, dtype=torch.int32)}, zstd=True)
    m = parse_model(data)
    if where == "section":
        s = m["secs"][0][0]
        s["filter"], s["stored"] = 1, zstd_c(s["decoded"]) + b"\x00"
        with pytest.raises(FormatError, match=r"tensor 'b' section #0 \(RAW, ZSTD\) at offset \d+: 1 bytes follow"):
            read_all(emit(m))
    else:
        m["codec"] = 1
        m["block_post"] = [lambda b: b + zstd_c(b"x")]
        with pytest.raises(FormatError, match=r"header block \(offset 24\): \d+ bytes follow the zstd frame"):
            read_all(emit(m))


def test_nonzero_unused_bits_refused(tmp_path):
    data = saved(tmp_path, {"w": sparse_grid()}, zstd=False)
    m = parse_model(data)
    i, r = rec_of(m, "w")
    codes = next(s for s in m["secs"][i] if s["role"] == 1)
    assert (r["p"]["m"] * r["p"]["b"]) % 8, "the test needs a partial last byte"
    codes["decoded"] = codes["decoded"][:-1] + bytes([codes["decoded"][-1] | 0x80])
    with pytest.raises(FormatError, match="unused bits .* must be zero"):
        read_all(emit(m))


def test_empty_section_under_zstd_is_valid(tmp_path):
    data = saved(tmp_path, {"e": torch.zeros(0, 3), "b": torch.ones(2)}, zstd=False)
    m = parse_model(data)
    m["secs"][0][0]["filter"] = 1
    got = read_all(emit(m))
    assert got["e"].shape == (0, 3)


def test_header_not_msgpack_message_is_complete():
    block = b"\x81\xa1a\xa2\xff\xfe"   # {"a": <invalid UTF-8>}
    data = PREAMBLE.pack(MAGIC, 1, 1, 0, b"\0\0\0", len(block), zlib.crc32(block)) + block
    with pytest.raises(FormatError) as e:
        read_all(data)
    assert "header is not valid msgpack" in str(e.value)
    no_empty_colon(str(e.value))


def test_zstd_errors_name_tensor_and_section(tmp_path):
    data = saved(tmp_path, {"b": torch.arange(100, dtype=torch.int32)}, zstd=True)
    m = parse_model(data)
    s = m["secs"][0][0]
    s["filter"], s["stored"] = 1, zstd_c(s["decoded"])[:-1]
    with pytest.raises(MbzError) as e:
        read_all(emit(m))
    assert str(e.value).startswith("tensor 'b' section #0 (RAW, ZSTD) at offset ")
    no_empty_colon(str(e.value))


# --------------------------------------------------------------------------- accounting
def _noncanonical_packb(obj) -> bytes:
    """Valid msgpack with every int as int64 and every str as str32: longer than the shortest encoding."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (float, bytes)):
        return msgpack.packb(obj, use_bin_type=True)
    if isinstance(obj, int):
        return b"\xd3" + obj.to_bytes(8, "big", signed=True)
    if isinstance(obj, str):
        b = obj.encode()
        return b"\xdb" + len(b).to_bytes(4, "big") + b
    if isinstance(obj, list):
        return b"\xdd" + len(obj).to_bytes(4, "big") + b"".join(_noncanonical_packb(x) for x in obj)
    return b"\xdf" + len(obj).to_bytes(4, "big") + b"".join(
        _noncanonical_packb(k) + _noncanonical_packb(v) for k, v in obj.items())


@pytest.mark.parametrize("codec", [0, 1])
def test_accounting_measures_stored_record_bytes(tmp_path, codec):
    sd = {"a": torch.ones(3), "bb": torch.arange(5), "w": sparse_grid()}
    data = saved(tmp_path, sd, zstd=False)
    m = parse_model(data)
    m["codec"] = codec
    m["raw_post"].append(lambda raw: _noncanonical_packb(msgpack.unpackb(raw, raw=False)))
    bad = emit(m)
    with opened(bad) as r:
        acc = r.accounting()
        raw = r.layout.header_raw
        hlen = r.layout.header_stored
    assert sum(acc["categories"].values()) == len(bad)
    assert all(v >= 0 for v in acc["categories"].values())
    shares = [t["bytes"]["tensor_records"] for t in acc["tensors"]]
    assert sum(shares) + acc["categories"]["file_header"] - 20 == hlen
    if codec == 0:   # each record's share is its stored span: an int64 / str32 record is long
        u = msgpack.Unpacker(raw=False)
        u.feed(raw)
        spans = []
        for _ in range(u.read_map_header()):
            if u.unpack() == "tensors":
                for _ in range(u.read_array_header()):
                    a = u.tell()
                    u.skip()
                    spans.append(u.tell() - a)
            else:
                u.skip()
        assert shares == spans


# --------------------------------------------------------------------------- writer / reader symmetry
def test_writer_refuses_what_the_reader_refuses(tmp_path):
    with pytest.raises(EncodeError) as w:
        mbz.save({"": torch.ones(2)}, tmp_path / "e.mbz")
    data = saved(tmp_path, {"x": torch.ones(2)})
    m = parse_model(data)
    m["header"]["tensors"][0]["n"] = ""
    with pytest.raises(FormatError) as r:
        opened(emit(m))
    assert str(w.value) == str(r.value) == "tensor #0: name must be a non-empty string, got ''"
    assert not (tmp_path / "e.mbz").exists()


def test_writer_refuses_element_budget_with_the_readers_message(tmp_path):
    with pytest.raises(EncodeError, match=r"may hold at most \d+ \(64 x size \+ 4194304\)"):
        z = torch.zeros(2**24)
        z[::3001] = 1.0     # 99.97% zeros: a few kB of delta-coded positions for 16.7 million elements
        mbz.save({"z": z}, tmp_path / "z.mbz")


def test_old_golden_file_still_decodes_and_accounts():
    import os
    p = os.path.join(os.path.dirname(__file__), "data", "golden_v1.mbz")
    with mbz.open(p) as r:
        acc = r.accounting()
        assert r.version == (1, 0)
    assert sum(acc["categories"].values()) == os.path.getsize(p)
    assert all(v >= 0 for v in acc["categories"].values())
