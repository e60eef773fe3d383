import os
import zlib

import io

import msgpack
import numpy as np
import pytest
import torch

from mbz.codecs.raw import bits_equal  # noqa: F401  (re-exported for the tests)
from mbz.spec import MAGIC, PREAMBLE, PREAMBLE_SIZE

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
os.environ.setdefault("MBZ_DATA", SHARED)  # the CIFAR-10 JPEG export beside this checkout (data.load_dataset)
REFERENCE = os.path.join(SHARED, "reference_mnv2_cifar10_fp32.pt")


def rebuild(data: bytes, edit_header=None, major=None, minor=None, codec=None, compress=False) -> bytes:
    """Re-emit a file with its header edited and checksums fixed (to test field validation)."""
    magic, mj, mn, cd, res, hlen, _ = PREAMBLE.unpack_from(data, 0)
    block = data[PREAMBLE_SIZE:PREAMBLE_SIZE + hlen]
    if cd == 1:
        import zstandard
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(block)
    else:
        raw = block
    h = msgpack.unpackb(raw, raw=False)
    rest = data[PREAMBLE_SIZE + hlen:]
    if edit_header:
        edit_header(h)
    new = msgpack.packb(h, use_bin_type=True)
    pre = PREAMBLE.pack(MAGIC, mj if major is None else major, mn if minor is None else minor,
                        0 if codec is None else codec, b"\0\0\0", len(new), zlib.crc32(new))
    return pre + new + rest


@pytest.fixture
def tmp_mbz(tmp_path):
    return tmp_path / "t.mbz"


@pytest.fixture(scope="package")
def tiny_npz(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    for split, n in [("train", 96), ("test", 40)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        bufs = []
        for lab in labels:
            img = np.clip(rng.normal(25 * lab, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            b = io.BytesIO()
            Image.fromarray(img).save(b, format="JPEG", quality=75)
            bufs.append(b.getvalue())
        offs = np.cumsum([0] + [len(b) for b in bufs]).astype(np.int64)
        np.savez(d / f"cifar10_jpeg_{split}.npz", jpeg=np.frombuffer(b"".join(bufs), np.uint8), offsets=offs,
                 labels=labels, classes=np.array([f"c{i}" for i in range(10)]))
    return d


@pytest.fixture
def one_torch_thread():
    """Small models on a shared 2-core machine run several times faster on one torch thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
