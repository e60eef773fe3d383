"""`mbz data cifar10-jpeg`: the JPEG export in the layout of the shared one, read back by `--data npz:DIR`."""
import io
import os
import pickle

import numpy as np
import pytest

from mbz.cli import main
from mbz.pipeline.cifar_export import encode_jpegs, export_bytes
from mbz.pipeline.data import load_dataset, load_npz

from conftest import SHARED

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images(n, seed=0):
    """Smooth synthetic 32x32 images (JPEG keeps them close), one mean colour per label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([yy * 4, xx * 4, (yy + xx) * 2], -1)
    imgs = np.clip(base[None] * 0.3 + 20 * labels[:, None, None, None] + rng.normal(0, 3, (n, 32, 32, 3)), 0, 255)
    return imgs.astype(np.uint8), labels


def fake_cifar10(root, n_train=12, n_test=7):
    """ROOT/cifar-10-batches-py in torchvision's pickle layout (data: N x 3072 uint8 CHW rows)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    all_imgs = {}
    for name, n, seed in [(f"data_batch_{i}", n_train // 5 + (i <= n_train % 5), i) for i in range(1, 6)] + \
                         [("test_batch", n_test, 9)]:
        imgs, labels = images(n, seed)
        all_imgs[name] = (imgs, labels)
        with open(d / name, "wb") as f:
            pickle.dump({"data": imgs.transpose(0, 3, 1, 2).reshape(n, -1), "labels": labels.tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    return all_imgs


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the real files' md5 sums; the fake folder has others."""
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


def test_encoder_layout_and_readback(tmp_path):
    imgs, labels = images(9)
    jpeg, offs = encode_jpegs(imgs, 75)
    assert jpeg.dtype == np.uint8 and offs.dtype == np.int64 and offs.shape == (10,)
    assert offs[0] == 0 and offs[-1] == jpeg.size and (np.diff(offs) > 0).all()
    assert bytes(jpeg[offs[3]:offs[3] + 2]) == b"\xff\xd8" and bytes(jpeg[offs[4] - 2:offs[4]]) == b"\xff\xd9"
    p = tmp_path / "cifar10_jpeg_test.npz"
    p.write_bytes(export_bytes(imgs, labels, CLASSES, 75))
    ds = load_npz(str(p))
    order = np.argsort(labels, kind="stable")
    assert ds.labels.tolist() == labels[order].tolist()
    assert ds.classes == CLASSES
    err = np.abs(ds.images.numpy().astype(int) - imgs[order].astype(int)).mean()
    assert err < 6                                   # lossy, but the same pictures in the same order
    # a higher quality is closer and larger
    hi, offs_hi = encode_jpegs(imgs, 95)
    assert hi.size > jpeg.size


def test_same_dtypes_and_keys_as_the_shared_export(tmp_path):
    shared = os.path.join(SHARED, "cifar10_jpeg_test.npz")
    if not os.path.exists(shared):
        pytest.skip("no shared export")
    imgs, labels = images(5)
    p = tmp_path / "x.npz"
    p.write_bytes(export_bytes(imgs, labels, CLASSES))
    with np.load(shared) as want, np.load(p) as got:
        assert sorted(got.files) == sorted(want.files) == ["classes", "jpeg", "labels", "offsets"]
        for k in want.files:
            assert got[k].dtype == want[k].dtype, k
            assert got[k].ndim == want[k].ndim, k
        assert got["classes"].tolist() == want["classes"].tolist()


def test_cli_writes_both_splits_from_a_torchvision_folder(tmp_path, no_md5):
    raw = fake_cifar10(tmp_path / "cifar")
    out = tmp_path / "export"
    assert main(["data", "cifar10-jpeg", "--quality", "75", str(tmp_path / "cifar"), "-o", str(out), "-q"]) == 0
    assert sorted(os.listdir(out)) == ["cifar10_jpeg_test.npz", "cifar10_jpeg_train.npz"]
    test = load_dataset(f"npz:{out}", "test")
    train = load_dataset(f"npz:{out}", "train")
    want_test = raw["test_batch"][1]
    want_train = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert test.labels.tolist() == sorted(want_test.tolist())
    assert train.labels.tolist() == sorted(want_train.tolist()) and len(train) == 12
    assert test.classes == CLASSES
    # torchvision's order within a class is kept: image k of the sorted split is the k-th of its label
    imgs = raw["test_batch"][0][np.argsort(want_test, kind="stable")]
    assert np.abs(test.images.numpy().astype(int) - imgs.astype(int)).mean() < 6
    # no overwrite without --force; --keep-order keeps torchvision's order
    before = (out / "cifar10_jpeg_test.npz").read_bytes()
    assert main(["data", "cifar10-jpeg", str(tmp_path / "cifar"), "-o", str(out), "-q", "--keep-order"]) == 2
    assert (out / "cifar10_jpeg_test.npz").read_bytes() == before
    assert main(["data", "cifar10-jpeg", str(tmp_path / "cifar"), "-o", str(out), "-q", "--keep-order",
                 "--force"]) == 0
    assert load_npz(str(out / "cifar10_jpeg_test.npz")).labels.tolist() == want_test.tolist()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in (["data", "cifar10-jpeg", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
                 ["data", "cifar10-jpeg", str(tmp_path / "empty"), "-o", str(tmp_path / "o")],
                 ["data", "cifar10-jpeg", str(tmp_path / "empty"), "-o", str(tmp_path / "no" / "o")],
                 ["data", "cifar10-jpeg", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--quality", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "no").exists() and not (tmp_path / "o").exists()
