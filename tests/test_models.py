"""The architecture registry, load_model's checks, the user's own network, and wrapper prefixes."""
import json
import os

import pytest
import torch
import torchvision

import mbz
from mbz import api
from mbz.cli import main
from mbz.errors import MbzError
from mbz.models import build_model, mobilenet_v2_cifar, suggest_archs, shapes_of, validate_arch
from mbz.models.folding import fold_bn


def _file(tmp_path, sd, arch, name="m.mbz"):
    """A file as a hostile writer makes it: the core writes any arch without checking."""
    p = tmp_path / name
    api.save(sd, p, arch=arch, detect=False, zstd=False)
    return p


def _one_line(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def small_sd():
    torch.manual_seed(0)
    return mobilenet_v2_cifar(width_mult=0.25).state_dict()


@pytest.fixture
def built(monkeypatch):
    """The `meta` flag of every call of a registry builder."""
    from mbz.models import registry
    calls, real = [], registry._call
    monkeypatch.setattr(registry, "_call", lambda spec, kw, meta=False: calls.append(meta) or real(spec, kw, meta))
    return calls


def test_nothing_is_allocated_for_a_network_the_file_cannot_fill(tmp_path, built, monkeypatch):
    """A 179-byte file naming a 138 M-parameter network: refused on the meta device, before any real allocation."""
    p = _file(tmp_path, {"classifier.6.bias": torch.zeros(10)}, {"name": "vgg16_bn", "num_classes": 10})
    with pytest.raises(MbzError, match=r"do not fit architecture vgg16_bn: 83 missing \(features.0.weight, "):
        mbz.load_model(p)
    assert built and all(built)  # only meta skeletons were made
    from mbz.models import registry
    monkeypatch.setattr(registry, "MAX_MODEL_ELEMENTS", 1000)
    with pytest.raises(MbzError, match="elements; at most 1,000"):
        build_model({"name": "resnet18_cifar"})


@pytest.mark.parametrize("arch, words", [
    (["mobilenet_v2_cifar"], "must be a map"),
    ({"name": ["mobilenet_v2_cifar"]}, "'arch.name' must be a string"),
    ({"name": "mobilenet_v2_cifar", "width_mult": 0.25, "act_bits": 4, "act_alpha": [1.0, 2.0]}, "'arch.act_alpha'"),
    ({"name": "mobilenet_v2_cifar", "width_mult": float("inf")}, "'arch.width_mult' of mobilenet_v2_cifar must be a finite number in (0, 4]"),
    ({"name": "mobilenet_v2_cifar", "width_mult": 0.25, "num_classes": 100_000}, "'arch.num_classes'"),
    ({"name": "mobilenet_v2_cifar", "width_mult": 0.25, "num_classes": True}, "'arch.num_classes'"),
    ({"name": "mobilenet_v2_cifar", "width_mult": 0.25, "weights": "IMAGENET1K_V1"}, "'arch.weights' is not an argument"),
    ({"name": "os.system"}, "unknown architecture 'os.system'"),
])
def test_arch_metadata_is_validated_before_building(tmp_path, small_sd, arch, words, built):
    p = _file(tmp_path, small_sd, arch)
    with pytest.raises(MbzError) as e:
        mbz.load_model(p)
    assert words in str(e.value) and str(p) in str(e.value), e.value
    assert built == []  # nothing built, not even on the meta device (num_classes 100,000 once allocated 1.2 GB)
    with pytest.raises(MbzError, match="arch"):  # mbz.save checks the arch before writing
        mbz.save(small_sd, tmp_path / "refused.mbz", arch=arch)
    assert not (tmp_path / "refused.mbz").exists()


def test_tensors_that_do_not_fit_name_the_keys(tmp_path, small_sd):
    sd = dict(small_sd)
    del sd["features.1.conv.0.0.weight"], sd["classifier.1.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["features.0.0.weight"] = torch.zeros(8, 3, 5, 5)
    p = _file(tmp_path, sd, {"name": "mobilenet_v2_cifar", "width_mult": 0.25})
    for strict in (True, False):  # never an untrained network, strict or not
        with pytest.raises(MbzError) as e:
            mbz.load_model(p, strict=strict)
        msg = str(e.value)
        assert "2 missing (features.1.conv.0.0.weight, classifier.1.bias)" in msg, msg
        assert "features.0.0.weight: [8, 3, 5, 5] where the model has [8, 3, 3, 3]" in msg
        assert ("1 unexpected (extra.weight)" in msg) == strict
    # a model the caller built: the same check
    with pytest.raises(MbzError, match="do not fit the given MobileNetV2: 2 missing"):
        mbz.load_model(p, model=mobilenet_v2_cifar(width_mult=0.25))
    # more than a few keys: counts and the first three
    p2 = _file(tmp_path, small_sd, {"name": "resnet18_cifar"}, "r.mbz")
    with pytest.raises(MbzError, match=r"\d+ missing \(conv1.weight, bn1.weight, bn1.bias, \.\.\.\), \d+ unexpected"):
        mbz.load_model(p2)


def test_stock_torchvision_mobilenet_v2_is_not_tagged_cifar(tmp_path, capsys):
    """Same names and shapes as mobilenet_v2_cifar, other strides: pack records nothing and names both."""
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).eval()
    ck = tmp_path / "tv.pt"
    torch.save(tv.state_dict(), ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "tv.mbz"), "-q", "--no-detect"]) == 0
    out = capsys.readouterr().out
    assert "no architecture recorded" in out and "mobilenet_v2_cifar" in out and "mobilenet_v2:" in out, out
    with mbz.open(tmp_path / "tv.mbz") as r:
        assert "arch" not in r.metadata
    # the module itself says its strides: mbz.save records torchvision's mobilenet_v2, and it computes the same logits
    mbz.save(tv, tmp_path / "mod.mbz", detect=False)
    with mbz.open(tmp_path / "mod.mbz") as r:
        assert r.metadata["arch"] == {"name": "mobilenet_v2", "width_mult": 0.25, "num_classes": 10}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mbz.load_model(tmp_path / "mod.mbz")(x), tv(x))
    # a CIFAR-stem ResNet that keeps its max pool is none of the registry's: nothing recorded
    rn = torchvision.models.resnet18(num_classes=10)
    rn.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    assert suggest_archs(shapes_of(rn.state_dict()))[0]["name"] == "resnet18_cifar"  # the weights fit it ...
    mbz.save(rn, tmp_path / "rn.mbz", detect=False, zstd=False)
    with mbz.open(tmp_path / "rn.mbz") as r:
        assert "arch" not in r.metadata                                              # ... the module does not


