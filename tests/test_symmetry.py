"""Writer / reader symmetry (format_spec.md §7): what mbz.save accepts, mbz.open reads back bit for bit;
what the reader would refuse, the writer refuses first, with the reader's message."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mbz
from mbz.errors import EncodeError, MbzError

from conftest import bits_equal

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=4)))
    n = math.prod(shape)
    kind = draw(st.sampled_from(["grid", "few", "random", "special"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, shape, generator=g, dtype=torch.int64).to(dtype)
    if kind == "grid":
        t = torch.randint(-7, 8, shape, generator=g).float() * draw(st.sampled_from([0.5, 0.125, 3.0, 1e-3]))
        t[torch.rand(shape, generator=g) < draw(st.floats(0, 1))] = 0
    elif kind == "few":
        vals = torch.tensor([0.0, 0.1, 1 / 3, -2.5])
        t = vals[torch.randint(0, 4, shape, generator=g)] if n else torch.zeros(shape)
    elif kind == "random":
        t = torch.randn(shape, generator=g)
    else:
        pool = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, 3.4e38, -1.0])
        t = pool[torch.randint(0, len(pool), shape, generator=g)] if n else torch.zeros(shape)
    return t.to(dtype)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sd=st.dictionaries(names, tensors(), min_size=1, max_size=4),
       zstd=st.booleans(), align=st.sampled_from([1, 2, 64, 4096]),
       wbits=st.sampled_from([None, None, 2, 4, 8]),
       gran=st.sampled_from(["tensor", "channel", "group"]),
       meta=st.dictionaries(st.text(max_size=5), st.recursive(
           st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=5) | st.binary(max_size=5),
           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8),
           max_size=3))
def test_what_save_accepts_open_reads_back(tmp_path, sd, zstd, align, wbits, gran, meta):
    p = tmp_path / "h.mbz"
    if p.exists():
        p.unlink()
    try:
        rep = mbz.save(sd, p, zstd=zstd, align=align, wbits=wbits, granularity=gran, group_size=4,
                       include=".*", metadata=meta)
    except EncodeError:
        assert not p.exists()
        return
    with mbz.open(p) as r:
        assert r.keys() == list(sd)
        acc = r.accounting()
        assert acc["file_bytes"] == rep.file_bytes == sum(acc["categories"].values())
        for name, t in sd.items():
            if wbits is None or not t.is_floating_point() or t.dim() < 1:
                assert bits_equal(r[name], t), name
            else:
                assert r[name].shape == t.shape and r[name].dtype == t.dtype


@pytest.mark.parametrize("sd, kw, message", [
    ({"": torch.ones(2)}, {}, "tensor #0: name must be a non-empty string, got ''"),
    ({"x": torch.ones(2)}, {"metadata": {1: "int key"}}, "header map key at byte"),
    ({"x": torch.ones(2)}, {"align": 3}, "header 'align' must be a power of two"),
])
def test_writer_refuses_first_with_the_readers_message(tmp_path, sd, kw, message):
    with pytest.raises(EncodeError) as e:
        mbz.save(sd, tmp_path / "r.mbz", **kw)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "r.mbz").exists()


def test_writer_message_matches_reader_message(tmp_path):
    """The same fault (an int metadata key) read from a hand-built file gives the writer's exact message."""
    from fuzz_format import emit, parse_model
    mbz.save({"x": torch.ones(2)}, tmp_path / "ok.mbz", zstd=False)
    m = parse_model((tmp_path / "ok.mbz").read_bytes())
    m["header"]["meta"] = {1: "int key"}
    with pytest.raises(MbzError) as r:
        mbz.MbzReader(data=emit(m))
    with pytest.raises(EncodeError) as w:
        mbz.save({"x": torch.ones(2)}, tmp_path / "w.mbz", metadata={1: "int key"}, zstd=False)
    assert str(w.value) == str(r.value)
