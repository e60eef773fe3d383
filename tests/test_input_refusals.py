"""Bad input to the public API and the CLI is refused with one MbzError line naming what was wrong: paths
that name no readable file, tensors on the 'meta' device, malformed --arch specs, an .npz file of the
other split."""
from __future__ import annotations

import errno
import json

import pytest
import torch
from torch import nn

import mbz
from mbz.cli import main
from mbz.errors import DataError, MbzError, PathError
from mbz.models.registry import parse_arch

READERS = ("load", "open", "load_checkpoint", "load_model")


@pytest.fixture
def packed(tmp_path):
    p = tmp_path / "ok.mbz"
    mbz.save({"fc.weight": torch.randn(4, 3)}, p)
    return p


def _one_line(e: Exception, *names) -> str:
    text = str(e)
    assert "\n" not in text and all(str(n) in text for n in names), text
    return text


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("fn", READERS)
def test_readers_refuse_a_missing_path_as_an_mbz_error_and_a_file_not_found_error(fn, tmp_path):
    p = tmp_path / "none" / "x.mbz"
    with pytest.raises(MbzError) as e:
        getattr(mbz, fn)(p)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, mbz.PathNotFoundError)
    assert _one_line(e.value, p) == f"{p}: no such file (.mbz file)"
    with pytest.raises(FileNotFoundError, match="'': no such file"):   # `except FileNotFoundError` keeps working
        getattr(mbz, fn)("")


@pytest.mark.parametrize("fn", READERS)
def test_readers_refuse_a_folder_as_an_mbz_error_and_an_is_a_directory_error(fn, tmp_path):
    with pytest.raises(mbz.PathIsDirectoryError) as e:
        getattr(mbz, fn)(tmp_path)
    assert isinstance(e.value, IsADirectoryError) and e.value.errno == errno.EISDIR
    assert _one_line(e.value, tmp_path).endswith("is a directory, expected a file (.mbz file)")


def test_an_unreadable_file_is_a_permission_error_naming_it(packed, monkeypatch, capsys):
    def refuse(path, mode="r", *a, **k):   # what open() says of a file without read permission (tests run as root)
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr("mbz.paths.open", refuse, raising=False)
    for fn in READERS:
        with pytest.raises(mbz.PathPermissionError) as e:
            getattr(mbz, fn)(packed)
        assert isinstance(e.value, PermissionError)
        assert _one_line(e.value, packed) == f"{packed}: not readable (.mbz file)"
    from mbz.checkpoint import read_checkpoint
    with pytest.raises(PermissionError, match="not readable \\(checkpoint\\)"):
        read_checkpoint(packed)
    assert main(["inspect", str(packed)]) == 2
    assert capsys.readouterr().err.strip() == f"mbz inspect: error: {packed}: not readable (.mbz file)"


def test_a_path_that_is_not_a_path_is_a_type_error(packed):
    with open(packed, "rb") as f, pytest.raises(TypeError, match="expected a path"):
        mbz.load(f.fileno())   # an int would otherwise open that file descriptor


def test_save_refuses_a_folder_or_a_missing_folder_as_mbz_errors(tmp_path):
    sd = {"w": torch.ones(3)}
    with pytest.raises(mbz.PathIsDirectoryError) as e:
        mbz.save(sd, tmp_path)
    assert isinstance(e.value, IsADirectoryError)
    _one_line(e.value, tmp_path, "give a file name")
    with pytest.raises(mbz.PathNotFoundError) as e:
        mbz.save(sd, tmp_path / "no" / "x.mbz")
    assert isinstance(e.value, FileNotFoundError)
    _one_line(e.value, tmp_path / "no" / "x.mbz", "output folder")
    assert isinstance(e.value, PathError) and isinstance(e.value, OSError)