def test_signature_keys_hold_in_every_suggested_architecture_and_spare_the_rest_a_build(monkeypatch):
    """Each SUGGEST architecture's state_dict holds its family's SIGNATURE_KEYS (so the shortcut never hides a
    fit); a state_dict without them is matched without building any model (no torchvision import)."""
    from mbz.models import registry
    for name in registry.SUGGEST:
        keys = registry._default_keys(name)
        assert keys and registry.signature_fits(name, keys), name
        if name in registry.ARCHITECTURES and "folded_bn" in registry.ARCHITECTURES[name].params:
            keys = registry._default_keys(name, True)
            assert keys and registry.signature_fits(name, keys, folded=True), name
    custom = {"stem.weight": (16, 3, 3, 3), "head.weight": (10, 16), "head.bias": (10,)}

    def no_build(*a, **k):
        raise AssertionError("architectures built for a state_dict no suggested family fits")
    monkeypatch.setattr(registry, "architectures", no_build)
    monkeypatch.setattr(registry, "_default_keys", no_build)
    assert suggest_archs(custom) == []


@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "resnet18_cifar", "vgg11_bn_cifar"])
def test_a_batchnorm_folded_state_dict_is_suggested_with_folded_bn(name):
    """What pack --fold-bn or folded QAT wrote, unpacked: the hint names the architecture with folded_bn=True."""
    from mbz.models import build_model
    sd = build_model({"name": name, "folded_bn": True, "num_classes": 7}).state_dict()
    assert not any("running_var" in k for k in sd)
    got = suggest_archs(shapes_of(sd))
    assert [(a["name"], a.get("folded_bn"), a["num_classes"]) for a in got] == [(name, True, 7)], got


