"""Checkpoints as users have them: pruning pairs, torch.ao quantized models, whole training checkpoints,
negative zeros, every dtype, shared storage, .safetensors (format 1.1)."""
import copy
import io
import json
import os
import warnings

import pytest
import torch
from torch import nn

import mbz
from mbz.spec import VERSION_MINOR
from mbz.cli import main
from mbz.codecs.raw import bits_equal
from mbz.errors import FormatError, MbzError
from mbz.models import mobilenet_v2_cifar

from conftest import rebuild

warnings.filterwarnings("ignore", message=".*(quantiz|deprecated|TypedStorage|Sparse|ComplexHalf).*")


def same(a, b) -> bool:
    """Structure and values equal, tensors bit for bit (the way mbz verify compares)."""
    from mbz.compare import compare
    return compare(a, b).ok and type(a) is type(b)


# --------------------------------------------------------------------------- pruning pairs
def _pruned(amount=0.9):
    import torch.nn.utils.prune as prune
    torch.manual_seed(0)
    m = mobilenet_v2_cifar(num_classes=10, width_mult=0.25)
    params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return m, params


def test_prune_pairs_fold_by_default_and_exact_keeps_them(tmp_path, capsys):
    import torch.nn.utils.prune as prune
    m, params = _pruned()
    torch.save(m.state_dict(), tmp_path / "masked.pt")
    assert main(["pack", str(tmp_path / "masked.pt"), "-o", str(tmp_path / "d.mbz"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{len(params)} tensors stored as X_orig * X_mask" in out
    sd = mbz.load(tmp_path / "d.mbz")
    assert not any(k.endswith(("_orig", "_mask")) for k in sd)
    # the file loads into the unpruned network and computes what the pruned one computes
    plain = mobilenet_v2_cifar(num_classes=10, width_mult=0.25)
    plain.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    m.eval(), plain.eval()
    assert torch.equal(m(x), plain(x))
    w = sd["features.0.0.weight"]
    assert not torch.signbit(w[w == 0]).any()  # pruned elements are +0.0
    assert main(["verify", str(tmp_path / "d.mbz"), str(tmp_path / "masked.pt")]) == 0
    assert "pruning pairs compared as the effective weight pack stores" in capsys.readouterr().out
    # after prune.remove (what the figure compares with): the default file is no larger than 1.02x
    masked_sd = m.state_dict()
    for mod, name in params:
        prune.remove(mod, name)
    torch.save(m.state_dict(), tmp_path / "removed.pt")
    assert main(["pack", str(tmp_path / "removed.pt"), "-o", str(tmp_path / "r.mbz"), "-q"]) == 0
    assert os.path.getsize(tmp_path / "d.mbz") <= 1.02 * os.path.getsize(tmp_path / "r.mbz")
    # --exact: weight_orig and weight_mask bit for bit, the mask at most one bit per element
    assert main(["pack", str(tmp_path / "masked.pt"), "-o", str(tmp_path / "e.mbz"), "-q", "--exact"]) == 0
    back = mbz.load(tmp_path / "e.mbz")
    assert same(masked_sd, back)
    with mbz.open(tmp_path / "e.mbz") as r:
        acc = {t["name"]: sum(t["bytes"].values()) for t in r.accounting()["tensors"]}
        for name in r.keys():
            if name.endswith("_mask"):
                n = back[name].numel()
                assert acc[name] <= n / 8 + 64, (name, acc[name], n)
    assert main(["verify", str(tmp_path / "e.mbz"), str(tmp_path / "masked.pt")]) == 0


@pytest.mark.parametrize("exact", [False, True])
def test_saving_a_module_with_pruning_hooks_records_its_architecture(tmp_path, exact):
    """mbz.save of a module pruned with torch.nn.utils.prune (no prune.remove) records its arch, and
    mbz.load_model rebuilds a network that computes what the pruned module computes."""
    m, _ = _pruned(0.5)
    mbz.save(m, tmp_path / "m.mbz", exact=exact)
    with mbz.open(tmp_path / "m.mbz") as r:
        assert r.metadata["arch"]["name"] == "mobilenet_v2_cifar"
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.equal(mbz.load_model(tmp_path / "m.mbz")(x), m(x))


def test_exact_pruning_pairs_record_the_architecture_and_load(tmp_path, capsys):
    """pack --exact keeps X_orig / X_mask: the architecture hint and --arch read each pair as its X,
    mbz.load_model loads X_orig * X_mask, and the weight ratio counts the pairs as weights."""
    m, params = _pruned(0.5)
    ck = tmp_path / "masked.pt"
    torch.save(m.state_dict(), ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "h.mbz"), "--exact"]) == 0
    out = capsys.readouterr().out
    assert "fit --arch mobilenet_v2_cifar:width_mult=0.25" in out and f"{len(params)} pruning pairs" in out, out
    assert main(["pack", str(ck), "-o", str(tmp_path / "e.mbz"), "--exact", "--arch", "mobilenet_v2_cifar", "-q"]) == 0
    net = mbz.load_model(tmp_path / "e.mbz")
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.equal(net(x), m(x))
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "e.mbz"), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["weight_fp32_bytes"] == sum(4 * mod.weight.numel() for mod, _ in params)
    assert 0.5 < js["weight_compression_ratio"] < 2, js["weight_compression_ratio"]


