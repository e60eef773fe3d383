"""Every verb of `mbz --help`, driven with the errors a user can cause: exit 2, one line on stderr, no traceback.

The verbs and their arguments come from `mbz.cli.build_parser()`, so a new verb is covered without
editing this file: its positional arguments and required options are inputs (a folder when their
help says "folder", a file otherwise), and `-o/--output`, `--out`, `dst` are outputs.  Inputs are
replaced by a missing path, a directory, a text file, a truncated .mbz; outputs by a path in a
missing folder, an existing file (no --force), an input; --data by a bad spec.  No case may start
real work: the fixtures are tiny, cheap options are set where a verb has them (--limit, --epochs ...),
and a case that runs for more than CASE_SECONDS fails.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import mbz
from mbz.cli import build_parser, main

CASE_SECONDS = 60
OUTPUT_DESTS = ("output", "out", "dst")
# options that keep a verb's work small when its arguments are valid
CHEAP = {"--limit": "8", "--epochs": "1", "--images": "4", "--calib": "4", "--test": "4", "--runs": "1",
         "--subset": "8", "--warmup": "0", "--batch": "2", "--device": "cpu"}


@dataclass
class Slot:
    action: argparse.Action
    kind: str          # 'in-file', 'in-dir', 'out-file', 'out-dir'

    @property
    def flag(self):
        return self.action.option_strings[-1] if self.action.option_strings else None

    @property
    def many(self):
        return self.action.nargs in ("+", "*")


def _leaves(p, path=()):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, p
        return
    for name, sp in subs[0].choices.items():
        yield from _leaves(sp, path + (name,))


def _slots(p) -> list[Slot]:
    out = []
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        folder = "folder" in (a.help or "").lower()
        if a.dest in OUTPUT_DESTS:
            out.append(Slot(a, "out-dir" if folder else "out-file"))
        elif not a.option_strings or a.required:
            out.append(Slot(a, "in-dir" if folder else "in-file"))
    return out


VERBS = {path: p for path, p in _leaves(build_parser())}


def test_every_verb_is_driven():
    names = {" ".join(v) for v in VERBS}
    for verb in ("pack", "unpack", "inspect", "verify", "eval", "bench", "data cifar10-jpeg", "sensitivity",
                 "prune-channels", "activations"):
        assert verb in names
    assert len(names) >= 15


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny inputs: a MobileNet-v2 checkpoint and its .mbz, one without 'arch', a ResNet packed as MobileNet-v2,
    a text file, a truncated .mbz, an empty folder."""
    d = tmp_path_factory.mktemp("inputs")
    from mbz.models import guess_arch, mobilenet_v2_cifar
    torch.manual_seed(0)
    sd = mobilenet_v2_cifar(width_mult=0.25).state_dict()
    f = {"pt": d / "model.pt", "mbz": d / "model.mbz", "mbz2": d / "model2.mbz", "noarch": d / "noarch.mbz",
         "resnet": d / "resnet.mbz", "text": d / "notes.txt", "trunc": d / "truncated.mbz", "dir": d / "folder"}
    torch.save(sd, f["pt"])
    mbz.save(sd, f["mbz"], arch=guess_arch(sd), detect=False)
    f["mbz2"].write_bytes(f["mbz"].read_bytes())
    mbz.save(sd, f["noarch"], detect=False)
    import torchvision
    rn = {k: v for k, v in torchvision.models.resnet18(num_classes=10).state_dict().items()
          if k.startswith(("conv1", "bn1", "layer1.0", "fc"))}
    torch.save(rn, d / "resnet.pt")
    # pack refuses an --arch the tensors do not fit; the core writes such a file as a hostile writer would
    assert main(["pack", str(d / "resnet.pt"), "-o", str(f["resnet"]), "--arch", "mobilenet_v2_cifar", "-q",
                 "--no-detect"]) == 2
    mbz.api.save(rn, f["resnet"], arch={"name": "mobilenet_v2_cifar"}, detect=False)
    f["text"].write_text("this is not a model\n")
    f["trunc"].write_bytes(f["mbz"].read_bytes()[: f["mbz"].stat().st_size // 2])
    f["dir"].mkdir()
    return {k: str(v) for k, v in f.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Overrun(BaseException):
    """Not an Exception: no verb's `except Exception` swallows it."""


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    """run(argv) -> (rc, stderr) of mbz.cli.main in-process, in a fresh working folder, with a time limit."""
    monkeypatch.chdir(tmp_path)

    def overrun(*_):
        raise Overrun(f"still running after {CASE_SECONDS} s: the verb started work before checking its arguments")

    old = signal.signal(signal.SIGALRM, overrun)

    def go(argv):
        capsys.readouterr()
        signal.alarm(CASE_SECONDS)
        try:
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code
        finally:
            signal.alarm(0)
        return rc, capsys.readouterr().err
    yield go
    signal.signal(signal.SIGALRM, old)


def _valid_inputs(slot: Slot, f) -> list[str]:
    d = slot.action.dest
    if slot.kind == "in-dir":
        return [f["dir"]]
    if d in ("file", "baseline"):
        return [f["mbz"]]
    if d == "files":
        return [f["mbz"], f["mbz2"]]
    if d == "checkpoint":
        return [f["pt"]]
    return [f["text"]]  # a recipe, a sweep file ...: nothing valid to hand; the verb must say so in one line


def _argv(path, parser, f, tmp, *, inputs=None, outputs=None, data=None) -> list[str]:
    """argv for a verb: every input / output slot filled (valid values unless given), cheap options."""
    argv = list(path)
    for s in _slots(parser):
        if s.kind.startswith("in"):
            vals = inputs(s) if inputs else None
            vals = _valid_inputs(s, f) if vals is None else vals
        else:
            vals = outputs(s) if outputs else None
            if vals is None:
                os.makedirs(tmp / "out", exist_ok=True)
                vals = [str(tmp / "out" / ("made" if s.kind == "out-dir" else "made.out"))]
        if s.flag:
            argv += [s.flag, vals[0]]
        else:
            argv += vals if s.many else vals[:1]
    opts = {o for a in parser._actions for o in a.option_strings}
    if "--data" in opts:
        argv += ["--data", data or f.get("npz", "npz:/nonexistent")]
    for o, v in CHEAP.items():
        if o in opts:
            argv += [o, v]
    return argv


def _one_line(rc, err, argv):
    assert "Traceback" not in err, (argv, err)
    assert rc == 2, (argv, rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("mbz"), (argv, err)


def _in_slots(parser, kinds=("in-file", "in-dir")):
    return [s for s in _slots(parser) if s.kind in kinds]


def _out_slots(parser, kinds=("out-file", "out-dir")):
    return [s for s in _slots(parser) if s.kind in kinds]


def _cases(scenario):
    ids = [" ".join(v) for v in VERBS]
    return pytest.mark.parametrize("path", list(VERBS), ids=[f"{i}:{scenario}" for i in ids])


@pytest.fixture
def f(files, tiny_npz):
    return dict(files, npz=f"npz:{tiny_npz}")


# --------------------------------------------------------------------------- inputs
@_cases("missing-input")
def test_missing_input(path, f, run, tmp_path):
    p = VERBS[path]
    if not _in_slots(p):
        pytest.skip("no input argument")
    for target in _in_slots(p):
        argv = _argv(path, p, f, tmp_path,
                     inputs=lambda s: [str(tmp_path / "missing" / "nothing.here")] if s.action is target.action
                     else None)
        _one_line(*run(argv), argv)
    assert not (tmp_path / "out" / "made.out").exists()


@_cases("directory-as-input")
def test_directory_as_input(path, f, run, tmp_path):
    p = VERBS[path]
    targets = _in_slots(p, ("in-file",))
    if not targets:
        pytest.skip("no file input")
    for target in targets:
        argv = _argv(path, p, f, tmp_path, inputs=lambda s: [f["dir"]] if s.action is target.action else None)
        _one_line(*run(argv), argv)


@_cases("text-file-as-input")
def test_text_file_as_input(path, f, run, tmp_path):
    p = VERBS[path]
    targets = [s for s in _in_slots(p) if _valid_inputs(s, f) != [f["text"]]]
    if not targets:
        pytest.skip("no model or folder input")
    for target in targets:
        argv = _argv(path, p, f, tmp_path, inputs=lambda s: [f["text"]] if s.action is target.action else None)
        _one_line(*run(argv), argv)


@_cases("truncated-mbz")
def test_truncated_mbz(path, f, run, tmp_path):
    p = VERBS[path]
    targets = [s for s in _in_slots(p, ("in-file",)) if f["mbz"] in _valid_inputs(s, f) or
               s.action.dest == "checkpoint"]
    if not targets:
        pytest.skip("no model input")
    for target in targets:
        argv = _argv(path, p, f, tmp_path, inputs=lambda s: [f["trunc"]] if s.action is target.action else None)
        _one_line(*run(argv), argv)


# --------------------------------------------------------------------------- outputs
@_cases("output-in-missing-folder")
def test_output_in_missing_folder(path, f, run, tmp_path):
    p = VERBS[path]
    if not _out_slots(p):
        pytest.skip("no output argument")
    for target in _out_slots(p):
        argv = _argv(path, p, f, tmp_path, outputs=lambda s: [str(tmp_path / "absent" / "sub" / "x.out")]
                     if s.action is target.action else None)
        rc, err = run(argv)
        _one_line(rc, err, argv)
        assert ".tmp" not in err and not (tmp_path / "absent").exists(), err


@_cases("existing-output")
def test_existing_output_needs_force(path, f, run, tmp_path):
    p = VERBS[path]
    targets = _out_slots(p, ("out-file",))
    if not targets:
        pytest.skip("no output file")
    for target in targets:
        there = tmp_path / "precious.out"
        there.write_bytes(b"keep me")
        argv = _argv(path, p, f, tmp_path, outputs=lambda s: [str(there)] if s.action is target.action else None)
        _one_line(*run(argv), argv)
        assert there.read_bytes() == b"keep me"


@_cases("output-is-input")
def test_output_is_an_input(path, f, run, tmp_path):
    p = VERBS[path]
    outs, ins = _out_slots(p, ("out-file",)), _in_slots(p, ("in-file",))
    if not outs or not ins:
        pytest.skip("no output file or no input file")
    for target in outs:
        for src in ins:
            copy = tmp_path / ("input" + os.path.splitext(_valid_inputs(src, f)[0])[1])
            copy.write_bytes(open(_valid_inputs(src, f)[0], "rb").read())
            before = copy.read_bytes()
            for force in ([], ["--force"]):
                if force and "--force" not in {o for a in p._actions for o in a.option_strings}:
                    continue
                argv = _argv(path, p, f, tmp_path,
                             inputs=lambda s: [str(copy)] * (2 if s.many else 1) if s.action is src.action else None,
                             outputs=lambda s: [str(copy)] if s.action is target.action else None) + force
                _one_line(*run(argv), argv)
                assert copy.read_bytes() == before, f"{argv} changed its input"


# --------------------------------------------------------------------------- data specs
@_cases("bad-data-spec")
def test_bad_data_spec(path, f, run, tmp_path):
    p = VERBS[path]
    if "--data" not in {o for a in p._actions for o in a.option_strings}:
        pytest.skip("no --data")
    for spec in ("npz:/missing", "bogus:x", f"folder:{tmp_path / 'nowhere'}"):
        argv = _argv(path, p, f, tmp_path, data=spec)
        _one_line(*run(argv), argv)


# --------------------------------------------------------------------------- particular files
def test_model_verbs_refuse_files_without_a_fitting_arch(f, run):
    for verb in ("eval", "bench", "activations"):
        for bad in (f["noarch"], f["resnet"]):
            argv = [verb, bad] + (["--data", f["npz"], "--limit", "4"] if verb == "eval" else []) + \
                   (["--runs", "1", "--batch", "1", "--device", "cpu"] if verb == "bench" else [])
            rc, err = run(argv)
            _one_line(rc, err, argv)
            assert "arch" in err, err


def test_inspect_refuses_what_is_not_an_mbz(f, run):
    for bad in (f["text"], f["trunc"], f["pt"]):
        rc, err = run(["inspect", bad])
        _one_line(rc, err, bad)
        assert bad in err


def test_pack_never_overwrites_its_checkpoint(f, run, tmp_path):
    ck = tmp_path / "x.pt"
    ck.write_bytes(open(f["pt"], "rb").read())
    before = ck.read_bytes()
    for extra in ([], ["--force"]):
        _one_line(*run(["pack", str(ck), "-o", str(ck), *extra]), "pack x.pt -o x.pt")
        _one_line(*run(["pack", str(ck), "-o", str(tmp_path / "." / "x.pt"), *extra]), "pack x.pt -o ./x.pt")
    os.link(ck, tmp_path / "hard.pt")
    _one_line(*run(["pack", str(ck), "-o", str(tmp_path / "hard.pt"), "--force"]), "pack x.pt -o hardlink")
    assert ck.read_bytes() == before


def test_usage_errors_are_one_line(run):
    for argv in (["no-such-verb"], ["pack"], ["eval", "--limit", "many", "x.mbz"]):
        rc, err = run(argv)
        _one_line(rc, err, argv)


# --------------------------------------------------------------------------- the real entry point
def test_entry_point_subprocess(f, tmp_path):
    """`python -m mbz.cli` exits 2 with one line (the same main, through the interpreter)."""
    ck = tmp_path / "x.pt"
    ck.write_bytes(open(f["pt"], "rb").read())
    cases = [["pack", str(ck), "-o", str(ck)], ["eval", f["mbz"], "--data", "npz:/missing"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "mbz.cli", *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path) for c in cases]
    for c, pr in zip(cases, procs):
        _, err = pr.communicate(timeout=120)
        _one_line(pr.returncode, err, c)
    assert ck.read_bytes() == open(f["pt"], "rb").read()


@pytest.mark.parametrize("data", [None, "npz:/missing", "folder:/missing", "nosuch:x", "cifar10:/missing"])
def test_eval_refuses_missing_data_before_building_the_model(f, monkeypatch, capsys, data):
    """A dataset that is not there is said at once: the model (seconds of torchvision import and build) is
    never built for it."""
    import mbz.models
    monkeypatch.delenv("MBZ_DATA", raising=False)

    def no_build(*a, **k):
        raise AssertionError("model built before the data was checked")
    monkeypatch.setattr(mbz.models, "load_model", no_build)
    rc = main(["eval", f["mbz"]] + (["--data", data] if data else []))
    _one_line(rc, capsys.readouterr().err, data)


def test_eval_refuses_a_corrupt_file_before_building_the_model(f, monkeypatch, capsys, tmp_path):
    """A payload byte flipped: the checksum error is said before any model is built."""
    import mbz.models
    data = bytearray(open(f["mbz"], "rb").read())
    data[-40] ^= 0xFF
    bad = tmp_path / "flip.mbz"
    bad.write_bytes(bytes(data))

    def no_build(*a, **k):
        raise AssertionError("model built for a corrupt file")
    monkeypatch.setattr(mbz.models, "load_model", no_build)
    rc = main(["eval", str(bad), "--data", f["npz"], "--limit", "4"])
    err = capsys.readouterr().err
    _one_line(rc, err, "flip")
    assert "checksum" in err, err


def test_folded_checkpoints_are_refused_or_packed_without_a_guess(run, tmp_path):
    """A folded (QAT) MobileNet-v2 has MobileNet-v2's names but no BatchNorm: the verbs that need BatchNorm refuse
    it in one line, and pack stores it without guessing an architecture (no KeyError from the guess)."""
    shipped = os.path.join(os.path.dirname(__file__), "..", "examples", "mobilenetv2_cifar10.mbz")
    if not os.path.exists(shipped):
        pytest.skip("no shipped file")
    folded = tmp_path / "folded.pt"
    torch.save(mbz.load(shipped), folded)
    for argv in (["prune-channels", str(folded), "--out", str(tmp_path / "thin")],
                 ["sensitivity", str(folded), "--out", str(tmp_path / "sens")]):
        _one_line(*run(argv), argv)
    rc, err = run(["pack", str(folded), "-o", str(tmp_path / "f.mbz"), "-q"])
    assert rc == 0 and "Traceback" not in err
    with mbz.open(tmp_path / "f.mbz") as r:
        assert "arch" not in r.metadata


def test_unreadable_checkpoints_are_one_line_naming_the_file(run, tmp_path):
    import collections

    import numpy as np
    cases = {"numpy.pt": {"w": np.zeros(3)},                        # refused by weights_only: torch says it in 5 lines
             "counter.pt": {"w": torch.zeros(2), "n": collections.Counter()}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        for argv in (["pack", str(tmp_path / name), "-o", str(tmp_path / "o.mbz")],
                     ["verify", str(tmp_path / name), str(tmp_path / name)]):
            rc, err = run(argv)
            _one_line(rc, err, argv)
            assert name in err


@pytest.mark.parametrize("extra, says", [
    (["--wbits", "4", "--include", "(["], "not a valid regular expression"),
    (["--wbits", "4", "--axis", "7"], "axis 7 is out of range"),
    (["--wbits", "4", "--axis", "-9"], "axis -9 is out of range"),
])
def test_pack_refuses_bad_quantization_options_in_one_line(tmp_path, capsys, extra, says):
    ck = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(10, 8)}, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "m.mbz"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.mbz").exists()


@pytest.mark.parametrize("obj", [[1, 2, 3], 42, {"epoch": 3}])
def test_pack_refuses_a_checkpoint_without_tensors(tmp_path, capsys, obj):
    ck = tmp_path / "x.pt"
    torch.save(obj, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "x.mbz")]) == 2
    assert "holds no tensors" in capsys.readouterr().err
    assert not (tmp_path / "x.mbz").exists()


def test_load_model_of_a_quantized_file_into_a_float_module_is_an_mbz_error(tmp_path):
    q = torch.quantize_per_tensor(torch.randn(4, 3), 0.1, 0, torch.qint8)
    mbz.save({"fc.weight": q, "fc.scale": torch.tensor(0.1), "meta": torch.float32}, tmp_path / "q.mbz")
    with pytest.raises(mbz.MbzError, match="do not fit"):
        mbz.load_model(tmp_path / "q.mbz", model=torch.nn.Sequential())


def test_inspect_into_a_closed_pipe_is_quiet():
    """`mbz inspect F | head`: the reader closing the pipe is not an error (exit 0, nothing on stderr)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-m", "mbz.cli", "inspect", "examples/mobilenetv2_cifar10.mbz"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root)
    p.stdout.close()  # every write of the command now fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and not err.strip(), err


@pytest.mark.parametrize("extra, says", [(["--no-zstd", "--best"], "contradict"), (["--meta", "=x"], "non-empty KEY")])
def test_pack_refuses_contradicting_or_empty_options(tmp_path, capsys, extra, says):
    ck = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.randn(10, 8)}, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "m.mbz"), *extra]) == 2
    assert says in capsys.readouterr().err
    with pytest.raises(mbz.MbzError, match="wbits must be"):
        mbz.save({"fc.weight": torch.randn(10, 8)}, tmp_path / "w.mbz", wbits=0)


def test_a_failed_write_names_the_output_not_the_temporary_file(tmp_path, monkeypatch, capsys):
    import tempfile as tf

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.mbz.abc.tmp"))
    ck = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.randn(10, 8)}, ck)
    monkeypatch.setattr(tf, "mkstemp", refuse)
    assert main(["pack", str(ck), "-o", str(tmp_path / "m.mbz")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'm.mbz'}: cannot write the output: Permission denied" in err and ".tmp" not in err


def test_offline_torchvision_cifar_is_one_data_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    from mbz.errors import DataError
    from mbz.pipeline.data import load_torchvision_cifar

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(tvd, "CIFAR100", offline)
    with pytest.raises(DataError, match="could not be downloaded"):
        load_torchvision_cifar(str(tmp_path), train=False, download=True, classes=100)


@pytest.mark.parametrize("classes", [10, 100])
def test_missing_torchvision_cifar_is_one_line_without_network(tmp_path, monkeypatch, capsys, classes):
    """--data cifar10:/missing/folder (cifar100:): no download attempt unless MBZ_DOWNLOAD=1, one line naming
    the folder and how to get the data, exit 2, the folder not created; with MBZ_DOWNLOAD=1 offline, one line
    saying the download failed."""
    import socket
    import urllib.request

    from mbz.errors import DataError
    from mbz.pipeline.data import load_dataset

    def no_network(*a, **k):
        raise AssertionError("a network access")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("MBZ_DOWNLOAD", raising=False)
    root = tmp_path / "missing" / "folder"
    with pytest.raises(DataError) as e:
        load_dataset(f"cifar{classes}:{root}", "test")
    msg = str(e.value)
    assert f"cifar{classes}:{root}: no CIFAR-{classes} there" in msg and "MBZ_DOWNLOAD=1" in msg, msg
    assert "\n" not in msg and not (tmp_path / "missing").exists()
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "mobilenetv2_cifar10.mbz")
    capsys.readouterr()
    assert main(["eval", example, "--data", f"cifar{classes}:{root}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mbz eval: error: cifar{classes}:{root}: no CIFAR-"), err

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setenv("MBZ_DOWNLOAD", "1")
    import torchvision.datasets.utils as tvu
    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    import torchvision.datasets.cifar as tvc
    monkeypatch.setattr(tvc, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=f"cifar{classes}:.*could not be downloaded .*Name or service not known"):
        load_dataset(f"cifar{classes}:{root}", "test")


def test_torchvision_cifar_that_is_there_is_read(tmp_path, monkeypatch):
    """A CIFAR-10 folder in torchvision's layout (cifar-10-batches-py: pickled batches and batches.meta) is read
    as it was, with no network access (checksums patched: the fixture is tiny)."""
    import pickle

    import numpy as np
    import torchvision.datasets.cifar as tvc

    from mbz.pipeline.data import load_dataset
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [0, 1, 2, 3, 4, 5]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)
    monkeypatch.delenv("MBZ_DOWNLOAD", raising=False)
    ds = load_dataset(f"cifar10:{tmp_path}", "test")
    assert ds.images.shape == (6, 32, 32, 3) and ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(ds.images[1].numpy(), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.classes[:2] == ["c0", "c1"]


def test_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    sd = {"w": torch.arange(6.0)}
    src = tmp_path / "m.pt"
    torch.save(sd, src)
    target = tmp_path / "kept.mbz"
    target.write_bytes(b"keep")
    link = tmp_path / "link.mbz"
    link.symlink_to(target)
    fifo = tmp_path / "pipe.mbz"
    os.mkfifo(fifo)
    for out in (link, fifo):
        assert main(["pack", str(src), "-o", str(out), "--force", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a regular file" in err[0]
    assert link.is_symlink() and target.read_bytes() == b"keep"
    with pytest.raises(OSError, match="not a regular file"):
        mbz.save(sd, link)


@pytest.mark.parametrize("device", ["tpu", "meta", "", "cuda:x"])
def test_eval_device_is_checked_first(device, tmp_path, capsys):
    p = tmp_path / "m.mbz"
    mbz.save({"w": torch.arange(6.0)}, p)
    assert main(["eval", str(p), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use auto, cpu or cuda" in err[0]


def test_help_and_path_refusals_do_not_import_torch(tmp_path):
    """`mbz --help`, every verb's --help parser and the format verbs' path refusals answer without importing torch
    (seconds): the jobs import it when they run."""
    code = ("import sys\nfrom mbz.cli import build_parser, main\nbuild_parser()\n"
            f"rc = [main(['pack', {str(tmp_path / 'no.pt')!r}, '-o', 'x.mbz']), "
            f"main(['inspect', {str(tmp_path / 'no.mbz')!r}]), main(['unpack', {str(tmp_path / 'no.mbz')!r}, '-o', 'x.pt'])]\n"
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[2, 2, 2] False", (out.stdout, out.stderr)


@pytest.mark.parametrize("flags", [["--asymmetric"], ["--wbits", "17"], ["--step-tensor"], ["--deadzone", "0.7", "--step", "1"],
                                   ["--align", "3"], ["--wbits", "4", "--step", "0.05"], ["--bias-correct"]])
def test_pack_flag_mistakes_are_refused_before_the_checkpoint_is_read(f, tmp_path, monkeypatch, capsys, flags):
    from mbz.cli import files_run

    def no_read(*a, **k):
        raise AssertionError("checkpoint read before the flags were checked")
    monkeypatch.setattr(files_run, "read_object", no_read)
    rc = main(["pack", f["pt"], "-o", str(tmp_path / "x.mbz")] + flags)
    _one_line(rc, capsys.readouterr().err, flags)


def test_output_names_of_another_format_are_warned_about(f, tmp_path, capsys):
    """pack -o x.pt writes an .mbz and unpack -o x.txt a torch file, each with one warning line saying so."""
    assert main(["pack", f["pt"], "-o", str(tmp_path / "x.pt"), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not end in .mbz" in err, err
    assert main(["unpack", f["mbz"], "-o", str(tmp_path / "x.txt")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written as torch.save writes" in err, err
    assert main(["pack", f["pt"], "-o", str(tmp_path / "y.MBZ"), "-q"]) == 0
    assert main(["unpack", f["mbz"], "-o", str(tmp_path / "y.pth")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, prog", [(["inspect", "--bogus", "x.mbz"], "mbz inspect"),
                                        (["train", "--recipe", "r.yaml", "--out", "o"], "mbz train"),
                                        (["sweep", "charts", "d", "--zz"], "mbz sweep charts"),
                                        (["pack", "a.pt", "-o", "b.mbz", "--ex"], "mbz pack"),       # no abbreviations
                                        (["sweep", "charts", "d", "--baseline", "x"], "mbz sweep charts"),
                                        (["inspect", "--bogus"], "mbz inspect"),    # not 'file is required'
                                        (["pack", "--ex", "x.pt"], "mbz pack"),
                                        (["sweep", "run", "--bogus"], "mbz sweep run")])
def test_an_unknown_option_is_blamed_on_its_verb(argv, prog, capsys):
    """'mbz VERB: error: unrecognized arguments: ... (see mbz VERB --help)', not the top-level 'mbz: error'."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"{prog}: error: unrecognized arguments:"), err
    assert err.rstrip().endswith(f"(see {prog} --help)") and err.count("\n") == 1, err


def test_a_mistyped_option_is_named_with_the_option_it_resembles(capsys):
    """`eval --lim 10 F.mbz`: argparse takes 10 as the file and leaves '--lim F.mbz'; the message names
    only the unknown option and the one it resembles, wherever it stands."""
    for argv, bad, near in ((["eval", "--lim", "10", "f.mbz"], "--lim", "--limit"),
                            (["eval", "f.mbz", "--lim", "10"], "--lim", "--limit"),
                            (["pack", "x.pt", "-o", "y.mbz", "--wbit", "4"], "--wbit", "--wbits")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"unrecognized arguments: {bad} (did you mean {near}?)" in err, err
        assert err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["pack", "x.pt", "--bogus"])
    assert "did you mean" not in capsys.readouterr().err        # nothing close: no guess


@pytest.mark.parametrize("argv, want", [
    (["mixed-precision", "CK", "--out", "D", "--budget=1e3"], "--budget '1e3': expected comma-separated byte counts or WIDTHbit+BYTES"),
    (["mixed-precision", "CK", "--out", "D", "--like-bits", "3,,4"], "--like-bits '3,,4': expected comma-separated"),
    (["mixed-precision", "CK", "--out", "D", "--images", "500", "--val", "200"], "--images 500: must lie in 1..200"),
    (["mixed-precision", "CK", "--out", "D", "--val", "-1"], "--val -1: must be >= 1"),
    (["mixed-precision", "CK", "--out", ""], "the output folder name is empty"),
    (["pack", "CK", "-o", ""], "the output file name is empty"),
    (["soup", "A", "A2", "-o", "S", "--limit", "-5"], "--limit -5: must be >= 1"),
    (["reduce", "A", "-o", "S", "--limit", "-3"], "--limit -3: must be >= 1"),
    (["eval", "A", "--device", "cpu:0"], "--device 'cpu:0': use auto, cpu or cuda[:N]"),
    (["soup", "A", "A2", "-o", "x.pt"], "x.pt: the output must end in .mbz"),
    (["reduce", "A", "-o", "x.pt"], "x.pt: the output must end in .mbz"),
    (["soup", "A", "A2", "-o", "S", "--device", "nonsense"], "--device 'nonsense': use auto, cpu or cuda[:N]"),
])
def test_option_values_are_refused_naming_the_option_and_value(argv, want, tmp_path, capsys):
    import torch
    from mbz.cli import main
    from mbz.models import mobilenet_v2_cifar
    ck = tmp_path / "ck.pt"
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), ck)
    mbz.save({"w": torch.ones(3)}, tmp_path / "a.mbz")
    mbz.save({"w": torch.ones(3)}, tmp_path / "a2.mbz")
    names = {"CK": str(ck), "D": str(tmp_path / "d"), "A": str(tmp_path / "a.mbz"), "A2": str(tmp_path / "a2.mbz"),
             "S": str(tmp_path / "s.mbz")}
    assert main([names.get(x, x) for x in argv]) == 2
    err = capsys.readouterr().err
    assert want in err and err.count("\n") == 1, err


def test_verify_against_a_bare_tensor_names_the_file(tmp_path, capsys):
    ex = os.path.join(os.path.dirname(__file__), "..", "examples", "mobilenetv2_cifar10_200k.mbz")
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    assert main(["verify", ex, str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 't.pt'}: expected a state_dict" in err, err
