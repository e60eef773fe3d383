"""Public API, accounting and the mbz command line."""
import json
import os
import subprocess
import sys

import pytest
import torch

import mbz
from mbz.cli import main
from mbz.errors import CheckpointError, MbzError
from mbz.models import mobilenet_v2_cifar

from conftest import bits_equal


def tiny_model():
    torch.manual_seed(0)
    return mobilenet_v2_cifar(num_classes=10, width_mult=0.25)


def test_accounting_sums_to_file_size(tmp_mbz):
    sd = tiny_model().state_dict()
    for kw in ({}, {"wbits": 4}, {"wbits": 3, "granularity": "group", "group_size": 16}, {"align": 64}):
        mbz.save(sd, tmp_mbz, **kw)
        with mbz.open(tmp_mbz) as r:
            a = r.accounting()
        size = os.path.getsize(tmp_mbz)
        assert a["file_bytes"] == size
        assert sum(a["categories"].values()) == size
        per_tensor = sum(sum(t["bytes"].values()) for t in a["tensors"])
        file_level = a["categories"]["file_header"] + 4  # header fields + header CRC
        assert per_tensor + file_level + (a["categories"]["padding"] - sum(t["bytes"]["padding"] for t in a["tensors"])) == size
        if kw.get("align") == 64:
            assert a["categories"]["padding"] > 0


def test_open_is_lazy_and_mapping_like(tmp_mbz):
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    mbz.save(sd, tmp_mbz, metadata={"note": "hi"})
    with mbz.open(tmp_mbz) as r:
        assert r.keys() == ["a", "b"] and "a" in r and len(r) == 2
        assert r.metadata["note"] == "hi"
        assert bits_equal(r["b"], sd["b"])
        with pytest.raises(KeyError):
            r["zzz"]


def test_wrapped_and_cuda_saved_checkpoints(tmp_path):
    sd = tiny_model().state_dict()
    for i, wrapped in enumerate([sd, {"state_dict": sd, "epoch": 3}, {"model": sd, "optimizer": {"lr": 0.1}}]):
        p = tmp_path / f"c{i}.pt"
        torch.save(wrapped, p)
        out = tmp_path / f"c{i}.mbz"
        assert main(["pack", str(p), "-o", str(out), "-q"]) == 0
        assert main(["verify", str(out), str(p)]) == 0
    with pytest.raises(CheckpointError):
        mbz.save({"a": [1, 2], "b": object()}, tmp_path / "x.mbz")