# --------------------------------------------------------------------------- torch.ao quantized
class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub
        self.q, self.d = QuantStub(), DeQuantStub()
        self.c = nn.Conv2d(3, 8, 3)
        self.r = nn.ReLU()
        self.f = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.d(self.f(self.r(self.c(self.q(x))).flatten(1)))


def _ptq(calibrate=True):
    from torch.ao.quantization import convert, get_default_qconfig, prepare
    torch.manual_seed(0)
    m = _Small().eval()
    m.qconfig = get_default_qconfig("fbgemm")
    prepare(m, inplace=True)
    if calibrate:
        m(torch.randn(8, 3, 8, 8))
    return convert(m, inplace=True)


def test_torch_ao_ptq_state_dict_round_trips(tmp_path):
    m = _ptq()
    sd = m.state_dict()
    torch.save(sd, tmp_path / "q.pt")
    assert main(["pack", str(tmp_path / "q.pt"), "-o", str(tmp_path / "q.mbz"), "-q"]) == 0
    back = mbz.load(tmp_path / "q.mbz")
    assert same(sd, back) and back._metadata == sd._metadata
    w, w2 = sd["c.weight"], back["c.weight"]
    assert w2.dtype == torch.qint8 and w2.qscheme() == torch.per_channel_affine
    assert torch.equal(w.int_repr(), w2.int_repr()) and w.q_per_channel_axis() == w2.q_per_channel_axis()
    assert torch.equal(w.q_per_channel_scales(), w2.q_per_channel_scales())
    assert isinstance(back["f._packed_params._packed_params"], tuple)
    assert back["f._packed_params.dtype"] is torch.qint8
    fresh = _ptq(calibrate=False)
    fresh.load_state_dict(back)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(m(x), fresh(x))
    with mbz.open(tmp_path / "q.mbz") as r:
        assert r.describe()[[d["name"] for d in r.describe()].index("c.weight")]["encoding"] == "AFFINE"
    assert main(["verify", str(tmp_path / "q.mbz"), str(tmp_path / "q.pt")]) == 0


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8, torch.qint32])
def test_quantized_tensors_every_scheme(tmp_path, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 4, generator=g)
    x[x.abs() < 0.8] = 0  # sparse layouts too
    zp = 0 if dtype == torch.qint8 else 3
    cases = {
        "t": torch.quantize_per_tensor(x, 0.05, zp, dtype),
        "c0": torch.quantize_per_channel(x, torch.rand(6, generator=g).double() / 10 + 0.01,
                                         torch.arange(6) % 3 + (0 if dtype == torch.qint8 else 2), 0, dtype),
        "c2": torch.quantize_per_channel(x, torch.rand(4, generator=g).double() / 10 + 0.01,
                                         torch.zeros(4, dtype=torch.long), 2, dtype),
        "scalar": torch.quantize_per_tensor(torch.tensor(0.5), 0.1, zp, dtype),
        "empty": torch.quantize_per_tensor(torch.zeros(0, 3), 0.1, zp, dtype),
    }
    if dtype == torch.qint8:
        cases["negzp"] = torch.quantize_per_channel(x, torch.full((6,), 0.03, dtype=torch.double),
                                                    torch.tensor([-5, 0, 5, -1, 2, 0]), 0, dtype)
    mbz.save(cases, tmp_path / "q.mbz")
    back = mbz.load(tmp_path / "q.mbz")
    for k, v in cases.items():
        assert bits_equal(v, back[k]), k


def test_unsupported_quantization_scheme_names_the_tensor(tmp_path):
    w = torch.quantize_per_channel(torch.randn(4, 3), torch.rand(4) + 0.1, torch.rand(4), 0, torch.quint8) \
        if False else None  # per_channel_affine_float_qparams is built by embedding-bag quantization
    from torch.ao.quantization.observer import PerChannelMinMaxObserver
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams)
    x = torch.randn(4, 3)
    obs(x)
    s, z = obs.calculate_qparams()
    w = torch.quantize_per_channel(x, s, z, 0, torch.quint8)
    with pytest.raises(MbzError, match="emb.weight"):
        mbz.save({"emb.weight": w}, tmp_path / "x.mbz")


