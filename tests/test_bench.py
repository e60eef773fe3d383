"""`mbz bench`: the structure of its results (never a speed threshold)."""
import json

import pytest
import torch

import mbz
from mbz.cli import main
from mbz.models import guess_arch, mobilenet_v2_cifar
from mbz.pipeline.latency import bench_file, input_size, time_model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    sd = mobilenet_v2_cifar(width_mult=0.25).state_dict()
    p = tmp_path_factory.mktemp("bench") / "tiny.mbz"
    mbz.save(sd, p, arch=guess_arch(sd), metadata={"preprocess": {"input_size": [3, 16, 16]}})
    return p


def test_bench_json_structure(tiny_file, tmp_path, capsys):
    out = tmp_path / "lat.json"
    assert main(["bench", str(tiny_file), "--batch", "1,3", "--runs", "3", "--warmup", "1", "--threads", "1",
                 "--device", "cpu", "--json", "-q", "-o", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out.read_text())
    assert res["input_size"] == [3, 16, 16] and res["torch_threads"] == 1 and res["runs"] == 3
    assert res["file_bytes"] == tiny_file.stat().st_size and res["command"].startswith("mbz bench ")
    assert [(r["device"], r["batch"]) for r in res["results"]] == [("cpu", 1), ("cpu", 3)]
    for r in res["results"]:
        assert len(r["runs_ms"]) == 3 and all(t > 0 for t in r["runs_ms"])
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["images_per_s"] > 0
    # no overwrite without --force; the table form prints one row per measurement
    assert main(["bench", str(tiny_file), "--batch", "1", "--runs", "1", "--device", "cpu", "-o", str(out)]) == 2
    assert main(["bench", str(tiny_file), "--batch", "2", "--runs", "1", "--device", "cpu", "-q"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["device", "batch", "median"] and table[2].split()[:2] == ["cpu", "2"]


def test_input_size_default_and_timer(tmp_path):
    sd = mobilenet_v2_cifar(width_mult=0.25).state_dict()
    p = tmp_path / "plain.mbz"
    mbz.save(sd, p, arch=guess_arch(sd))
    assert input_size(p) == (3, 32, 32)
    res = bench_file(p, batches=(1,), devices=["cpu"], runs=2, warmup=0)
    assert res["input_size"] == [3, 32, 32] and len(res["results"]) == 1
    calls = []
    m = torch.nn.Identity()
    m.register_forward_hook(lambda *a: calls.append(1))
    t = time_model(m, torch.zeros(1), runs=4, warmup=2)
    assert len(calls) == 6 and len(t["runs_ms"]) == 4


def test_bench_with_the_users_own_network(tmp_path, capsys, monkeypatch):
    """A file with no 'arch': bench's error names what bench takes (--model), and --model benches the user's net."""
    (tmp_path / "benchnets.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    p = tmp_path / "own.mbz"
    mbz.save(net.state_dict(), p)
    assert main(["bench", str(p), "--batch", "1", "--runs", "1", "--warmup", "0", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'arch' metadata" in err and "--model to mbz eval / mbz bench" in err, err
    assert main(["bench", str(p), "--model", "benchnets:build", "--batch", "1", "--runs", "1", "--warmup", "0",
                 "--device", "cpu", "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [(r["device"], r["batch"]) for r in res["results"]] == [("cpu", 1)]
    assert res["command"].endswith("--model benchnets:build")


def test_eval_into_a_log_prints_progress_lines(tiny_file, tiny_npz, capsys):
    """Without a terminal (a log file), eval says where it is at each quarter of the images; -q says nothing."""
    assert main(["eval", str(tiny_file), "--data", f"npz:{tiny_npz}"]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("eval: ")]
    assert [x.rsplit(",", 1)[0] for x in lines] == ["eval: 25 / 40 images (62%)"], err  # after the first batch of 25
    assert main(["eval", str(tiny_file), "--data", f"npz:{tiny_npz}", "-q"]) == 0
    assert "eval: " not in capsys.readouterr().err


def test_eval_with_limit_names_the_file_it_read_whole(tiny_file, tiny_npz, capsys):
    """'read 40 test images of npz:.../cifar10_jpeg_test.npz ...; evaluating 30 of them': the subset's label
    ([30]) belongs to the result line, not to what was read."""
    assert main(["eval", str(tiny_file), "--data", f"npz:{tiny_npz}", "--limit", "30"]) == 0
    cap = capsys.readouterr()
    read = next(x for x in cap.err.splitlines() if x.startswith("read "))
    assert read.startswith("read 40 test images of") and "[30]" not in read and "evaluating 30 of them" in read, read
    assert "[30]" in cap.out
