"""`mbz report`: REPORT.md and REPORT.pdf regenerate from the committed results, read numbers only.

The report reads results/ through results/index.json and the .mbz files in examples/; it never
evaluates a model, so these tests run in seconds.  They work on a copy of results/ (the .mbz files
linked, not copied) so nothing in the checkout is written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("fpdf")
pytest.importorskip("matplotlib")


def _copy_root(dst: str) -> str:
    """results/ copied (.mbz files as links) without the report's own charts, examples/ linked,
    constraints.txt copied."""
    src = os.path.join(ROOT, "results")
    for d, _, files in os.walk(src):
        rel = os.path.relpath(d, src)
        if rel.split(os.sep)[0] == "figures":
            continue
        os.makedirs(os.path.join(dst, "results", rel), exist_ok=True)
        for f in files:
            a, b = os.path.join(d, f), os.path.join(dst, "results", rel, f)
            os.symlink(a, b) if f.endswith(".mbz") else shutil.copyfile(a, b)
    os.symlink(os.path.join(ROOT, "examples"), os.path.join(dst, "examples"))
    shutil.copyfile(os.path.join(ROOT, "constraints.txt"), os.path.join(dst, "constraints.txt"))
    return dst


def pdf_pages_and_text(path: str) -> tuple[int, list[bytes]]:
    """(page count, the decompressed content streams that draw text), from the PDF bytes alone."""
    data = open(path, "rb").read()
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    texts = []
    for m in re.finditer(rb"<<(.*?)>>\s*stream\r?\n", data, re.S):
        head = m.group(1)
        if b"/FlateDecode" not in head or b"/Subtype" in head or b"/Length1" in head:
            continue
        n = int(re.search(rb"/Length (\d+)", head).group(1))
        body = zlib.decompress(data[m.end():m.end() + n])
        if b"BT" in body and b"ET" in body:
            texts.append(body)
    return pages, texts


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    from mbz.cli import main
    root = _copy_root(str(tmp_path_factory.mktemp("report")))
    assert main(["report", "--root", root]) == 0
    return root


def test_report_regenerates_the_committed_report(regenerated):
    """REPORT.md byte for byte, REPORT.pdf with the same pages and text, from the committed results."""
    assert open(os.path.join(regenerated, "REPORT.md"), "rb").read() == \
        open(os.path.join(ROOT, "REPORT.md"), "rb").read(), "REPORT.md is stale: run `mbz report --force`"
    new_pages, new_text = pdf_pages_and_text(os.path.join(regenerated, "REPORT.pdf"))
    old_pages, old_text = pdf_pages_and_text(os.path.join(ROOT, "REPORT.pdf"))
    assert new_pages == old_pages >= 5
    assert new_text == old_text, "REPORT.pdf is stale: run `mbz report --force`"
    for name in ("frontier", "sweep_frontier", "baseline_curves"):
        assert os.path.getsize(os.path.join(regenerated, "results", "figures", name + ".png")) > 10_000


def test_an_existing_report_is_kept_without_force(regenerated, capsys):
    from mbz.cli import main
    before = os.stat(os.path.join(regenerated, "REPORT.md")).st_mtime_ns
    assert main(["report", "--root", regenerated]) == 2
    err = capsys.readouterr().err
    assert "REPORT.md exists; pass --force" in err and err.count("\n") == 1
    assert os.stat(os.path.join(regenerated, "REPORT.md")).st_mtime_ns == before
    assert main(["report", "--root", regenerated, "-o", os.path.join(regenerated, "x.txt")]) == 2
    assert "must end in .md" in capsys.readouterr().err


def test_a_changed_number_in_results_changes_the_report(tmp_path):
    """The report reads its numbers: change the baseline's CPU top-1 or one reduced file's top-1 and the
    text follows (drops, targets)."""
    from mbz.report.report import build
    root = _copy_root(str(tmp_path))
    figs = os.path.join(ROOT, "results", "figures")
    committed = open(os.path.join(ROOT, "REPORT.md")).read()
    p = os.path.join(root, "results", "baseline", "cpu_eval.json")
    rec = json.load(open(p))
    rec["top1"] = 92.31
    json.dump(rec, open(p, "w"))
    text = open(build(root, figures=figs, draw=False, pdf=False)["md"]).read()
    assert text != committed
    assert "**fp32 baseline: 92.31% top-1**" in text and "92.67%" not in text
    p = os.path.join(root, "results", "mnv2_400k", "reduced", "reduce_log.jsonl")
    lines = open(p).read().replace('"top1_after": 92.57', '"top1_after": 91.57')
    open(p, "w").write(lines)
    text = open(build(root, figures=figs, draw=False, pdf=False)["md"]).read()
    assert "| `examples/mobilenetv2_cifar10.mbz` | 377,917 | 91.57 | -0.74 |" in text


def test_shipped_files_are_copies_of_recorded_runs_that_meet_their_targets():
    from mbz.report import records
    R = os.path.join(ROOT, "results")
    idx = records.load_index(R)
    base = records.baseline(R, idx)
    assert base["cpu_top1"] == 92.67
    rows = records.recipe_runs(R, idx, base["cpu_top1"])
    targets = {t["name"]: t for t in idx["targets"]}
    for s in records.shipped(R, ROOT, idx, rows):
        assert s["identical"], f"{s['file']} is not a byte-identical copy of results/{s['copy_of']}"
        assert records.meets(s["row"], targets[s["target"]])
    assert any(records.meets(r, targets["a4"]) for r in rows)


def _put(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_records_read_runs_reductions_soups_and_cpu_figures(tmp_path):
    """Rows of a folder of runs: GPU figures from runs.jsonl, CPU ones from reduce_log / cpu_eval / CPU runs,
    reduced sizes from reduce_log, soups told apart by soup_log; every drop against the one baseline."""
    from mbz.report import records
    R = str(tmp_path)
    cfg = {"sparsity": 0.9, "wbits": 4, "abits": 8, "qat_epochs": 10, "lr": 0.01, "kd": 0.5}
    _put(f"{R}/q/runs.jsonl", [{"name": "m", "config": cfg, "file_bytes": 1000, "top1": 91.5, "device": "H100",
                                "mbz": "models/m.mbz"},
                               {"name": "p", "config": {**cfg, "qat_epochs": 0}, "file_bytes": 990, "top1": 90.0,
                                "device": "cpu"}])
    _put(f"{R}/q/cpu_eval.jsonl", [{"file": "somewhere/m.mbz", "top1": 91.4}])
    _put(f"{R}/q/reduced/reduce_log.jsonl", [{"out": "x/reduced/m.mbz", "scale_bits": 8, "bias_bits": 8,
                                              "bytes_after": 900, "top1_before": 91.3, "top1_after": 91.6}])
    resumed = {"sparsity": 0.9, "wbits": 4, "abits": 8, "epochs": 4, "lr": 0.005}
    _put(f"{R}/q/soup/runs.jsonl", [{"name": "s2", "config": resumed, "file_bytes": 1000, "top1_packed": 92.0,
                                     "resumed_from": "/tmp/a.mbz"},
                                    {"name": "s4", "config": resumed, "file_bytes": 1000, "top1_packed": 92.1,
                                     "resumed_from": "b.mbz"}])
    _put(f"{R}/q/soup/soup_log.jsonl", [{"files": ["m0", "m1"], "out": "a.mbz"},
                                        {"files": ["m0", "m1", "m2", "m3"], "out": "b.mbz"}])
    idx = {"runs": [{"dir": "q", "group": "g", "method": "QAT"}, {"dir": "q/soup", "group": "g", "method": "soup"}]}
    by = {r["run"]: r for r in records.recipe_runs(R, idx, 92.0)}
    m, p, red = by["q/m"], by["q/p"], by["q/reduced/m"]
    assert (m["gpu_top1"], m["cpu_top1"], m["stage"]) == (91.5, 91.4, "QAT")    # cpu_eval wins over top1_before
    assert m["gpu_drop"] == pytest.approx(0.5) and m["cpu_drop"] == pytest.approx(0.6)
    assert records.worst_drop(m) == pytest.approx(0.6) and not m["kept"]
    assert (p["gpu_top1"], p["cpu_top1"], p["stage"]) == (None, 90.0, "PTQ")     # a run made on the CPU
    assert (red["file_bytes"], red["cpu_top1"], red["gpu_top1"]) == (900, 91.6, None)
    assert red["stage"] == "QAT, reduced" and red["cpu_drop"] == pytest.approx(0.4)
    assert by["q/soup/s2"]["stage"] == "soup of 2 + 4 ep" and by["q/soup/s4"]["stage"] == "soup of 4 + 4 ep"
    assert records.meets(red, {"max_bytes": 900, "max_drop": 0.4})
    assert not records.meets(red, {"max_bytes": 899, "max_drop": 1.0})
    assert not records.meets(m, {"abits": 4, "max_drop": 5.0})


def test_report_errors_are_one_line(tmp_path, capsys):
    from mbz.cli import main
    assert main(["report", "--root", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    os.makedirs(tmp_path / "results")
    assert main(["report", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "index.json" in err and err.count("\n") == 1
    (tmp_path / "results" / "index.json").write_text("{not json")
    assert main(["report", "--root", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["report", "--root", ROOT, "-o", str(tmp_path / "missing" / "REPORT.md")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_report_package_names_no_results_folder():
    """Which folder holds what is results/index.json's business, not the installed package's."""
    idx = json.load(open(os.path.join(ROOT, "results", "index.json")))
    names = {e["dir"].split("/")[0] for e in idx["runs"]} | {idx["baseline"]["dir"], idx["sweep"]["dir"]}
    names -= {"baseline", "sweep"}     # also index keys and ordinary words of the report's text
    for f in os.listdir(os.path.join(ROOT, "mbz", "report")):
        if f.endswith(".py"):
            src = open(os.path.join(ROOT, "mbz", "report", f)).read()
            for n in names:
                assert f'"{n}' not in src and f"'{n}" not in src and f"/{n}" not in src, (f, n)


def test_structured_points_come_from_their_summaries(tmp_path):
    """Section 9's structured table reads results/<network>/structured/summary.json: a changed top-1 there
    changes the row, and a network without the folder has no row."""
    from mbz.report.report import build
    root = _copy_root(str(tmp_path))
    figs = os.path.join(ROOT, "results", "figures")
    p = os.path.join(root, "results", "resnet18_cifar", "structured", "summary.json")
    rec = json.load(open(p))
    rec["rows"][1].update(top1_test=89.99, drop_test=1.09)
    json.dump(rec, open(p, "w"))
    shutil.rmtree(os.path.join(root, "results", "vgg11_bn_cifar", "structured"))
    text = open(build(root, figures=figs, draw=False, pdf=False)["md"]).read()
    assert "| ResNet-18 | 50% channels removed, fine-tuned | 5.68 M | 19,213,458 | 89.99 | -1.09 |" in text
    assert "| VGG-11-BN | 50% channels removed" not in text