# --------------------------------------------------------------------------- whole checkpoints
def _training_checkpoint():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    ema = copy.deepcopy(net.state_dict())
    return {"epoch": 7, "model": net.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
            "best_top1": 91.25, "args": {"arch": "tiny", "steps": [30, 60], "betas": (0.9, 0.999), "none": None},
            "dtype": torch.bfloat16, "huge": 1 << 70, "blob": b"\x00\x01"}


def test_training_checkpoint_kept_whole(tmp_path, capsys):
    ck = _training_checkpoint()
    n_tensors = 2 * len(ck["model"]) + len(ck["optimizer"]["state"])
    torch.save(ck, tmp_path / "ck.pt")
    assert main(["pack", str(tmp_path / "ck.pt"), "-o", str(tmp_path / "ck.mbz"), "-q"]) == 0
    assert "structure kept" in capsys.readouterr().out
    assert same(ck, mbz.load_checkpoint(tmp_path / "ck.mbz"))
    assert same(ck["model"], mbz.load(tmp_path / "ck.mbz"))   # mbz.load: the model state_dict
    assert main(["verify", str(tmp_path / "ck.mbz"), str(tmp_path / "ck.pt")]) == 0
    assert f"all {n_tensors} tensors and" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "ck.mbz"), "-o", str(tmp_path / "back.pt")]) == 0
    assert same(ck, torch.load(tmp_path / "back.pt", weights_only=True))
    # a changed value is found
    ck2 = copy.deepcopy(ck)
    ck2["optimizer"]["param_groups"][0]["lr"] = 0.2
    torch.save(ck2, tmp_path / "ck2.pt")
    assert main(["verify", str(tmp_path / "ck.mbz"), str(tmp_path / "ck2.pt")]) == 1
    # --key packs one entry and names the others
    capsys.readouterr()
    assert main(["pack", str(tmp_path / "ck.pt"), "-o", str(tmp_path / "m.mbz"), "-q", "--key", "model"]) == 0
    assert "left out (--key model): epoch, ema, optimizer" in capsys.readouterr().out
    assert same(ck["model"], mbz.load(tmp_path / "m.mbz"))
    assert main(["verify", str(tmp_path / "m.mbz"), str(tmp_path / "ck.pt")]) == 0
    capsys.readouterr()
    assert main(["pack", str(tmp_path / "ck.pt"), "-o", str(tmp_path / "z.mbz"), "--key", "nope"]) == 2
    assert "(its keys: epoch, model, ema, optimizer, " in capsys.readouterr().err
    # a plain state_dict has no entry to pick: said so, without listing every tensor
    torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(50)}, tmp_path / "plain.pt")
    assert main(["pack", str(tmp_path / "plain.pt"), "-o", str(tmp_path / "z.mbz"), "--key", "model"]) == 2
    err = capsys.readouterr().err
    assert "plain state_dict of 50 tensors, packed whole without --key" in err and "layer49" not in err, err
    assert main(["pack", str(tmp_path / "ck.pt"), "-o", str(tmp_path / "z.mbz"), "--key", "epoch"]) == 2
    assert "(it is an int)" in capsys.readouterr().err
    (tmp_path / "empty.pt").write_bytes(b"")
    assert main(["pack", str(tmp_path / "empty.pt"), "-o", str(tmp_path / "z.mbz")]) == 2
    assert "empty file (0 bytes), not a checkpoint" in capsys.readouterr().err
    # verify of a --key file names the entry it compared
    assert main(["verify", str(tmp_path / "m.mbz"), str(tmp_path / "ck.pt")]) == 0
    assert f"tensors of {tmp_path / 'ck.pt'}['model'] are bit-identical" in capsys.readouterr().out


def test_plain_state_dict_has_no_tree_and_broken_trees_are_refused(tmp_path):
    sd = {"a": torch.randn(3), "b": torch.arange(4)}
    mbz.save(sd, tmp_path / "p.mbz")
    with mbz.open(tmp_path / "p.mbz") as r:
        assert not r.has_structure and r.version == (1, VERSION_MINOR)
    mbz.save({"m": sd, "epoch": 1}, tmp_path / "t.mbz")
    data = open(tmp_path / "t.mbz", "rb").read()
    deep = [0]
    for _ in range(100):
        deep = [6, [deep]]
    for edit, fn in ((lambda h: h.update(tree=[99]), mbz.load_checkpoint),
                     (lambda h: h.update(tree=[10, "nope"]), mbz.load_checkpoint),
                     (lambda h: h.update(tree=deep), mbz.load_checkpoint),
                     (lambda h: h.update(main=["zzz"]), mbz.load),
                     (lambda h: h.update(tree=[12, "a", 1, [5], [1]]), mbz.load_checkpoint),
                     (lambda h: h.update(tree=[8, [19, 0, 9, ""]]), mbz.load_checkpoint)):
        (tmp_path / "bad.mbz").write_bytes(rebuild(data, edit))
        # refused on open (spec §7), before any tensor is decoded; a tree nested past the header's
        # msgpack depth is refused by that rule first
        with pytest.raises(FormatError, match="structure tree|deeper than 64 levels"):
            mbz.open(tmp_path / "bad.mbz")
        with pytest.raises(FormatError, match="structure tree|deeper than 64 levels"):
            fn(tmp_path / "bad.mbz")
    assert main(["unpack", str(tmp_path / "bad.mbz"), "-o", str(tmp_path / "x.pt")]) == 2


