"""RAW in the BITMAP layout (format 1.2, spec §5.2): pruned tensors that are not quantized store only the
elements whose bits are not all zero, bit for bit."""
import numpy as np
import pytest
import torch

import mbz
from mbz.api import MbzReader
from mbz.codecs.raw import ITEMSIZE
from mbz.container import write_file
from mbz.decoder import decode_record
from mbz.encoder import RAW_PLAIN_MIN, EncodedTensor, EntropyPolicy, Section, encode_tensor
from mbz.errors import FormatError, MbzError
from mbz.spec import P_COUNT, P_NEGZERO, P_SPARSE, DType, Encoding, Filter, Role, Sparsity

from conftest import bits_equal, rebuild


def pruned(shape, dtype, zeros=0.85, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 100
    x[torch.rand(shape, generator=g) < zeros] = 0
    return x.to(dtype)


def special_f32() -> torch.Tensor:
    """80% +0.0, some -0.0 and NaNs with payloads: every one of them a distinct bit pattern."""
    x = pruned((40, 50), torch.float32, 0.8, seed=1)
    bits = x.view(torch.int32).reshape(-1)
    bits[3] = -(1 << 31)          # -0.0
    bits[7] = 0x7FC01234          # quiet NaN with a payload
    bits[11] = 0x7F800001         # signalling NaN
    bits[13] = -0x00400001        # negative NaN, low payload
    return x


def layouts(path) -> dict:
    with mbz.open(path) as r:
        return {row["name"]: (row["encoding"], row["layout"]) for row in r.describe()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                   torch.int8, torch.uint8, torch.int64, torch.complex64, torch.bool])
def test_round_trip_bit_exact(tmp_mbz, dtype):
    x = pruned((64, 37), dtype)
    mbz.save({"w": x}, tmp_mbz)
    assert bits_equal(mbz.load(tmp_mbz)["w"], x)
    assert layouts(tmp_mbz)["w"] == ("RAW", "BITMAP")


def test_negative_zero_and_nan_payloads_are_stored_elements(tmp_mbz):
    x = special_f32()
    half = special_f32().to(torch.float16)
    half.view(torch.int16).reshape(-1)[5] = -(1 << 15)  # -0.0 in float16
    bf = special_f32().to(torch.bfloat16)
    mbz.save({"f32": x, "f16": half, "bf16": bf}, tmp_mbz)
    back = mbz.load(tmp_mbz)
    for k, t in (("f32", x), ("f16", half), ("bf16", bf)):
        assert bits_equal(back[k], t), k
    with mbz.open(tmp_mbz) as r:
        rec = {x.name: x for x in r.layout.records}["f32"]
        assert rec.params[P_SPARSE] == Sparsity.BITMAP
        bits = x.view(torch.int32)
        assert rec.params[P_COUNT] == int(((bits != 0) & (bits != -(1 << 31))).sum())  # NaNs stored, -0.0 not
        assert rec.params[P_NEGZERO] is True                                         # -0.0 in NEGZERO
    with mbz.open(tmp_mbz) as r:  # the reader's per-tensor path (mmap) too
        assert bits_equal(r["f32"], x)


def test_layout_choice_by_profile():
    """Default profile: a large tensor takes BITMAP only where it halves the plain bytes; dense tensors keep
    DENSE RAW; --best keeps the smallest."""
    n = RAW_PLAIN_MIN // 4 * 2
    dense = pruned((n,), torch.float32, 0.0)
    assert encode_tensor("d", dense).params == {}
    sparse = pruned((n,), torch.float32, 0.8)
    assert encode_tensor("s", sparse).params[P_SPARSE] == Sparsity.BITMAP
    some = pruned((n,), torch.float32, 0.3)  # BITMAP stores ~73% of the plain bytes: not enough by default
    assert encode_tensor("m", some).params == {}
    best = encode_tensor("m", some, ent=EntropyPolicy(profile="best"))
    assert best.params[P_SPARSE] == Sparsity.BITMAP
    assert best.stored_bytes < encode_tensor("m", some).stored_bytes