# --------------------------------------------------------------------------- meta tensors
def test_save_refuses_meta_tensors_naming_the_key(tmp_path):
    with pytest.raises(mbz.CheckpointError) as e:
        mbz.save({"ok": torch.ones(2), "fc.weight": torch.empty(3, 4, device="meta")}, tmp_path / "m.mbz")
    assert _one_line(e.value).startswith("fc.weight: tensor [3, 4] float32 is on the 'meta' device")
    with pytest.raises(mbz.CheckpointError, match="^weight: .*'meta' device"):
        mbz.save(nn.Linear(4, 3, device="meta"), tmp_path / "m.mbz")
    ck = {"model": {"w": torch.empty(2, device="meta")}, "epoch": 3}
    with pytest.raises(mbz.CheckpointError, match="^model/w: .*'meta' device"):
        mbz.save(ck, tmp_path / "m.mbz")
    with pytest.raises(mbz.CheckpointError, match="^weight: .*.meta. device"):   # before the architecture check
        mbz.save(nn.Linear(4, 3, device="meta"), tmp_path / "m.mbz", arch={"name": "resnet18_cifar"})
    assert not (tmp_path / "m.mbz").exists()
    # only the entry packed is checked
    mbz.save({"model": {"w": torch.ones(2)}, "opt": {"m": torch.empty(2, device="meta")}}, tmp_path / "k.mbz",
             key="model")
    assert torch.equal(mbz.load(tmp_path / "k.mbz")["w"], torch.ones(2))


def test_load_model_refuses_a_module_on_the_meta_device(tmp_path):
    p = tmp_path / "lin.mbz"
    mbz.save(nn.Linear(3, 2).state_dict(), p)
    with pytest.raises(MbzError) as e:   # load_state_dict into it would do nothing and return it empty
        mbz.load_model(p, model=nn.Linear(3, 2, device="meta"))
    assert _one_line(e.value, p).endswith("the given Linear's weight: tensor [2, 3] float32 is on the 'meta' device "
                                          "and holds no values; expected real tensors (materialize the model first, "
                                          "e.g. to_empty(device='cpu') and load_state_dict)")
    m = mbz.load_model(p, model=nn.Linear(3, 2, device="meta").to_empty(device="cpu"))
    assert torch.equal(m.weight, mbz.load(p)["weight"])


