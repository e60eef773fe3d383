"""mbz pack: options of lossy packing given without the mode they tune, and an --include that selects nothing,
are refused in one line (exit 2) instead of being ignored."""
from __future__ import annotations

import pytest
import torch

import mbz
from mbz.cli import main
from mbz.errors import EncodeError


@pytest.fixture()
def ck(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"conv.weight": torch.randn(8, 3, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
          "fc.weight": torch.randn(10, 8, generator=g), "fc.bias": torch.randn(10, generator=g)}
    path = tmp_path / "ck.pt"
    torch.save(sd, path)
    return path


def _refused(capsys, *says) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for s in says:
        assert s in err, err
    return err


@pytest.mark.parametrize("opts, says", [
    (["--granularity", "group"], ["--granularity", "--wbits"]),
    (["--asymmetric"], ["--asymmetric", "--wbits"]),
    (["--axis", "1"], ["--axis", "--wbits"]),
    (["--group-size", "16"], ["--group-size", "--wbits"]),
    (["--step", "0.5", "--granularity", "tensor"], ["--granularity", "--wbits", "--step-tensor"]),
    (["--include", "conv"], ["--include 'conv'", "--wbits, --step or --target-size"]),
    (["--deadzone", "0.2"], ["--deadzone", "--step / --target-size"]),
    (["--step", "0.5", "--deadzone", "0.5"], ["--deadzone must be in [0, 0.5)"]),
    (["--wbits", "4", "--size-exp", "0.3"], ["--size-exp", "--granularity"]),
    (["--no-gain"], ["--no-gain"]),
    (["--step-tensor"], ["--step-tensor"]),
    (["--step-1d", "0.01"], ["--step-1d", "--wbits"]),
    (["--wbits", "4", "--step-1d", "-1"], ["--step-1d", "got -1.0"]),
    (["--include", "(["], ["--include '(['", "not a valid regular expression"]),
    (["--wbits", "4", "--include", "(["], ["--include '(['", "not a valid regular expression"]),
    (["--step", "0.5", "--include", "(["], ["--include '(['", "not a valid regular expression"]),
    (["--target-size", "900", "--include", "(["], ["--include '(['", "not a valid regular expression"]),
    (["--wbits", "4", "--include", "nomatch"], ["--include 'nomatch'", "--wbits", "conv.weight, fc.weight"]),
    (["--step", "0.5", "--include", "nomatch"], ["--include 'nomatch'", "--step", "conv.weight, fc.weight"]),
    (["--target-size", "900", "--include", "nomatch"], ["--include 'nomatch'", "conv.weight, fc.weight"]),
    (["--wbits", "4", "--group-size", "16"], ["--group-size", "--granularity channel", "ignored"]),
    (["--wbits", "4", "--granularity", "tensor", "--group-size", "16"], ["--group-size", "--granularity tensor"]),
    (["--wbits", "4", "--granularity", "group", "--axis", "1"], ["--axis", "--granularity group", "ignored"]),
])
def test_pack_refuses_lossy_options_that_would_do_nothing(ck, tmp_path, capsys, opts, says):
    out = tmp_path / "o.mbz"
    assert main(["pack", str(ck), "-o", str(out), "-q", *opts]) == 2
    _refused(capsys, *says)
    assert not out.exists() and not list(tmp_path.glob("o.mbz*"))


def test_include_selects_the_tensors_a_step_quantizes(ck, tmp_path):
    out = tmp_path / "o.mbz"
    assert main(["pack", str(ck), "-o", str(out), "-q", "--step", "0.5", "--include", r"^conv\."]) == 0
    with mbz.open(out) as r:
        enc = {d["name"]: d["encoding"] for d in r.describe()}
        assert r.metadata["lossy"]["include"] == r"^conv\."
    assert enc["conv.weight"] == "AFFINE" and enc["fc.weight"] == "RAW"
    assert torch.equal(mbz.load(out)["fc.weight"], torch.load(ck, weights_only=True)["fc.weight"])


def test_wbits_with_the_defaults_and_a_matching_include_still_pack(ck, tmp_path):
    for i, opts in enumerate((["--wbits", "4"], ["--wbits", "4", "--include", "fc", "--granularity", "tensor",
                                                 "--asymmetric"])):
        out = tmp_path / f"o{i}.mbz"
        assert main(["pack", str(ck), "-o", str(out), "-q", *opts]) == 0
        with mbz.open(out) as r:
            quantized = {d["name"] for d in r.describe() if d["encoding"] == "AFFINE"}
        assert quantized == ({"conv.weight", "fc.weight"} if i == 0 else {"fc.weight"})


def test_save_refuses_wbits_when_nothing_would_be_quantized(tmp_path):
    with pytest.raises(EncodeError, match="nothing to quantize"):
        mbz.save({"bn.weight": torch.ones(4), "bn.bias": torch.zeros(4)}, tmp_path / "o.mbz", wbits=4)
    with pytest.raises(EncodeError, match="matches none.*a.weight"):
        mbz.save({"a.weight": torch.ones(4, 4)}, tmp_path / "o.mbz", wbits=4, include="b")


def test_step_channel_and_step_tensor_together_refused(ck, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:   # an argparse usage error: exit 2, one line
        main(["pack", str(ck), "-o", str(tmp_path / "o.mbz"), "--step", "0.5", "--step-channel", "--step-tensor"])
    assert e.value.code == 2
    _refused(capsys, "--step-tensor: not allowed with argument --step-channel")



def test_negative_zeros_are_reported_only_where_the_file_keeps_them(tmp_path, capsys):
    """A -0.0 in a tensor that --wbits quantizes becomes code 0 (+0.0): pack does not claim to keep its sign."""
    from mbz.cli import main
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    w[0, 0, 0, :3] = -0.0
    ck = tmp_path / "z.pt"
    torch.save({"conv.weight": w}, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "q.mbz"), "--wbits", "4"]) == 0
    assert "negative zeros" not in capsys.readouterr().out
    assert main(["pack", str(ck), "-o", str(tmp_path / "l.mbz")]) == 0
    assert "kept the sign of 3 -0.0 elements" in capsys.readouterr().out