def grid_tensor(shape, zeros, bits, seed=0) -> torch.Tensor:
    """Per-channel integer codes times float32 scales, `zeros` of them pruned: an exact grid."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-(1 << (bits - 1)) + 1, 1 << (bits - 1), shape, generator=g).float()
    k[torch.rand(shape, generator=g) < zeros] = 0
    return k * (torch.rand(shape[0], generator=g) + 0.01).reshape(-1, *[1] * (len(shape) - 1))


@pytest.mark.parametrize("profile", ["default", "best"])
@pytest.mark.parametrize("shape,zeros,bits", [((64, 9), 0.5, 8), ((512, 64), 0.9, 8), ((2048, 2), 0.97, 16),
                                              ((4096, 1), 0.999, 16), ((300,), 0.6, 4), ((128, 4608), 0.5, 8)])
def test_grid_tensors_skip_raw_bitmap_without_changing_the_choice(monkeypatch, profile, shape, zeros, bits):
    """RAW BITMAP is not built for a grid at most half its stored elements' bytes; the file is no larger than with
    it built (it can be smaller: a large tensor's entropy stage tries only the three smallest plain candidates,
    and RAW BITMAP no longer takes one of those places)."""
    import mbz.encoder as enc
    t = grid_tensor(shape, zeros, bits)
    ent = EntropyPolicy(profile=profile)
    got = encode_tensor("w", t, ent=ent)
    monkeypatch.setattr(enc, "RAW_BITMAP_SKIP", 1 << 62)  # always built
    want = encode_tensor("w", t, ent=ent)
    assert got.stored_bytes <= want.stored_bytes


def test_stored_elements_follow_the_raw_section_rules(tmp_path, monkeypatch):
    """The stored elements are a RAW section: unfiltered in the default profile when zstd saves less than
    half (pruned float weights), byte-plane zstd in --best; the file is far smaller than with DENSE RAW."""
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(400_000, generator=g)
    sparse[torch.rand(400_000, generator=g) < 0.75] = 0
    out = {}
    for prof in ("default", "best"):
        p = tmp_path / f"{prof}.mbz"
        out[prof] = mbz.save({"sparse": sparse}, p, profile=prof, rans=False).file_bytes
        with mbz.open(p) as r:
            rec = r.layout.records[0]
            assert rec.params[P_SPARSE] == Sparsity.BITMAP
            filters = {s.role: s.filter for s in rec.sections}
            assert filters[Role.RAW] == (Filter.NONE if prof == "default" else Filter.SHUFFLE_ZSTD)
            assert filters[Role.MASK] != Filter.NONE
        assert bits_equal(mbz.load(p)["sparse"], sparse)
    monkeypatch.setattr("mbz.encoder.BITMAP_MIN_ZEROS", 2.0)  # DENSE RAW: plain zstd, 508,822 B
    dense = mbz.save({"sparse": sparse}, tmp_path / "dense.mbz").file_bytes
    assert out["default"] < 0.9 * dense and out["best"] < 0.8 * dense  # 442,500 and 388,540 B


def test_accounting_mask_as_indices_values_as_raw(tmp_mbz):
    x = pruned((128, 128), torch.float32, 0.9)
    mbz.save({"w": x}, tmp_mbz)
    with mbz.open(tmp_mbz) as r:
        acc = r.accounting()
        rec = r.layout.records[0]
        by_role = {s.role: s.stored for s in rec.sections}
        assert set(by_role) == {Role.MASK, Role.RAW}
        assert acc["categories"]["indices"] == by_role[Role.MASK]
        assert acc["categories"]["raw"] == by_role[Role.RAW]
        assert sum(acc["categories"].values()) == acc["file_bytes"] == tmp_mbz.stat().st_size


# ---------------------------------------------------------------- malformed files
def raw_bitmap(mask: bytes, values: bytes, numel: int, m: int, dtype=DType.F32) -> EncodedTensor:
    return EncodedTensor("w", int(dtype), (numel,), Encoding.RAW, {P_SPARSE: int(Sparsity.BITMAP), P_COUNT: m},
                         [Section(Role.MASK, Filter.NONE, len(mask), mask),
                          Section(Role.RAW, Filter.NONE, len(values), values)])


def written(tmp_path, et) -> bytes:
    p = tmp_path / "bad.mbz"
    write_file(p, [et])
    return p.read_bytes()


def decode_all(data: bytes):
    with MbzReader(data=data) as r:
        return [r[k] for k in r.keys()]


def test_hand_made_file_decodes(tmp_path):
    vals = np.array([1.5, -0.0, 3.0], "<f4").tobytes()
    (t,) = decode_all(written(tmp_path, raw_bitmap(bytes([0b10010010, 0b00]), vals, 10, 3)))
    assert bits_equal(t, torch.tensor([0, 1.5, 0, 0, -0.0, 0, 0, 3.0, 0, 0]))


def test_mask_popcount_differs_from_m(tmp_path):
    vals = np.array([1.5, 2.0], "<f4").tobytes()
    data = written(tmp_path, raw_bitmap(bytes([0b10010010, 0]), vals, 10, 2))  # 3 ones, m = 2
    with pytest.raises(FormatError, match=r"tensor 'w'.*bitmap marks 3 elements but the record stores 2"):
        decode_all(data)


def test_unused_mask_bits_must_be_zero(tmp_path):
    vals = np.array([1.5, 2.0], "<f4").tobytes()
    data = written(tmp_path, raw_bitmap(bytes([0b00000010, 0b10000000]), vals, 10, 2))  # bit 15 of 10
    with pytest.raises(FormatError, match=r"tensor 'w'.*unused bits 2..7 of the last byte"):
        decode_all(data)


def test_short_raw_section_refused(tmp_path):
    vals = np.array([1.5, 2.0, 3.0], "<f4").tobytes()
    good = written(tmp_path, raw_bitmap(bytes([0b10010010, 0]), vals, 10, 3))

    def more(h):
        h["tensors"][0]["p"]["m"] = 4
    with pytest.raises(FormatError, match=r"tensor 'w'.*\(RAW\): decoded length 12, expected 16"):
        decode_all(rebuild(good, more))
    # the decoder's own check (the writer's self-check decodes sections it was handed)
    p = {P_SPARSE: int(Sparsity.BITMAP), P_COUNT: 3}
    with pytest.raises(FormatError, match=r"BITMAP raw data of 3 stored x torch.float32 must be 12 bytes, got 8"):
        decode_record(DType.F32, (10,), Encoding.RAW, p, {Role.MASK: bytes([0b10010010, 0]), Role.RAW: vals[:8]})


def test_layout_and_sections_checked_on_open(tmp_path):
    vals = np.array([1.5, 2.0, 3.0], "<f4").tobytes()
    good = written(tmp_path, raw_bitmap(bytes([0b10010010, 0]), vals, 10, 3))

    def delta(h):
        h["tensors"][0]["p"] = {"sp": int(Sparsity.DELTA)}
    with pytest.raises(FormatError, match=r"'sp' \(sparse layout\): DELTA is not a layout of RAW"):
        decode_all(rebuild(good, delta))

    def dense(h):
        del h["tensors"][0]["p"]["sp"]
    with pytest.raises(FormatError, match=r"key 'm' applies only when 'sp' is 1"):
        decode_all(rebuild(good, dense))

    def no_count(h):
        del h["tensors"][0]["p"]["m"]
    with pytest.raises(FormatError, match=r"required key 'm' \(stored codes\) is missing"):
        decode_all(rebuild(good, no_count))

    def no_params(h):
        h["tensors"][0]["p"] = {}
    with pytest.raises(FormatError, match=r"section #1 \(RAW\): decoded length 12, expected 40"):
        decode_all(rebuild(good, no_params))
    # a MASK section in a DENSE record: the writer refuses it with the reader's message
    et = raw_bitmap(bytes([0b10010010, 0]), np.zeros(10, "<f4").tobytes(), 10, 3)
    et.params = {}
    with pytest.raises(MbzError, match=r"sections \['MASK', 'RAW'\], expected \['RAW'\]"):
        written(tmp_path, et)


def test_older_reader_rule_names_the_key(tmp_path, monkeypatch):
    """With format 1.1's rules (RAW takes no params key) the file is refused naming the key, as spec §2's
    compatibility rule says a 1.1 reader does."""
    import mbz.container as c
    vals = np.array([1.5, 2.0, 3.0], "<f4").tobytes()
    good = written(tmp_path, raw_bitmap(bytes([0b10010010, 0]), vals, 10, 3))
    monkeypatch.setitem(c.PARAM_RULES, Encoding.RAW, {})
    with pytest.raises(FormatError, match=r"params: key 'sp' does not apply to RAW"):
        decode_all(good)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128, torch.int8])
def test_scatter_in_chunks(monkeypatch, dtype):
    """Elements are placed a chunk of the mask at a time (codecs.raw.SCATTER_STEP): chunks of 8 elements here."""
    from mbz.codecs.raw import mbz_dtype, tensor_bytes
    from mbz.encoder import raw_bitmap_candidate
    monkeypatch.setattr("mbz.codecs.raw.SCATTER_STEP", 8)
    x = pruned((1001,), dtype, 0.7)
    dt = mbz_dtype(x)
    p, secs = raw_bitmap_candidate(tensor_bytes(x), ITEMSIZE[dt])
    assert bits_equal(decode_record(dt, (1001,), Encoding.RAW, p, dict(secs)), x)


def test_negative_zeros_cost_one_bit_each(tmp_path):
    """prune.remove leaves about half the pruned weights -0.0: with nz they are unstored, one NEGZERO bit each
    (spec §5.2), bit-exact, and the file is about as small as with every zero +0.0."""
    from mbz import encoder
    for dtype, ib in ((torch.float32, torch.int32), (torch.float16, torch.int16), (torch.bfloat16, torch.int16),
                      (torch.float64, torch.int64)):
        x = pruned((128, 96), dtype, 0.85, seed=3)
        neg = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) < 0.5
        x = torch.where((x == 0) & neg, torch.tensor(-0.0, dtype=dtype), x)
        plus = torch.where(x == 0, torch.zeros((), dtype=dtype), x)
        mbz.save({"w": x}, tmp_path / "n.mbz", detect=False)
        mbz.save({"w": plus}, tmp_path / "p.mbz", detect=False)
        assert bits_equal(mbz.load(tmp_path / "n.mbz")["w"], x), dtype
        with mbz.open(tmp_path / "n.mbz") as r:
            rec = r.layout.records[0]
            assert rec.params.get(P_NEGZERO) and rec.params[P_COUNT] == int((x != 0).sum())
        n, p = (tmp_path / "n.mbz").stat().st_size, (tmp_path / "p.mbz").stat().st_size
        assert n < p + int((x == 0).sum()) / 8 + 200, (dtype, n, p)  # one (random) sign bit per zero at most
        with mbz.open(tmp_path / "p.mbz") as r:                          # no -0.0: no nz
            assert not r.layout.records[0].params.get(P_NEGZERO)
        # without the NEGZERO bits the -0.0 would be stored elements
        assert encoder.raw_bitmap_candidate(np.frombuffer(x.view(ib).numpy().tobytes(), np.uint8).copy(),
                                            x.element_size())[0][P_COUNT] > int((x != 0).sum())


def raw_bitmap_nz(mask: bytes, values: bytes, negzero: bytes, numel: int, m: int, dtype=DType.F32) -> EncodedTensor:
    et = raw_bitmap(mask, values, numel, m, dtype)
    et.params[P_NEGZERO] = True
    et.sections.append(Section(Role.NEGZERO, Filter.NONE, len(negzero), negzero))
    return et


def test_hand_made_negzero_file_decodes_and_malformed_ones_are_refused(tmp_path):
    vals = np.array([1.5, 3.0], "<f4").tobytes()
    mask = bytes([0b10000010, 0b00])          # stored at 1 and 7; unstored 0, 2..6, 8, 9 (8 elements)
    (t,) = decode_all(written(tmp_path, raw_bitmap_nz(mask, vals, bytes([0b00001001]), 10, 2)))
    assert bits_equal(t, torch.tensor([-0.0, 1.5, 0, 0, -0.0, 0, 0, 3.0, 0, 0]))
    good = written(tmp_path, raw_bitmap_nz(mask, vals, bytes([0b00001001]), 10, 2))
    with pytest.raises(FormatError, match=r"bitmap of 8 elements must be 1 bytes, got 2"):
        decode_all(written(tmp_path, raw_bitmap_nz(mask, vals, bytes([1, 0]), 10, 2)))

    def dense(h):
        h["tensors"][0]["p"] = {"nz": True}
    with pytest.raises(FormatError, match=r"'nz' \(negative zeros\) of RAW needs sp = BITMAP"):
        decode_all(rebuild(good, dense))

    def no_nz(h):
        del h["tensors"][0]["p"]["nz"]
    with pytest.raises(FormatError, match=r"sections \['MASK', 'NEGZERO', 'RAW'\], expected \['MASK', 'RAW'\]"):
        decode_all(rebuild(good, no_nz))
    ints = raw_bitmap_nz(mask, np.array([1, 3], "<i4").tobytes(), bytes([1]), 10, 2, DType.I32)
    with pytest.raises(MbzError, match=r"'nz' \(negative zeros\) of RAW needs .* dtype I32"):
        written(tmp_path, ints)