def test_cli_refuses_a_checkpoint_of_meta_tensors_in_one_line(tmp_path, packed, capsys):
    ck = tmp_path / "meta.pt"
    torch.save({"fc.weight": torch.empty(4, 3, device="meta")}, ck)
    for argv in (["pack", str(ck), "-o", str(tmp_path / "x.mbz")], ["verify", str(packed), str(ck)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{ck}: fc.weight: tensor [4, 3] float32 is on the 'meta' device" in err, err
    from mbz.checkpoint import read_checkpoint
    with pytest.raises(mbz.CheckpointError, match="'meta' device"):
        read_checkpoint(ck)
    assert not (tmp_path / "x.mbz").exists()


# --------------------------------------------------------------------------- --arch
@pytest.mark.parametrize("spec, says", [
    ("", "no architecture NAME"),
    ("  ", "no architecture NAME"),
    (":num_classes=10", "no architecture NAME before the colon"),
    ("resnet18_cifar:num_classes=", "'num_classes' has an empty value"),
    ("resnet18_cifar:=10", "'=10' is not KEY=VALUE"),
    ("resnet18_cifar:num_classes", "'num_classes' is not KEY=VALUE"),
    ("resnet18_cifar:num_classes=10,num_classes=100", "'num_classes' is given twice"),
    ("resnet18_cifar:num_classes=10,,width=2", "an empty item between commas"),
    ("resnet18_cifar:,num_classes=10", "an empty item between commas"),
    ("resnet18_cifar:name=vgg11_bn", "named before the colon"),
])
def test_malformed_arch_specs_are_refused_naming_what_is_wrong(spec, says):
    with pytest.raises(MbzError) as e:
        parse_arch(spec)
    assert _one_line(e.value).startswith(f"--arch {spec.strip()!r}: ") and says in str(e.value)


def test_a_trailing_colon_or_comma_is_accepted_and_spaces_around_the_name_are_not_part_of_it():
    assert parse_arch("resnet18_cifar:") == {"name": "resnet18_cifar"}
    assert parse_arch(" resnet18_cifar : num_classes = 10 ,") == {"name": "resnet18_cifar", "num_classes": 10}
    assert parse_arch("mobilenet_v2_cifar:folded_bn=True,x=False,y=true") == {"name": "mobilenet_v2_cifar", "folded_bn": True,
                                                                            "x": False, "y": True}


@pytest.fixture(scope="module")
def small_ck(tmp_path_factory):
    from mbz.models import mobilenet_v2_cifar
    p = tmp_path_factory.mktemp("ck") / "m.pt"
    torch.save(mobilenet_v2_cifar(num_classes=10, width_mult=0.25).state_dict(), p)
    return p


@pytest.mark.parametrize("arch, says", [
    ("mobilenet_v2_cifar:num_classes=ten", "--arch 'mobilenet_v2_cifar:num_classes=ten': 'arch.num_classes' of "
                                            "mobilenet_v2_cifar must be an integer"),
    ("mobilenet_v2_cifar:width_mult=half", "'arch.width_mult' of mobilenet_v2_cifar must be a finite number"),
    ("mobilenet_v2_cifar:num_classes=10,num_classes=100", "'num_classes' is given twice"),
    ("", "--arch '': no architecture NAME"),   # not the same as leaving --arch out
])
def test_pack_refuses_bad_arch_values_in_one_line(small_ck, tmp_path, capsys, arch, says):
    out = tmp_path / "m.mbz"
    assert main(["pack", str(small_ck), "-o", str(out), "-q", "--arch", arch]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err
    assert not out.exists()


def test_pack_accepts_a_trailing_colon(small_ck, tmp_path):
    out = tmp_path / "m.mbz"
    assert main(["pack", str(small_ck), "-o", str(out), "-q", "--arch", "mobilenet_v2_cifar:"]) == 0
    with mbz.open(out) as r:
        assert r.metadata["arch"]["name"] == "mobilenet_v2_cifar"


# --------------------------------------------------------------------------- --data npz:FILE
def test_an_npz_file_of_the_other_split_is_refused(tiny_npz):
    from mbz.pipeline.data import load_dataset, split_of_file
    train, test = tiny_npz / "cifar10_jpeg_train.npz", tiny_npz / "cifar10_jpeg_test.npz"
    assert [split_of_file(str(p)) for p in (train, test)] == ["train", "test"]
    assert split_of_file("/d/mine.npz") is None and split_of_file("/d/train_test.npz") is None
    with pytest.raises(DataError) as e:
        load_dataset(f"npz:{train}", "test")
    assert _one_line(e.value, train).endswith("its name says the train split, but the test split is read here; "
                                              "pass npz:DIR (the folder holding cifar10_jpeg_{train,test}.npz) "
                                              "or the test file")
    with pytest.raises(DataError, match="says the test split, but the train split"):
        load_dataset(f"npz:{test}", "train")
    assert len(load_dataset(f"npz:{test}", "test")) == 40 and len(load_dataset(f"npz:{train}", "train")) == 96
    assert load_dataset(f"npz:{tiny_npz}", "test").source == f"npz:{test}"


def test_eval_reports_the_split_it_read(small_ck, tiny_npz, tmp_path, capsys):
    p = tmp_path / "m.mbz"
    assert main(["pack", str(small_ck), "-o", str(p), "-q", "--arch", "mobilenet_v2_cifar"]) == 0
    capsys.readouterr()
    assert main(["eval", str(p), "--data", f"npz:{tiny_npz / 'cifar10_jpeg_train.npz'}", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "its name says the train split, but the test split is read here" in err, err
    for spec in (f"npz:{tiny_npz}", f"npz:{tiny_npz / 'cifar10_jpeg_test.npz'}"):
        assert main(["eval", str(p), "--data", spec, "-q", "--json", "--limit", "8"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["split"] == "test" and out["data"].startswith(f"npz:{tiny_npz / 'cifar10_jpeg_test.npz'}")


def test_save_never_replaces_a_file_that_is_not_mbz(tmp_path):
    """mbz.save over an existing checkpoint (not a .mbz file) is refused unless overwrite=True, the file
    untouched; an existing .mbz is replaced; `mbz pack --force` may replace either."""
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    pt = tmp_path / "model.pt"
    torch.save(sd, pt)
    before = pt.read_bytes()
    with pytest.raises(mbz.PathExistsError, match=r"model\.pt: exists and is not a \.mbz file; pass overwrite=True"):
        mbz.save(sd, pt)
    from mbz.api import save_to_size
    with pytest.raises(FileExistsError):
        save_to_size(sd, pt, 10_000)
    assert pt.read_bytes() == before
    mbz.save(sd, pt, overwrite=True)
    assert torch.equal(mbz.load(pt)["w"], sd["w"])
    m = tmp_path / "m.mbz"
    mbz.save(sd, m)
    mbz.save({"w": sd["w"] * 2}, m)  # a .mbz is replaced
    assert torch.equal(mbz.load(m)["w"], sd["w"] * 2)
    other = tmp_path / "other.bin"
    other.write_bytes(b"not a checkpoint")
    src = tmp_path / "src.pt"
    torch.save(sd, src)
    assert main(["pack", str(src), "-o", str(other), "-q"]) == 2 and other.read_bytes() == b"not a checkpoint"
    assert main(["pack", str(src), "-o", str(other), "-q", "--force"]) == 0
    assert torch.equal(mbz.load(other)["w"], sd["w"])


def test_building_without_torchvision_is_one_mbz_error(monkeypatch):
    """Without the `models` extra (torchvision not importable), building an architecture that needs it and
    naming a torchvision one are refused in one line that says what to install."""
    import builtins

    from mbz.models import registry
    real = builtins.__import__

    def no_torchvision(name, *a, **k):
        if name.split(".")[0] == "torchvision":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    monkeypatch.setattr(registry, "_TV", None)
    registry._skeleton_shapes.cache_clear()
    try:
        with pytest.raises(MbzError, match=r"building resnet18_cifar needs torchvision.*mbz\[models\]"):
            registry.build_model({"name": "resnet18_cifar"})
        with pytest.raises(MbzError, match=r"building mobilenet_v2_cifar needs torchvision"):
            registry.build_model({"name": "mobilenet_v2_cifar"})
        with pytest.raises(MbzError, match=r"unknown architecture 'resnet18'.*once torchvision is installed"):
            registry.build_model({"name": "resnet18"})
    finally:
        registry._skeleton_shapes.cache_clear()


def test_verify_says_how_tensors_differ_in_dtype_or_shape(tmp_path, capsys):
    """`mbz verify` against a checkpoint whose tensors differ in dtype or shape says so on each MISMATCH line."""
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4), "c": torch.zeros(2)}
    f = tmp_path / "m.mbz"
    mbz.save(sd, f)
    other = tmp_path / "other.pt"
    torch.save({"a": sd["a"].half(), "b": torch.ones(5), "c": torch.ones(2)}, other)
    assert main(["verify", str(f), str(other)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH a (dtype float16 in the checkpoint, float32 in the file)" in out, out
    assert "MISMATCH b (shape [5] in the checkpoint, [4] in the file)" in out, out
    assert "MISMATCH c\n" in out, out  # same dtype and shape: the values differ


def test_npz_spec_naming_a_file_that_is_not_an_npz_export(tmp_path):
    """--data npz:FILE where FILE is not an .npz (a checkpoint) or not an npz archive: one line saying so."""
    from mbz.pipeline.data import load_dataset
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, pt)
    with pytest.raises(DataError, match=r"model\.pt: a file, not an \.npz export nor a folder"):
        load_dataset(f"npz:{pt}", "test")
    fake = tmp_path / "cifar10_jpeg_test.npz"
    fake.write_text("not an archive\n")
    with pytest.raises(DataError, match=r"not a JPEG export npz .*: not an npz archive$"):
        load_dataset(f"npz:{fake}", "test")


def test_missing_tensor_name_is_a_key_error_naming_the_file(tmp_path):
    """mbz.open(f)[name] for a name the file lacks: an MbzError that is also a KeyError, naming the file and
    the closest names."""
    f = tmp_path / "m.mbz"
    mbz.save({"conv.weight": torch.ones(2, 2), "conv.bias": torch.ones(2)}, f)
    with mbz.open(f) as r:
        with pytest.raises(KeyError):
            r["nope"]
        with pytest.raises(mbz.TensorNotFoundError, match=r"m\.mbz: no tensor 'conv.weigth' among the 2 of the "
                                                          r"file; close: conv.weight"):
            r["conv.weigth"]
        assert "conv.weight" in dict(r.items())