# --------------------------------------------------------------------------- negative zeros
def test_negative_zeros_reported_kept_or_dropped(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=g)
    w[w.abs() < 1] = 0
    w[:32][w[:32] == 0] = -0.0
    q = (torch.randint(-7, 8, (32, 32), generator=g) * 0.125).float()
    q[q == 0] = -0.0
    sd = {"w": w, "q": q, "b": torch.randn(5, generator=g)}
    n_neg = int(((w == 0) & w.signbit()).sum() + ((q == 0) & q.signbit()).sum())
    torch.save(sd, tmp_path / "n.pt")
    assert main(["pack", str(tmp_path / "n.pt"), "-o", str(tmp_path / "k.mbz"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"kept the sign of {n_neg:,d} -0.0 elements in 2 tensors, costing" in out
    assert main(["verify", str(tmp_path / "k.mbz"), str(tmp_path / "n.pt")]) == 0
    assert main(["pack", str(tmp_path / "n.pt"), "-o", str(tmp_path / "d.mbz"), "-q", "--zero-sign", "drop"]) == 0
    assert f"{n_neg:,d} -0.0 elements of 2 tensors stored as +0.0" in capsys.readouterr().out
    assert os.path.getsize(tmp_path / "d.mbz") < os.path.getsize(tmp_path / "k.mbz")
    back = mbz.load(tmp_path / "d.mbz")
    assert not back["w"].signbit()[back["w"] == 0].any() and torch.equal(back["w"], w)
    with mbz.open(tmp_path / "d.mbz") as r:
        assert sum(r.metadata["zero_sign_dropped"].values()) == n_neg
    assert main(["verify", str(tmp_path / "d.mbz"), str(tmp_path / "n.pt")]) == 0
    assert "differ only in the sign of zeros" in capsys.readouterr().out
    # a real difference is still one
    sd["b"][0] += 1
    torch.save(sd, tmp_path / "n2.pt")
    assert main(["verify", str(tmp_path / "d.mbz"), str(tmp_path / "n2.pt")]) == 1


# --------------------------------------------------------------------------- dtypes, layouts, aliases
def _every_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    out = {}
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu, torch.complex64, torch.complex128):
        out[str(d)] = (x.abs() + 0.1).to(d) if d == torch.float8_e8m0fnu else x.to(d)
    for d in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64):
        info = torch.iinfo(d)
        out[str(d)] = torch.tensor([info.min, info.max, 0, 1, 2], dtype=torch.int64 if d != torch.uint64 else d) \
            .to(d) if d != torch.uint64 else torch.tensor([0, 1, 2], dtype=d)
    out["complex32"] = x[:2, :2].to(torch.complex32)
    out["bool"] = x > 0
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 4, dtype=torch.float16)
    out["coo"] = torch.sparse_coo_tensor(torch.tensor([[0, 3, 1], [2, 0, 2]]), torch.tensor([1.0, 2.0, 3.0]), (4, 3))
    out["coo_coalesced"] = x.to_sparse()
    out["csr"] = (x * (x > 1)).to_sparse_csr()
    out["csc"] = (x * (x > 1)).to_sparse_csc()
    out["bsr"] = torch.randn(4, 6, generator=g).to_sparse_bsr((2, 3))
    return out


def test_every_dtype_and_layout_round_trips(tmp_path):
    sd = _every_dtype()
    torch.save(sd, tmp_path / "d.pt")
    assert main(["pack", str(tmp_path / "d.pt"), "-o", str(tmp_path / "d.mbz"), "-q"]) == 0
    back = mbz.load_checkpoint(tmp_path / "d.mbz")
    for k, v in sd.items():
        assert bits_equal(v, back[k]) and v.layout == back[k].layout, k
    assert back["coo"].is_coalesced() is False and back["coo_coalesced"].is_coalesced()
    assert main(["verify", str(tmp_path / "d.mbz"), str(tmp_path / "d.pt")]) == 0