def test_load_model_rebuilds_and_matches(tmp_mbz):
    m = tiny_model().eval()
    mbz.save(m, tmp_mbz, arch={"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25})
    m2 = mbz.load_model(tmp_mbz)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_cli_pack_inspect_unpack_verify(tmp_path, capsys):
    sd = tiny_model().state_dict()
    ck = tmp_path / "m.pt"
    torch.save(sd, ck)
    out = tmp_path / "m.mbz"
    assert main(["pack", str(ck), "-o", str(out), "--wbits", "4"]) == 0
    assert "max|err|" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["file_bytes"] == os.path.getsize(out)
    assert sum(js["categories"].values()) == js["file_bytes"]
    assert all(set(t["bytes"]) == set(js["categories"]) for t in js["tensors"])
    assert main(["inspect", str(out)]) == 0
    assert "bytes by category" in capsys.readouterr().out
    # lossy file must not verify against the fp32 original, and says it is lossy by design
    capsys.readouterr()
    assert main(["verify", str(out), str(ck)]) == 1
    assert "packed lossy (wbits 4" in capsys.readouterr().out
    with mbz.open(out) as r:
        assert r.metadata["lossy"]["wbits"] == 4
    assert main(["unpack", str(out), "-o", str(tmp_path / "u.pt")]) == 0
    assert main(["verify", str(out), str(tmp_path / "u.pt")]) == 0
    # a corrupt file: clean error, exit 2
    capsys.readouterr()
    bad = bytearray(out.read_bytes())
    bad[len(bad) // 2] ^= 1
    (tmp_path / "bad.mbz").write_bytes(bytes(bad))
    assert main(["inspect", str(tmp_path / "bad.mbz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbz inspect: error:") and err.count("\n") == 1, err


def test_failed_pack_leaves_no_file(tmp_path, monkeypatch):
    import mbz.api as api
    calls = {"n": 0}
    real = api.encode_tensor

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MbzError("injected failure")
        return real(*a, **k)

    out = tmp_path / "x.mbz"
    monkeypatch.setattr(api, "encode_tensor", boom)
    with pytest.raises(MbzError):
        mbz.save(tiny_model().state_dict(), out)
    assert os.listdir(tmp_path) == []
    # and an existing file is left untouched when a later write fails mid-way
    out.write_bytes(b"old")
    import mbz.container as c
    monkeypatch.setattr(c.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        c.atomic_write(out, [b"new"])
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.mbz"]


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "mbz.cli", "pack", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--wbits" in r.stdout and "lossless" in r.stdout


def test_save_records_only_the_arch_it_is_given(tmp_mbz):
    mbz.save(tiny_model().state_dict(), tmp_mbz)  # a state_dict: nothing is guessed (strides are not in the weights)
    with mbz.open(tmp_mbz) as r:
        assert "arch" not in r.metadata
    with pytest.raises(mbz.MbzError, match="no 'arch' metadata"):
        mbz.load_model(tmp_mbz)


def test_read_checkpoint_accepts_mbz_files(tmp_path):
    from mbz.checkpoint import read_checkpoint
    sd = {"a.weight": torch.randn(4, 3), "a.bias": torch.arange(4, dtype=torch.int64)}
    torch.save(sd, tmp_path / "c.pt")
    mbz.save(sd, tmp_path / "c.mbz")
    for p in ("c.pt", "c.mbz"):
        back = read_checkpoint(tmp_path / p)
        assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_threads_change_nothing(tmp_path, monkeypatch):
    """save encodes and load decodes on threads: files and tensors are the same as on one thread."""
    import mbz.api as api
    torch.manual_seed(1)
    sd = {f"layer{i}.weight": torch.randn(64, 32, 3, 3) * (torch.rand(64, 32, 3, 3) > 0.5) for i in range(6)}
    sd.update({f"bn{i}.bias": torch.randn(64) for i in range(6)})
    one, many = tmp_path / "one.mbz", tmp_path / "many.mbz"
    mbz.save(sd, one, wbits=6, workers=1)
    mbz.save(sd, many, wbits=6, workers=3)
    assert one.read_bytes() == many.read_bytes()
    monkeypatch.setattr(mbz.reader, "PARALLEL_MIN_ELEMENTS", 1000)  # the conv weights go to the pool
    with mbz.open(many) as r:
        serial, pooled = r.decode_all(workers=1), r.decode_all(workers=3)
    assert list(serial) == list(sd) == list(pooled)
    assert all(bits_equal(serial[k], pooled[k]) for k in sd)


def test_no_zstd_means_no_zstd_anywhere(tmp_mbz):
    """zstd=False files are for machines without zstandard: the header must not be compressed either."""
    from mbz.spec import PREAMBLE_SIZE, HeaderCodec
    sd = tiny_model().state_dict()
    meta = {"notes": ["the same words again and again"] * 50}  # a header zstd would shrink
    for use_z, want in ((True, HeaderCodec.ZSTD), (False, HeaderCodec.NONE)):
        mbz.save(sd, tmp_mbz, metadata=meta, zstd=use_z)
        with open(tmp_mbz, "rb") as f:
            pre = f.read(PREAMBLE_SIZE)
        assert pre[12] == want, (use_z, pre[12])
        back = mbz.load(tmp_mbz)
        assert back.keys() == sd.keys() and all(bits_equal(back[k], sd[k]) for k in sd)


def test_a_machine_without_zstandard_still_writes_large_tensors(tmp_mbz, monkeypatch):
    """GPU images may lack zstandard: zstd=True there means no zstd stage, also for the large raw sections
    whose zstd saving is first estimated on sample blocks (a ResNet-18 baseline's 9 MB conv weights)."""
    import sys
    from mbz.encoder import RAW_SAMPLES, SAMPLE_BLOCK
    monkeypatch.setitem(sys.modules, "zstandard", None)          # `import zstandard` raises ImportError
    g = torch.Generator().manual_seed(0)
    sd = {"conv.weight": torch.randn(4 * RAW_SAMPLES * SAMPLE_BLOCK // 4 + 64, generator=g)}
    mbz.save(sd, tmp_mbz)
    back = mbz.load(tmp_mbz)
    assert bits_equal(back["conv.weight"], sd["conv.weight"])


def test_repacking_an_mbz_keeps_its_architecture(tmp_path, capsys):
    from mbz.cli import main
    src = tmp_path / "a.mbz"
    arch = {"name": "resnet18_cifar", "num_classes": 10}
    mbz.save({"fc.bias": torch.zeros(10)}, src, metadata={"arch": arch})
    assert main(["pack", str(src), "-o", str(tmp_path / "b.mbz"), "-q"]) == 0
    assert "kept from" in capsys.readouterr().out
    assert mbz.open(tmp_path / "b.mbz").metadata["arch"] == arch


def test_eval_negative_limit_and_a_text_checkpoint_are_one_plain_line(tmp_path, capsys):
    from mbz.cli import main
    ex = os.path.join(os.path.dirname(__file__), "..", "examples", "mobilenetv2_cifar10.mbz")
    assert main(["eval", ex, "--limit", "-5"]) == 2
    assert "--limit -5: must be >= 1" in capsys.readouterr().err
    t = tmp_path / "notes.txt"
    t.write_text("hello")
    assert main(["pack", str(t), "-o", str(tmp_path / "x.mbz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a PyTorch checkpoint, .safetensors, .npz or .mbz file" in err, err


def test_a_corrupt_tensor_names_the_file(tmp_path):
    p = tmp_path / "m.mbz"
    mbz.save({"w": torch.arange(4096, dtype=torch.float32)}, p)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(MbzError, match=f"^{p}: tensor 'w': "):
        mbz.load(p)


def test_pack_option_values_and_a_failed_size_search(tmp_path, capsys):
    """--wbits 0, --step 0 and --zstd-level 99 are refused in one line (not packed losslessly, no traceback);
    a --target-size no step reaches leaves no output file."""
    ck = tmp_path / "m.pt"
    torch.save(tiny_model().state_dict(), ck)
    for bad in (["--wbits", "0"], ["--step", "0"], ["--zstd-level", "99"]):
        capsys.readouterr()
        assert main(["pack", str(ck), "-o", str(tmp_path / "x.mbz"), *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad[0] in err, err
        assert not (tmp_path / "x.mbz").exists()
    assert main(["pack", str(ck), "-o", str(tmp_path / "t.mbz"), "--target-size", "10", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target 10 bytes is too small" in err, err
    assert not (tmp_path / "t.mbz").exists() and os.listdir(tmp_path) == ["m.pt"]


def test_inspect_says_na_without_conv_or_linear_weights(tmp_path, capsys):
    mbz.save({"a": torch.randn(5), "b": torch.arange(3)}, tmp_path / "nw.mbz")
    assert main(["inspect", str(tmp_path / "nw.mbz")]) == 0
    out = capsys.readouterr().out
    assert "weight compression ratio n/a" in out and "0.00x" not in out


def test_verify_names_at_most_twenty_differences_per_kind(tmp_path, capsys):
    """A checkpoint that differs in 30 tensors: 20 named, the rest counted in one line."""
    from mbz.cli import main
    sd = {f"t{i}": torch.full((4,), float(i)) for i in range(30)}
    mbz.save(sd, tmp_path / "a.mbz")
    torch.save({k: v + 1 for k, v in sd.items()}, tmp_path / "b.pt")
    assert main(["verify", str(tmp_path / "a.mbz"), str(tmp_path / "b.pt")]) == 1  # a mismatch: exit 1
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("MISMATCH t") for line in out) == 20
    assert "MISMATCH ... and 10 more" in out, out


def test_counts_of_one_are_singular(tmp_path, capsys):
    """A one-tensor checkpoint: pack, unpack and verify say '1 tensor', never '1 tensors'."""
    ck = tmp_path / "one.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, ck)
    out = tmp_path / "one.mbz"
    assert main(["pack", str(ck), "-o", str(out)]) == 0
    assert main(["unpack", str(out), "-o", str(tmp_path / "u.pt")]) == 0
    assert main(["verify", str(out), str(ck)]) == 0
    text = capsys.readouterr().out
    assert "1 tensor:" in text and "OK: the 1 tensor of" in text, text
    assert "1 tensors" not in text, text


def test_tables_print_long_tensor_names_whole(tmp_path, capsys):
    """inspect's and lossy pack's tables name each tensor in full: two names that share their first 40
    characters stay distinguishable."""
    stem = "encoder.stages.3.blocks.11.attention_projection.depthwise"
    ck = tmp_path / "long.pt"
    torch.save({f"{stem}.a.weight": torch.randn(8, 8), f"{stem}.b.weight": torch.randn(8, 8)}, ck)
    out = tmp_path / "long.mbz"
    assert main(["pack", str(ck), "-o", str(out), "--wbits", "4"]) == 0
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for name in (f"{stem}.a.weight", f"{stem}.b.weight"):
        assert text.count(name + " ") == 2, text   # once in pack's table, once in inspect's


def test_unpack_and_verify_quiet(tmp_path, capsys):
    """-q: unpack prints nothing; verify prints nothing when identical and still lists differences."""
    ck = tmp_path / "m.pt"
    sd = {"a": torch.randn(4, 4), "b": torch.randn(3)}
    torch.save({"model": sd, "epoch": 3}, ck)
    out = tmp_path / "m.mbz"
    assert main(["pack", str(ck), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["unpack", str(out), "-o", str(tmp_path / "u.npz"), "-q"]) == 0
    assert main(["verify", str(out), str(ck), "-q"]) == 0
    assert capsys.readouterr().out == ""
    torch.save({"model": {"a": sd["a"] + 1, "b": sd["b"]}, "epoch": 3}, tmp_path / "other.pt")
    assert main(["verify", str(out), str(tmp_path / "other.pt"), "-q"]) == 1
    assert "MISMATCH model/a" in capsys.readouterr().out


def test_inspect_explains_a_byte_aligned_code_width_only_where_one_is_shown(tmp_path, capsys):
    from mbz.cli import main
    ex = os.path.join(os.path.dirname(__file__), "..", "examples", "mobilenetv2_cifar10_200k.mbz")
    assert main(["inspect", ex]) == 0
    assert "(bits: the stored code width" in capsys.readouterr().out
    mbz.save({"w": torch.randn(64, 64)}, tmp_path / "raw.mbz")
    assert main(["inspect", str(tmp_path / "raw.mbz")]) == 0
    assert "(bits: the stored code width" not in capsys.readouterr().out