def test_pack_makes_a_file_for_qat_prepared_and_folded_models(tmp_path, capsys):
    """Once KeyError 'features.2.conv.1.weight' in the architecture guess: now a file and a line saying why no arch."""
    import warnings

    import torch.ao.quantization as tq
    torch.manual_seed(0)
    m = mobilenet_v2_cifar(width_mult=0.25).train()
    m.qconfig = tq.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = tq.prepare_qat(m).state_dict()
    folded = fold_bn(mobilenet_v2_cifar(width_mult=0.25).eval()).state_dict()
    for name, sd in (("qat", qat), ("folded", folded)):
        ck = tmp_path / f"{name}.pt"
        torch.save(sd, ck)
        assert main(["pack", str(ck), "-o", str(tmp_path / f"{name}.mbz"), "-q", "--no-detect", "--no-zstd"]) == 0
        assert "no architecture recorded" in capsys.readouterr().out
        assert len(mbz.load(tmp_path / f"{name}.mbz")) == len(sd)
    # a folded model named with its arguments loads
    ck = tmp_path / "folded.pt"
    assert main(["pack", str(ck), "-o", str(tmp_path / "f2.mbz"), "-q", "--no-detect",
                 "--arch", "mobilenet_v2_cifar:folded_bn=true"]) == 0
    assert mbz.load_model(tmp_path / "f2.mbz") is not None


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_load(tmp_path, prefix):
    torch.manual_seed(1)
    m = build_model({"name": "resnet18_cifar"}).eval()
    ck = tmp_path / "dp.pt"
    torch.save({prefix + k: v for k, v in m.state_dict().items()}, ck)
    out = tmp_path / "dp.mbz"
    assert main(["pack", str(ck), "-o", str(out), "-q", "--no-detect", "--no-zstd", "--arch", "resnet18_cifar"]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mbz.load_model(out)(x), m(x))
        assert torch.equal(mbz.load_model(out, model=build_model({"name": "resnet18_cifar"}))(x), m(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet18_cifar", "vgg11_bn_cifar"])
def test_resnet_and_vgg_evaluate_like_pytorch(tmp_path, tiny_npz, capsys, name):
    """pack --arch, then mbz eval and mbz.load_model give the logits / top-1 of the state_dict in PyTorch."""
    from mbz.pipeline.data import evaluate, load_dataset
    torch.manual_seed(2)
    m = build_model({"name": name, "num_classes": 10})
    ds = load_dataset(f"npz:{tiny_npz}", "test")
    with torch.no_grad():  # BatchNorm statistics from a few images, so that the logits differ per image
        m.train()(torch.randn(16, 3, 32, 32))
    m.eval()
    ck = tmp_path / "m.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "m.mbz"
    assert main(["pack", str(ck), "-o", str(out), "-q", "--no-detect", "--no-zstd", "--arch", name]) == 0
    assert f"architecture recorded: {{'name': '{name}', 'num_classes': 10}}" in capsys.readouterr().out
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mbz.load_model(out)(x), m(x))
    want = evaluate(m, ds)["top1"]
    assert main(["eval", str(out), "--data", f"npz:{tiny_npz}", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == want


def test_eval_with_the_users_own_network(tmp_path, tiny_npz, capsys, monkeypatch):
    """`mbz eval FILE --model pkg.module:builder` and mbz.load_model(path, model=...) fill a network the user wrote."""
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "tiny.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)\n"
        "        self.fc = torch.nn.Linear(8, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.conv(x).relu().mean((2, 3)))\n"
        "def build():\n"
        "    return Tiny()\n"
        "def broken():\n"
        "    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mynets.tiny import Tiny
    from mbz.pipeline.data import evaluate, load_dataset
    torch.manual_seed(3)
    net = Tiny().eval()
    out = tmp_path / "own.mbz"
    mbz.save({"module." + k: v for k, v in net.state_dict().items()}, out)  # DataParallel names; no arch recorded
    with mbz.open(out) as r:
        assert "arch" not in r.metadata
    filled = mbz.load_model(out, model=Tiny())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(filled(x), net(x))
    assert main(["eval", str(out), "--model", "mynets.tiny:build", "--data", f"npz:{tiny_npz}", "--json", "-q"]) == 0
    want = evaluate(net, load_dataset(f"npz:{tiny_npz}", "test"))["top1"]
    assert json.loads(capsys.readouterr().out)["top1"] == want
    for spec, words in (("mynets.tiny", "expected package.module:builder"), ("mynets.nope:build", "cannot import"),
                        ("mynets.tiny:missing", "no callable missing"), ("mynets.tiny:broken", "returned a int")):
        err = _one_line(capsys, main(["eval", str(out), "--model", spec, "--data", f"npz:{tiny_npz}"]))
        assert words in err, err
    # without --model: a one-line error saying what to do
    err = _one_line(capsys, main(["eval", str(out), "--data", f"npz:{tiny_npz}"]))
    assert "no 'arch' metadata" in err and "--model" in err


@pytest.fixture(scope="module")
def resnet_pt(tmp_path_factory):
    torch.manual_seed(0)
    ck = tmp_path_factory.mktemp("rn") / "r.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), ck)
    return ck


@pytest.mark.parametrize("argv, words", [
    (["--arch", "resnet18_cifar"], "mis-shaped (conv1.weight: [64, 3, 7, 7] where the model has [64, 3, 3, 3])"),
    (["--arch", "resnet18:num_classes=100000"], "'arch.num_classes' of resnet18 must be an integer in [1, 10000]"),
    (["--arch", "resnet18:width_mult=2"], "'arch.width_mult' is not an argument of resnet18"),
    (["--arch", "no_such_net"], "unknown architecture 'no_such_net'"),
    (["--arch", "resnet18:num_classes"], "expected NAME[:KEY=VALUE,...]"),
    (["--arch", "{not json"], "not valid JSON"),
    (["--num-classes", "10"], "--num-classes needs --arch"),
    (["--meta", 'arch={"name": "resnet18"}'], "name the architecture with --arch"),
])
def test_pack_arch_errors_are_one_line(tmp_path, capsys, resnet_pt, argv, words):
    ck = resnet_pt
    err = _one_line(capsys, main(["pack", str(ck), "-o", str(tmp_path / "r.mbz"), "-q", *argv]))
    assert words in err, err
    assert not (tmp_path / "r.mbz").exists()


def test_registry_lists_torchvision_classifiers_with_their_arguments():
    from mbz.models import architectures
    reg = architectures()
    for name in ("resnet18", "vgg11_bn", "mobilenet_v2", "vit_b_16", "efficientnet_b0", "mobilenet_v2_cifar"):
        assert name in reg and "num_classes" in reg[name].params
    spec, kw = validate_arch({"name": "mobilenet_v2", "width_mult": 0.5, "dropout": 0.1, "num_classes": 7})
    assert spec.source == "torchvision" and kw == {"width_mult": 0.5, "dropout": 0.1, "num_classes": 7}
    assert sum(p.numel() for p in build_model({"name": "squeezenet1_1", "num_classes": 3}).parameters()) > 0


def test_meta_skeletons_skip_initialisation_of_meta_tensors_only():
    from torch import nn
    from mbz.models import registry
    before = nn.init.normal_
    cpu = torch.zeros(64)
    with registry._no_init_on_meta():
        assert nn.init.normal_ is not before
        nn.init.normal_(cpu)                   # another tensor than a skeleton's is initialised as usual
        meta = torch.empty(3, device="meta")
        assert nn.init.normal_(meta) is meta
    assert nn.init.normal_ is before and cpu.abs().sum() > 0
    for name in ("resnet50", "vgg11_bn_cifar", "mobilenet_v2_cifar"):
        arch = {"name": name}
        want = shapes_of(getattr(torchvision.models, name)().state_dict()) if name == "resnet50" else \
            shapes_of(build_model(arch).state_dict())
        assert registry.skeleton_shapes(arch) == want


def test_eval_model_imports_from_the_working_folder(tmp_path, tiny_npz, capsys, monkeypatch):
    # the `mbz` console script does not put the working folder on sys.path; --model looks there as documented
    (tmp_path / "cwdnets").mkdir()
    (tmp_path / "cwdnets" / "__init__.py").write_text("")
    (tmp_path / "cwdnets" / "lin.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    out = tmp_path / "lin.mbz"
    mbz.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).state_dict(), out)
    assert main(["eval", str(out), "--model", "cwdnets.lin:build", "--data", f"npz:{tiny_npz}", "--json"]) == 0, \
        capsys.readouterr().err


def test_verify_of_a_folded_file_says_why_names_differ(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    torch.save(mobilenet_v2_cifar(num_classes=10, width_mult=0.25).state_dict(), ck)
    out = tmp_path / "f.mbz"
    assert main(["pack", str(ck), "-o", str(out), "--arch", "mobilenet_v2_cifar", "--fold-bn", "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), str(ck)]) == 0       # its own source, folded the same way first
    assert "was folded the same way" in capsys.readouterr().out
    # an unfolded checkpoint the file's network cannot take: the names differ, and the note says why
    other = tmp_path / "other.pt"
    torch.save(mobilenet_v2_cifar(num_classes=10, width_mult=0.5).state_dict(), other)
    assert main(["verify", str(out), str(other)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("BatchNorm folded" in x for x in lines if x.startswith("NOTE"))
    assert sum(x.startswith("MISSING  features") for x in lines) == 10 and any("more (BatchNorm" in x for x in lines)


def test_save_of_a_dataparallel_module_records_its_arch(tmp_path):
    net = torchvision.models.resnet18(num_classes=10).eval()
    p = tmp_path / "dp.mbz"
    mbz.save(torch.nn.DataParallel(net), p)
    with mbz.open(p) as r:
        assert r.metadata["arch"] == {"name": "resnet18", "num_classes": 10}
    m = mbz.load_model(p)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), net(x))


def test_a_state_dict_without_num_batches_tracked_fits_and_loads(tmp_path):
    """Checkpoints of old torch (or hand-made ones) lack BatchNorm's num_batches_tracked; load_state_dict fills it
    in, so --arch takes them and load_model rebuilds the file."""
    from mbz.cli import main
    arch = {"name": "resnet18_cifar", "num_classes": 10}
    sd = {k: v for k, v in build_model(arch).state_dict().items() if not k.endswith("num_batches_tracked")}
    ck = tmp_path / "old.pt"
    torch.save(sd, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "o.mbz"), "--arch", "resnet18_cifar", "-q"]) == 0
    m = mbz.load_model(tmp_path / "o.mbz")
    assert int(m.bn1.num_batches_tracked) == 0
    sd.pop("fc.bias")                                     # other missing tensors are still refused
    torch.save(sd, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "p.mbz"), "--arch", "resnet18_cifar", "-q"]) == 2