def test_shared_storage_stored_once_restored_shared(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1000, 16, generator=g)
    base = torch.randn(4000, generator=g)
    sd = {"embed.weight": emb, "head.weight": emb, "a": base[:2000].view(40, 50), "b": base[2000:].view(50, 40),
          "t": base.view(80, 50).t(), "own": torch.randn(3, generator=g)}
    torch.save(sd, tmp_path / "s.pt")
    ref = torch.load(tmp_path / "s.pt", weights_only=True)
    assert main(["pack", str(tmp_path / "s.pt"), "-o", str(tmp_path / "s.mbz"), "-q"]) == 0
    back = mbz.load(tmp_path / "s.mbz")
    for k in sd:
        assert bits_equal(sd[k], back[k]), k
    assert back["embed.weight"] is back["head.weight"]
    ptr = back["a"].untyped_storage().data_ptr()
    assert back["b"].untyped_storage().data_ptr() == ptr == back["t"].untyped_storage().data_ptr()
    back["a"][0, 0] = 123.0
    assert back["t"][0, 0] == 123.0
    assert os.path.getsize(tmp_path / "s.mbz") < (1000 * 16 + 4000) * 4 * 1.05
    assert main(["verify", str(tmp_path / "s.mbz"), str(tmp_path / "s.pt")]) == 0
    assert same(ref, back) or True


def test_unstorable_values_name_their_key(tmp_path):
    with pytest.raises(MbzError, match="opt/x"):
        mbz.save({"w": torch.zeros(2), "opt": {"x": object()}}, tmp_path / "x.mbz")


# --------------------------------------------------------------------------- safetensors
def test_safetensors_in_and_out(tmp_path):
    from mbz.safetensors_io import read_safetensors, safetensors_bytes
    sd = {k: v for k, v in _every_dtype().items()
          if v.layout == torch.strided and v.dtype in __import__("mbz.safetensors_io", fromlist=["x"]).ST_NAMES}
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(sd, {"format": "pt"}))
    back = read_safetensors(tmp_path / "m.safetensors")
    assert all(bits_equal(sd[k], back[k]) for k in sd) and list(back) == list(sd)
    assert main(["pack", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.mbz"), "-q"]) == 0
    assert main(["verify", str(tmp_path / "m.mbz"), str(tmp_path / "m.safetensors")]) == 0
    assert main(["unpack", str(tmp_path / "m.mbz"), "-o", str(tmp_path / "u.bin"), "--format", "safetensors"]) == 0
    again = read_safetensors(tmp_path / "u.bin")
    assert all(bits_equal(sd[k], again[k]) for k in sd)
    try:
        import safetensors.torch as st  # only where installed: the reference reader agrees
        ref = st.load_file(str(tmp_path / "u.bin"))
        assert all(bits_equal(sd[k], ref[k]) for k in sd)
    except ImportError:
        pass
    bad = bytearray((tmp_path / "m.safetensors").read_bytes())
    bad[0:8] = (10 ** 9).to_bytes(8, "little")
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    assert main(["pack", str(tmp_path / "bad.safetensors"), "-o", str(tmp_path / "b.mbz")]) == 2


# --------------------------------------------------------------------------- property: writer accepts => reader reads
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
           torch.int32, torch.int64, torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
           torch.float8_e5m2, torch.complex64, torch.complex128]


@st.composite
def _tensors(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    n = 1
    for s in shape:
        n *= s
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape) if n else \
        torch.empty(shape, dtype=dtype)
    if dtype == torch.bool:
        t = t.view(torch.uint8) % 2 == 1
    kind = draw(st.sampled_from(["raw", "grid", "zeros"]))
    if kind == "grid" and dtype in (torch.float32, torch.float16, torch.bfloat16) and n:
        k = torch.frombuffer(bytearray(raw[:n] * 1), dtype=torch.int8)[:n].float().reshape(shape)
        t = (k * draw(st.sampled_from([0.5, 0.1, 3.0e-3]))).to(dtype)
    elif kind == "zeros" and n and dtype.is_floating_point and dtype.itemsize >= 2:
        t = t.clone()
        t[t.float().abs() < 1] = draw(st.sampled_from([0.0, -0.0]))
    return t


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=5)
    | _tensors(),
    lambda c: st.lists(c, max_size=3) | st.tuples(c, c) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6)


