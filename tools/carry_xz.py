"""Byte-shuffled xz for carrying fp32 checkpoints to the device machine (stdlib only).

The device tool carries at most 64 MiB per call; the CIFAR-10 npz files take 56 MB and an fp32
checkpoint 9.2 MB.  Plain xz saves 8% of fp32 bytes; grouping byte 0, 1, 2, 3 of every word
(the exponent bytes together) saves 17%, enough to fit.  Transport only, not an mbz codec.

    python tools/carry_xz.py pack baseline.pt .devdata/baseline.pt.sxz
    python3 tools/carry_xz.py unpack .devdata/baseline.pt.sxz /tmp/baseline.pt   # on the device
"""
import argparse
import lzma
import os
import struct

MAGIC = b"SXZ1"


def shuffle(b: bytes) -> bytes:
    n = len(b) // 4 * 4
    return b"".join(b[i:n:4] for i in range(4)) + b[n:]


def unshuffle(b: bytes) -> bytes:
    n = len(b) // 4 * 4
    q = n // 4
    out = bytearray(n)
    for i in range(4):
        out[i:n:4] = b[i * q:(i + 1) * q]
    return bytes(out) + b[n:]


def pack(data: bytes) -> bytes:
    return MAGIC + struct.pack("<Q", len(data)) + lzma.compress(shuffle(data), preset=9)


def unpack(blob: bytes) -> bytes:
    if blob[:4] != MAGIC:
        raise ValueError(f"not a carry_xz file: magic {blob[:4]!r}, expected {MAGIC!r}")
    (n,) = struct.unpack("<Q", blob[4:12])
    data = unshuffle(lzma.decompress(blob[12:]))
    if len(data) != n:
        raise ValueError(f"carry_xz: {len(data)} bytes after decompression, header says {n}")
    return data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["pack", "unpack"])
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args(argv)
    with open(a.src, "rb") as f:
        blob = f.read()
    out = pack(blob) if a.mode == "pack" else unpack(blob)
    tmp = a.dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, a.dst)
    print(f"{a.src} ({len(blob):,} B) -> {a.dst} ({len(out):,} B)")


if __name__ == "__main__":
    main()