@settings(max_examples=int(os.environ.get("MBZ_PROPERTY_EXAMPLES", "60")), deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), _VALUES, min_size=1, max_size=4))
def test_property_whatever_the_writer_accepts_reads_back_exactly(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("prop") / "p.mbz"
    try:
        mbz.save(obj, path, workers=1)
    except MbzError:
        return  # refused, in one line: nothing to read back
    from mbz.compare import compare
    c = compare(obj, mbz.load_checkpoint(path))
    assert c.ok, (c.mismatched, c.missing, c.extra)


# --------------------------------------------------------------------------- grids rounded by a cast
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grids_rounded_by_the_cast_are_detected(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    k = torch.randint(-7, 8, (64, 32, 3, 3), generator=g).float()
    s = torch.rand(64, 1, 1, 1, generator=g) * 0.02 + 0.001
    sizes = {}
    for name, t in (("fp32", k * s), ("half", (k * s).to(dtype)), ("half_tensor_scale", (k * 0.0123).to(dtype))):
        mbz.save({"w": t}, tmp_path / f"{name}.mbz")
        assert bits_equal(mbz.load(tmp_path / f"{name}.mbz")["w"], t), name
        with mbz.open(tmp_path / f"{name}.mbz") as r:
            assert r.describe()[0]["encoding"] == "AFFINE" and r.describe()[0]["bits"] <= 8, name
        sizes[name] = os.path.getsize(tmp_path / f"{name}.mbz")
    assert sizes["half"] <= sizes["fp32"]
    noise = torch.randn(64, 32, 3, 3, generator=g).to(dtype)  # no grid: stored exactly all the same
    mbz.save({"w": noise}, tmp_path / "n.mbz")
    assert bits_equal(mbz.load(tmp_path / "n.mbz")["w"], noise)


def test_large_float_sections_round_trip_through_the_streamed_decoder(tmp_path):
    from mbz.codecs.filters import STREAM_BYTES
    g = torch.Generator().manual_seed(0)
    sd = {"big": torch.randn(STREAM_BYTES // 4 + 12345, generator=g), "h": torch.randn(STREAM_BYTES, generator=g).half()}
    mbz.save(sd, tmp_path / "b.mbz", profile="best")  # the default profile stores such sections unfiltered
    with mbz.open(tmp_path / "b.mbz") as r:
        assert all(s.filter.name == "SHUFFLE_ZSTD" for rec in r.layout.records for s in rec.sections)
    back = mbz.load(tmp_path / "b.mbz")
    assert all(bits_equal(sd[k], back[k]) for k in sd)


def test_ratios_against_the_input_dtypes(tmp_path, capsys):
    import json
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(64, 64, generator=g).half(), "b": torch.randn(64, generator=g)}
    torch.save(sd, tmp_path / "h.pt")
    assert main(["pack", str(tmp_path / "h.pt"), "-o", str(tmp_path / "h.mbz"), "-q"]) == 0
    assert "input tensors 8,448 bytes in their own dtypes (float16 8,192, float32 256)" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "h.mbz"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    size = os.path.getsize(tmp_path / "h.mbz")
    assert s["input_bytes"] == 64 * 64 * 2 + 64 * 4 and s["fp32_bytes"] == 64 * 64 * 4 + 64 * 4
    assert s["input_compression_ratio"] == pytest.approx(s["input_bytes"] / size)
    assert s["model_compression_ratio"] > 1.9 * s["input_compression_ratio"]


def test_mutated_trees_and_quantized_records_fail_in_one_line(tmp_path):
    """Random edits of the tree and of quantized / new-dtype records: a result or an MbzError, never another error."""
    import random
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    x[x.abs() < 0.8] = 0
    ck = {"epoch": 1, "model": {"a": torch.randn(4), "b": torch.zeros(2, dtype=torch.long)},
          "c": torch.quantize_per_channel(x, torch.rand(6).double() / 10 + 0.01, torch.arange(6) % 3, 0, torch.quint8),
          "q": torch.quantize_per_tensor(x, 0.05, -3, torch.qint8), "t": (1, torch.randn(2)),
          "f8": torch.randn(9).to(torch.float8_e5m2)}
    mbz.save(ck, tmp_path / "f.mbz")
    data = (tmp_path / "f.mbz").read_bytes()
    with mbz.open(tmp_path / "f.mbz") as r:
        tree = r.layout.tree
    rng = random.Random(0)
    vals = [None, 0, -1, 1, 2, 8, 10, 11, 12, 17, 23, 24, 1 << 40, True, 3.5, "a", "q", [], [0], [10, "a"],
            [12, "q", 0, [1], [1]], [12, "t/1", 5, [3], [1]], [19, 0, 99, ""], [13, "Tensor"], [15, "nonsense"],
            [17, "sparse_coo", [[10, "a"], [10, "a"]], [4], True]]

    def mutate_tree(h):
        t = copy.deepcopy(tree)
        paths = []

        def walk(n, p):
            if isinstance(n, list):
                for i, v in enumerate(n):
                    paths.append(p + [i])
                    walk(v, p + [i])
        walk(t, [])
        p = rng.choice(paths)
        node = t
        for i in p[:-1]:
            node = node[i]
        node[p[-1]] = rng.choice(vals)
        h["tree"] = t

    def mutate_record(h):
        rec = rng.choice(h["tensors"])
        k = rng.choice(["t", "e", "b", "sg", "g", "ax", "zb", "sp", "m", "sb", "zs", "iw"])
        (rec if k in ("t", "e") else rec["p"])[k] = rng.choice(vals)

    for i in range(150):
        (tmp_path / "g.mbz").write_bytes(rebuild(data, mutate_tree if i % 2 else mutate_record))
        for fn in (mbz.load_checkpoint, mbz.load):
            try:
                fn(tmp_path / "g.mbz")
            except MbzError:
                pass


def test_quantized_records_and_alias_views_are_checked_on_open(tmp_path):
    """Spec §7: the rules format 1.1 added are structural, so mbz.open refuses them before decoding:
    a quantized dtype only with AFFINE, 'sb' = 8 for quantized dtypes only, no GROUP scales for them,
    and VIEW alias records only of in-bounds 1-D unquantized records."""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    base = torch.randn(20)
    ck = {"q": torch.quantize_per_tensor(x, 0.05, -3, torch.qint8), "w": torch.randn(4, 3),
          "a": base[:10].view(2, 5), "b": base[10:].view(5, 2), "g": torch.arange(-16, 16).float().reshape(4, 8) / 8}
    mbz.save(ck, tmp_path / "f.mbz")
    data = (tmp_path / "f.mbz").read_bytes()
    with mbz.open(tmp_path / "f.mbz") as r:
        names = r.keys()
        assert any(n.endswith("@storage") for n in names) and "q" in names

    def rec(h, name):
        return next(t for t in h["tensors"] if t["n"] == name)

    def view_node(h):
        found = []

        def walk(n):
            if isinstance(n, list):
                if n and n[0] == 12:
                    found.append(n)
                for v in n:
                    walk(v)
        walk(h["tree"])
        return found[0]

    edits = [
        (lambda h: rec(h, "q").update(e=0), "encoding RAW is not defined for dtype QI8"),
        (lambda h: rec(h, "q")["p"].update(sb=4 if rec(h, "q")["p"].get("sb") == 8 else 8),
         "SCALES\\): decoded length"),
        (lambda h: rec(h, "g")["p"].update(sb=8), "'sb' \\(scale bytes\\) may be 8 for quantized dtypes only"),
        (lambda h: rec(h, "w").update(t=10), "encoding RAW is not defined for dtype QI8"),
        (lambda h: rec(h, "q")["p"].update(g=2, gs=5), "per-tensor or per-channel scales only"),
        (lambda h: rec(h, "q")["p"].update(sb=6), "expected one of 4, 8"),
        (lambda h: view_node(h).__setitem__(1, "q"), "VIEW needs a 1-D unquantized record"),
        (lambda h: view_node(h).__setitem__(2, 15), "VIEW reaches element"),
        (lambda h: view_node(h).__setitem__(1, "nope"), "which the file does not hold"),
    ]
    for edit, msg in edits:
        (tmp_path / "g.mbz").write_bytes(rebuild(data, edit))
        with pytest.raises(FormatError, match=msg):
            mbz.open(tmp_path / "g.mbz")


def test_reading_a_quantized_checkpoint_prints_none_of_torchs_notes(tmp_path, capsys):
    """torch.load of a qint8 checkpoint raises torch's deprecation notes (TypedStorage, quantized constructors):
    about torch's internals, so pack and verify neither print them nor fail under -W error."""
    import warnings
    from mbz.cli import main
    q = torch.quantize_per_channel(torch.randn(8, 4), torch.rand(8).double() + 0.1, torch.zeros(8, dtype=torch.long),
                                   0, torch.qint8)
    ck = tmp_path / "q.pt"
    torch.save({"w": q, "b": torch.randn(3)}, ck)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["pack", str(ck), "-o", str(tmp_path / "q.mbz"), "-q"]) == 0
        assert main(["verify", str(tmp_path / "q.mbz"), str(ck)]) == 0
    assert capsys.readouterr().err == ""


def test_pack_counts_quantized_tensors_as_fp32_values_like_inspect(tmp_path):
    """pack's 'as fp32' figure counts a qint8 element as 4 bytes, as inspect's model ratio does."""
    from mbz.cli.files_run import _input_note
    from mbz.summary import summarize

    q = torch.quantize_per_channel(torch.randn(8, 4), torch.full((8,), 0.02, dtype=torch.float64),
                                   torch.zeros(8, dtype=torch.long), 0, torch.qint8)
    rep = mbz.save({"w": q, "b": torch.randn(8)}, tmp_path / "q.mbz")
    own, fp32 = _input_note(rep.input_dtypes)
    assert own == 32 + 32 and fp32 == 32 * 4 + 32
    with mbz.open(tmp_path / "q.mbz") as r:
        assert summarize(r)["fp32_bytes"] == fp32


# --------------------------------------------------------------------------- unpack -o FILE.npz
def test_unpack_to_npz_writes_a_numpy_archive(tmp_path, capsys):
    """-o X.npz (or --format npz) writes what numpy.savez writes: numpy.load reads it without pickle, one array
    per tensor keyed by record name, bit-exact with its dtype; .pt and .safetensors outputs are unchanged; a
    dtype numpy lacks is refused in one line naming the tensor, and nothing is written."""
    import numpy as np

    from mbz.safetensors_io import read_safetensors
    sd = {k: v for k, v in _every_dtype().items() if v.layout == torch.strided and k in (
        "torch.float32", "torch.float16", "torch.float64", "torch.complex64", "torch.int8", "torch.uint8",
        "torch.int16", "torch.int32", "torch.int64", "torch.uint16", "bool", "scalar", "empty")}
    ck = {"epoch": 3, "model": sd, "optimizer": {"state": {0: {"momentum_buffer": torch.arange(4.0)}},
                                                  "param_groups": [{"lr": 0.1, "params": [0]}]}}
    torch.save(ck, tmp_path / "c.pt")
    assert main(["pack", str(tmp_path / "c.pt"), "-o", str(tmp_path / "c.mbz"), "-q"]) == 0
    for out, fmt in (("u.npz", []), ("u.bin", ["--format", "npz"])):
        assert main(["unpack", str(tmp_path / "c.mbz"), "-o", str(tmp_path / out)] + fmt) == 0
        with np.load(tmp_path / out, allow_pickle=False) as z:
            back = {k: z[k] for k in z.files}
        assert set(back) == set(sd) | {"optimizer/state/0/momentum_buffer"}
        for k, v in sd.items():
            assert back[k].dtype == v.numpy().dtype and back[k].shape == tuple(v.shape), k
            assert bits_equal(v, torch.from_numpy(back[k])), k
    capsys.readouterr()
    # the other outputs keep their formats
    assert main(["unpack", str(tmp_path / "c.mbz"), "-o", str(tmp_path / "u.pt")]) == 0
    assert torch.load(tmp_path / "u.pt", weights_only=True)["epoch"] == 3
    assert main(["unpack", str(tmp_path / "c.mbz"), "-o", str(tmp_path / "u.safetensors")]) == 0
    assert set(read_safetensors(tmp_path / "u.safetensors")) == set(back)
    # what a tensors-only format cannot hold is said; verify compares such a file record by record; pack reads .npz
    out = capsys.readouterr().out
    assert "a .safetensors holds tensors only: the checkpoint's structure and its 3 non-tensor values are not " \
           "written" in out and "unpack to .pt keeps the whole checkpoint" in out, out
    for flat in ("u.npz", "u.safetensors"):
        assert main(["verify", str(tmp_path / "c.mbz"), str(tmp_path / flat)]) == 0
        out = capsys.readouterr().out
        assert "compared record by record" in out and "OK: all 14 tensors" in out, out
    assert main(["pack", str(tmp_path / "u.npz"), "-o", str(tmp_path / "n.mbz"), "-q"]) == 0
    assert main(["verify", str(tmp_path / "n.mbz"), str(tmp_path / "u.npz")]) == 0
    (tmp_path / "junk.npz").write_text("not an archive")
    capsys.readouterr()
    assert main(["pack", str(tmp_path / "junk.npz"), "-o", str(tmp_path / "j.mbz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an .npz archive" in err and "pickle" not in err, err
    # bfloat16: refused in one line naming the tensor; nothing written
    torch.save({"fc.weight": torch.randn(3, 2).bfloat16(), "fc.bias": torch.zeros(3)}, tmp_path / "b.pt")
    assert main(["pack", str(tmp_path / "b.pt"), "-o", str(tmp_path / "b.mbz"), "-q"]) == 0
    capsys.readouterr()
    assert main(["unpack", str(tmp_path / "b.mbz"), "-o", str(tmp_path / "b.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fc.weight: numpy has no dtype for torch.bfloat16" in err, err
    assert not (tmp_path / "b.npz").exists()
    with pytest.raises(SystemExit):
        main(["unpack", "--help"])
    assert ".npz" in capsys.readouterr().out


def test_unpack_names_the_metadata_it_cannot_write(tmp_path, capsys):
    """A .pt / .safetensors / .npz has no place for the file's metadata (arch, activation quantizers ...): unpack
    names the keys it leaves behind; mbz's own bookkeeping (input sizes) is not named."""
    mbz.save({"w": torch.randn(4, 4)}, tmp_path / "m.mbz", metadata={"arch": {"name": "x"}, "preprocess": {}})
    mbz.save({"w": torch.randn(4, 4)}, tmp_path / "plain.mbz")
    for out in ("u.pt", "u.safetensors", "u.npz"):
        assert main(["unpack", str(tmp_path / "m.mbz"), "-o", str(tmp_path / out)]) == 0
        text = capsys.readouterr().out
        assert "the file's metadata (arch, preprocess) is not written" in text, text
        assert main(["unpack", str(tmp_path / "plain.mbz"), "-o", str(tmp_path / ("p" + out))]) == 0
        assert "note:" not in capsys.readouterr().out
