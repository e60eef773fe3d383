"""Structure-aware fuzzing of the .mbz reader (format_spec.md §7).

Valid seed files are made by `mbz.save` over every dtype, encoding, sparse layout,
granularity, section filter, alignment and header codec.  Each seed is parsed into
a model (preamble fields, the header map, the decoded bytes of every section); a
mutation edits the model semantically (shapes, dtypes, params, sections, offsets,
lengths, payload contents, metadata, versions, ...); the file is then re-emitted
with every offset, length and CRC recomputed, so that the mutation reaches the
checks behind the checksums.

Every mutated file goes through `mbz.load`, `mbz.open` + keys / metadata /
accounting / reader[name], and the CLI verbs inspect, inspect --json, verify and
unpack (in-process `main`).  A case passes when each either returns, or raises
`MbzError` (CLI: exit 2 and one line on stderr; verify may exit 1 on a valid but
different file).  It fails on any other exception, on taking more than 5 s, on
growing the process's peak memory by more than 50 x the file size + 200 MB, or on
a tensor that differs from what an independent decoder written from the spec
(`reference_decode`) makes of the same file.

    python tests/fuzz_format.py --cases 100000 --seed 1 --out results/fuzz/campaign.json

prints progress and writes a table of outcomes per mutation kind.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import zlib

import msgpack
import numpy as np
import torch
import zstandard

import mbz
from mbz.cli import main as cli_main
from mbz.errors import MbzError  # noqa: E402

MAGIC = b"\x89MBZ\r\n\x1a\n"
PRE = struct.Struct("<8sHHB3sII")
ITEM = {0: 4, 1: 2, 2: 2, 3: 8, 4: 1, 5: 1, 6: 2, 7: 4, 8: 8, 9: 1,
        10: 1, 11: 1, 12: 4, 13: 1, 14: 1, 15: 1, 16: 1, 17: 1, 18: 2, 19: 4, 20: 8, 21: 4, 22: 8, 23: 16}
TORCH = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.float64, 4: torch.int8, 5: torch.uint8,
         6: torch.int16, 7: torch.int32, 8: torch.int64, 9: torch.bool}
# format 1.1 (spec table 2): quantized dtypes (their int_repr type here), float8, unsigned, complex
TORCH.update({k: getattr(torch, n) for k, n in {
    10: "int8", 11: "uint8", 12: "int32", 13: "float8_e4m3fn", 14: "float8_e5m2", 15: "float8_e4m3fnuz",
    16: "float8_e5m2fnuz", 17: "float8_e8m0fnu", 18: "uint16", 19: "uint32", 20: "uint64", 21: "complex32",
    22: "complex64", 23: "complex128"}.items() if hasattr(torch, n)})
QUANTIZED = {10: torch.qint8, 11: torch.quint8, 12: torch.qint32}
HANG_S = 5.0


# --------------------------------------------------------------------------- seeds
def _grid(g, shape, lo, hi, keep, scale):
    q = torch.randint(lo, hi + 1, shape, generator=g).float()
    q[torch.rand(shape, generator=g) > keep] = 0
    return q * scale


def seed_state_dicts():
    g = torch.Generator().manual_seed(0)
    mix = {
        "conv.weight": _grid(g, (4, 2, 3, 3), -3, 3, 0.5, 0.125),
        "neg.weight": _grid(g, (3, 8), -2, 2, 0.4, 0.5),
        "sparse.weight": _grid(g, (40, 50), -7, 7, 0.01, 0.25),
        "half.weight": _grid(g, (6, 10), -5, 5, 0.6, 0.5).half(),
        "bf.weight": _grid(g, (5, 7), -9, 9, 1.0, 0.5).bfloat16(),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "bias": torch.randn(6, generator=g),
        "book": torch.randn(5, generator=g)[torch.randint(0, 5, (40,), generator=g)],
        "book16": torch.randn(3, generator=g).half()[torch.randint(0, 3, (32,), generator=g)],
        "i64": torch.tensor([1, 2, 3]), "i32": torch.tensor([7, -1], dtype=torch.int32),
        "i16": torch.tensor([300, -2], dtype=torch.int16), "i8": torch.tensor([-5, 5], dtype=torch.int8),
        "u8": torch.arange(20, dtype=torch.uint8), "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "zeros": torch.zeros(600),
    }
    vals = torch.tensor([0.0, 0.1, 1 / 3, 3.14159])
    sbook = vals[torch.randint(1, 4, (500,), generator=g)]
    sbook[torch.rand(500, generator=g) < 0.85] = 0
    mix["sbook"] = sbook
    mix["rep.weight"] = (torch.arange(1024) % 7 - 3).float().reshape(32, 32) * 0.5
    mix["neg.weight"][mix["neg.weight"] == 0] = -0.0
    mix["neg.weight"][0, :3] = 0.0
    mix["zeros"][::97] = 3.0
    mix["mid.weight"] = _grid(g, (10, 30), -3, 3, 0.3, 0.5)
    conv = {"features.0.weight": torch.randn(8, 3, 3, 3, generator=g), "fc.weight": torch.randn(10, 16, generator=g),
            "fc.bias": torch.randn(10, generator=g)}
    # BITMAP RAW (format 1.2, §5.2): pruned floats off any grid, half the zeros -0.0 (nz), and pruned int16
    pr = torch.randn(12, 20, generator=g)
    pr[torch.rand(12, 20, generator=g) < 0.8] = 0
    mix["pruned.weight"] = pr * torch.where(torch.rand(12, 20, generator=g) < 0.5, -1.0, 1.0)
    mix["pruned16"] = (torch.randn(64, generator=g) * 1000).to(torch.int16) * (torch.rand(64, generator=g) < 0.2)
    return mix, conv


def seed_checkpoint():
    """A checkpoint with what format 1.1 added: a structure tree (epoch, nested containers, a dtype, a
    Parameter), qint8 per channel / quint8 per tensor, float8, uint16, complex64, a sparse COO tensor and
    shared storage (one record named twice, VIEW alias records)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 2, 3, generator=g)
    w[w.abs() < 0.7] = 0
    qw = torch.quantize_per_channel(w, torch.rand(4, generator=g).double() / 20 + 0.01,
                                    torch.tensor([0, 1, -2, 0]), 0, torch.qint8)
    act = torch.quantize_per_tensor(torch.rand(2, 5, generator=g), 0.02, 17, torch.quint8)
    base = torch.randn(24, generator=g)
    emb = torch.randn(5, 2, generator=g)
    model = {"conv.weight": qw, "act": act, "emb.weight": emb, "head.weight": emb,
             "a": base[:12].view(3, 4), "b": base[12:].view(4, 3),
             "f8": torch.randn(16, generator=g).to(torch.float8_e4m3fn),
             "u16": torch.tensor([0, 1, 65535, 300], dtype=torch.uint16),
             "c64": torch.randn(3, generator=g, dtype=torch.complex64),
             "sp": torch.sparse_coo_tensor(torch.tensor([[0, 2], [1, 0]]), torch.tensor([1.5, -2.0]), (3, 2)),
             "p": torch.nn.Parameter(torch.randn(3, generator=g)), "qdtype": torch.qint8}
    return {"epoch": 3, "model": model, "extra": [1.5, "x", None, (2, 3), torch.Size([4, 5])],
            "opt": {"state": {0: {"buf": torch.randn(4, generator=g)}}, "param_groups": [{"lr": 0.1}]}}


def records(path) -> dict:
    """{record name: tensor} of a file, every record decoded (the tree not built)."""
    with mbz.open(path) as r:
        return {name: r[name] for name in r.keys()}


SEED_OPTIONS = [
    ("mix", {}, dict(zstd=True, align=1)),
    ("mix", {}, dict(zstd=False, align=64)),
    ("mix", {}, dict(zstd=True, align=8)),
    ("conv", dict(wbits=4, granularity="channel"), dict(zstd=True, align=1)),
    ("conv", dict(wbits=3, granularity="group", group_size=16, symmetric=False), dict(zstd=True, align=4)),
    ("conv", dict(wbits=2, granularity="tensor", symmetric=False), dict(zstd=False, align=1)),
    ("conv", dict(wbits=5, granularity="channel", axis=1), dict(zstd=False, align=16)),
    ("tree", {}, dict(zstd=True, align=1)),
]


def make_seeds(folder: str) -> list[dict]:
    """Seed files (bytes) with their state_dicts as written and a checkpoint path for verify."""
    mix, conv = seed_state_dicts()
    out = []
    for i, (name, q, opts) in enumerate(SEED_OPTIONS):
        sd = {"mix": mix, "conv": conv, "tree": seed_checkpoint()}[name]
        path = os.path.join(folder, f"seed{i}.mbz")
        # zstd / unfiltered sections only: the model below edits them (RANS sections: tests/test_rans.py)
        mbz.save(sd, path, metadata={"purpose": "fuzz seed", "arch": {"name": "none", "n": i}}, rans=False,
                 **q, **opts)
        got = records(path)
        ckpt = os.path.join(folder, f"seed{i}.pt")
        torch.save(mbz.load_checkpoint(path) if name == "tree" else dict(got), ckpt)
        with open(path, "rb") as f:
            out.append({"name": f"{name}-{i}", "data": f.read(), "tensors": got, "ckpt": ckpt})
    return out


# --------------------------------------------------------------------------- file model
def zstd_c(data: bytes, content_size: bool = False) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(bytes(data))


def stride_of(role: int, dtype) -> int:
    item = ITEM.get(dtype, 1) if isinstance(dtype, int) else 1
    return item if role in (0, 7) else 4 if role == 5 else 1


def shuffle(b: bytes, w: int) -> bytes:
    if w <= 1 or len(b) % w:
        return bytes(b)
    return np.frombuffer(b, np.uint8).reshape(-1, w).T.tobytes()


def unshuffle(b: bytes, w: int) -> bytes:
    if w <= 1 or len(b) % w:
        return bytes(b)
    return np.frombuffer(b, np.uint8).reshape(w, -1).T.tobytes()


def parse_model(data: bytes) -> dict:
    """A valid file -> {'pre': [...], 'header': dict, 'secs': [[{role, filter, decoded}]]}."""
    magic, major, minor, codec, res, hlen, _ = PRE.unpack_from(data, 0)
    block = data[24:24 + hlen]
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(block)).read() if codec == 1 else block
    h = msgpack.unpackb(raw, raw=False)
    align = h["align"]
    pstart = -(-(24 + hlen) // align) * align
    secs = []
    for r in h["tensors"]:
        out = []
        for role, off, stored, filt, dec in r["x"]:
            b = data[pstart + off:pstart + off + stored]
            if filt:
                b = zstandard.ZstdDecompressor().decompress(b, max_output_size=max(dec, 1))
                if filt == 2:
                    b = unshuffle(b, stride_of(role, r["t"]))
            out.append({"role": role, "filter": filt, "decoded": bytes(b)})
        secs.append(out)
    return {"major": major, "minor": minor, "codec": codec, "reserved": res, "header": h, "secs": secs,
            "post": [], "raw_post": [], "file_post": []}


def emit(m: dict) -> bytes:
    """Re-emit a (mutated) model with offsets, lengths and CRCs recomputed; then the mutation's late edits."""
    h = m["header"]
    align = h.get("align") if isinstance(h, dict) else 1
    if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align > 4096:
        align = 1
    chunks, crcs, off = [], [], 0
    tensors = h.get("tensors") if isinstance(h, dict) else None
    tensors = tensors if isinstance(tensors, list) else []
    for i, secs in enumerate(m["secs"]):
        rec = tensors[i] if i < len(tensors) else None
        dtype = rec.get("t") if isinstance(rec, dict) else None
        x, crc = [], 0
        for s in secs:
            if "stored" in s:
                stored = s["stored"]
            elif s["filter"] == 1:
                stored = zstd_c(s["decoded"])
            elif s["filter"] == 2:
                stored = zstd_c(shuffle(s["decoded"], stride_of(s["role"], dtype)))
            else:
                stored = s["decoded"]
            start = -(-off // align) * align
            chunks.append(b"\0" * (start - off))
            chunks.append(stored)
            x.append([s["role"], start, len(stored), s["filter"], s.get("declen", len(s["decoded"]))])
            crc = zlib.crc32(stored, crc)
            off = start + len(stored)
        crcs.append(crc)
        if isinstance(rec, dict):
            rec["x"] = x
    crc_off = -(-off // align) * align
    chunks.append(b"\0" * (crc_off - off))
    chunks.append(b"".join(c.to_bytes(4, "little") for c in crcs))
    if isinstance(h, dict):
        h["payload"] = crc_off + 4 * len(crcs)
        h["crcs"] = crc_off
    for f in m["post"]:
        f(h)
    raw = msgpack.packb(h, use_bin_type=True)
    for f in m["raw_post"]:
        raw = f(raw)
    block = zstd_c(raw, m.get("content_size", False)) if m["codec"] == 1 else raw
    for f in m.get("block_post", []):
        block = f(block)
    hlen = len(block)
    pad = -(24 + hlen) % align
    data = PRE.pack(MAGIC, m["major"], m["minor"], m["codec"], m["reserved"], hlen, zlib.crc32(block)) + block + \
        b"\0" * pad + b"".join(chunks)
    for f in m["file_post"]:
        data = f(data)
    return data


# --------------------------------------------------------------------------- mutations
WEIRD_INTS = [-1, 0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 255, 256, 65535, 65536, 2**31, 2**32, 2**47, 2**48, 2**48 + 1,
              2**63 - 1, -2**63]
WEIRD = WEIRD_INTS + [None, True, False, 1.5, float("nan"), float("inf"), "", "x", b"\x00", [], {}, [1, 2], {"a": 1}]


def _rec(rng, m):
    t = m["header"]["tensors"]
    i = rng.randrange(len(t))
    return i, t[i]


def _nonempty_sec(rng, m):
    cands = [(i, j) for i, secs in enumerate(m["secs"]) for j, s in enumerate(secs)]
    return rng.choice(cands) if cands else (None, None)


_TREE_VALUES = [None, -1, 0, 1, 6, 8, 10, 12, 17, 19, 99, "x", "", "a@storage", 1.5, True, [], [0], [10, "nope"],
                [12, "a@storage", 0, [40], [1]], [19, 0, 99, ""], [17, "sparse_coo", [], [2], None], [13, "os"],
                [11, [4, "x"], True], [8, [[[6, []], [0]]]], 1 << 40, "-1"]


def mut_tree(rng, m):
    """Structure tree (spec §3.1): a random node field replaced, a tree or 'main' added to any file."""
    h = m["header"]
    if not isinstance(h, dict):
        return
    names = [r.get("n") for r in h.get("tensors", []) if isinstance(r, dict)]
    t = h.get("tree")
    if t is None or rng.random() < 0.15:
        n = len(names)
        h["tree"] = rng.choice([[8, [19, 0, n, ""]], [9, [19, 0, n, ""], [0]], [8, [19, 1, n, ""]],
                                [6, [[10, x] for x in names]], [7, [[12, x, 0, [1], [1]] for x in names]],
                                [8, [[[4, "m"], [8, [19, 0, n, ""]]]]], rng.choice(_TREE_VALUES)])
    elif rng.random() < 0.2:
        h["main"] = rng.choice([["model"], ["m"], [0], "model", [None], [["x"]], [], ["model", "x"]])
    else:
        node, parent = t, None
        for _ in range(rng.randrange(0, 10)):
            kids = [x for x in node if isinstance(x, list)] if isinstance(node, list) else []
            if not kids:
                break
            node = rng.choice(kids)
        if isinstance(node, list) and node:
            j = rng.randrange(len(node))
            op = rng.random()
            if op < 0.7:
                node[j] = rng.choice(_TREE_VALUES + [rng.choice(names) if names else "x"])
            elif op < 0.85:
                del node[j]
            else:
                node.append(rng.choice(_TREE_VALUES))


def mut_preamble(rng, m):
    f = rng.choice(["major", "minor", "codec", "reserved"])
    if f == "major":
        m["major"] = rng.choice([0, 2, 65535])
    elif f == "minor":
        m["minor"] = rng.choice([0, 1, 2, 99, 65535])
    elif f == "codec":
        m["codec"] = rng.choice([0, 1, 2, 255])
        if m["codec"] not in (0, 1):
            m["codec_raw"] = True
    else:
        m["reserved"] = bytes([rng.randrange(256) for _ in range(3)])
    if m["codec"] not in (0, 1):  # an unknown codec: emit with NONE and patch the byte
        c = m["codec"]
        m["codec"] = 0
        m["file_post"].append(lambda d: d[:12] + bytes([c]) + d[13:])


def mut_header(rng, m):
    h = m["header"]
    op = rng.randrange(6)
    key = rng.choice(["format", "payload", "align", "crcs", "meta", "tensors"])
    if op == 0:
        m["post"].append(lambda h: h.pop(key, None))
    elif op == 1:
        v = rng.choice(WEIRD)
        m["post"].append(lambda h: h.__setitem__(key, v))
    elif op == 2:
        h["align"] = rng.choice([1, 2, 3, 4, 64, 4096, 8192, 0])
    elif op == 3:
        h["future_key_" + str(rng.randrange(9))] = rng.choice(WEIRD)
    elif op == 4:
        d = rng.choice([-8, -4, -1, 1, 4, 8])
        k = rng.choice(["payload", "crcs"])
        m["post"].append(lambda h: h.__setitem__(k, h[k] + d))
    else:
        m["raw_post"].append(lambda raw: raw + rng.choice([b"\xc0", b"\x00", b"\x91\x01"]))


def _nest(depth, leaf):
    v = leaf
    for _ in range(depth):
        v = {"a": v}
    return v


def mut_meta(rng, m):
    h = m["header"]
    op = rng.randrange(9)
    meta = h.setdefault("meta", {})
    if op == 0:
        meta[b"bytes-key"] = 1
    elif op == 1:
        meta["deep"] = _nest(rng.choice([30, 62, 63, 64, 65, 200, 1000]), 1)
    elif op == 2:
        meta["arch"] = rng.choice([[1, 2], "mobilenet", 5, None, {"name": [1]}, {"name": "x", "act_alpha": [1]}])
    elif op == 3:
        meta[rng.randrange(100)] = "int key"
    elif op == 4:
        meta["ext"] = msgpack.ExtType(5, b"abc")
    elif op == 5:
        meta["nan"] = [float("nan"), float("inf"), -0.0, 2**63 - 1, -2**63, b"\xff\xfe"]
    elif op == 6:
        h["meta"] = rng.choice([[1], "x", 3, None])
    elif op == 7:
        meta["many"] = [{} for _ in range(rng.choice([10, 1000, 100000]))]
    else:
        meta["long"] = "é" * rng.choice([1, 1000, 100000])


def mut_names(rng, m):
    i, r = _rec(rng, m)
    op = rng.randrange(6)
    t = m["header"]["tensors"]
    if op == 0:
        r["n"] = ""
    elif op == 1:
        r["n"] = t[rng.randrange(len(t))]["n"]
    elif op == 2:
        r["n"] = rng.choice([None, 5, b"name", ["x"], True])
    elif op == 3:
        r["n"] = "n" * rng.choice([1000, 100000])
    elif op == 4:
        r["n"] = "\u0000\ud7ff\u4e2d"
    else:
        r.pop("n")


def mut_shape(rng, m):
    i, r = _rec(rng, m)
    s = list(r["s"]) if isinstance(r.get("s"), list) else []
    op = rng.randrange(8)
    if op == 0 and s:
        k = rng.randrange(len(s))
        s[k] = rng.choice(WEIRD_INTS)
    elif op == 1:
        s = s + [rng.choice([0, 1, 2, 2**20])]
    elif op == 2 and s:
        s = s[:-1]
    elif op == 3:
        s = [1] * 17
    elif op == 4:
        s = [0, 2**48, 2**48]
    elif op == 5:
        s = rng.choice([None, 5, "3", [1.5], [True], {"a": 1}])
    elif op == 6 and s:
        s = list(reversed(s))
    else:
        s = [2**26] if rng.random() < 0.5 else [2**33]
    r["s"] = s


def mut_dtype(rng, m):
    i, r = _rec(rng, m)
    r["t"] = rng.choice(list(range(24)) + [-1, 255, None, "0", 1.0, True])


def mut_encoding(rng, m):
    i, r = _rec(rng, m)
    r["e"] = rng.choice([0, 1, 2, 3, -1, None, True])


PARAM_KEYS = ["b", "sg", "g", "ax", "gs", "zb", "sp", "m", "iw", "nz", "k"]


def mut_params(rng, m):
    i, r = _rec(rng, m)
    p = r.get("p")
    if not isinstance(p, dict):
        r["p"] = {}
        p = r["p"]
    op = rng.randrange(6)
    key = rng.choice(PARAM_KEYS)
    if op == 0:
        p.pop(key, None)
    elif op == 1:
        p[key] = rng.choice(WEIRD)
    elif op == 2 and key in p and isinstance(p[key], int):
        p[key] = p[key] + rng.choice([-1, 1])
    elif op == 3:
        r["p"] = rng.choice([None, [], "x", 5])
    elif op == 4:
        p["future"] = rng.choice(WEIRD)
    else:
        p[key] = rng.choice([0, 1, 2])


def mut_sections(rng, m):
    i = rng.randrange(len(m["secs"]))
    secs = m["secs"][i]
    op = rng.randrange(6)
    if op == 0 and secs:
        secs.pop(rng.randrange(len(secs)))
    elif op == 1 and secs:
        secs.append(dict(secs[rng.randrange(len(secs))]))
    elif op == 2 and len(secs) > 1:
        rng.shuffle(secs)
    elif op == 3 and secs:
        secs[rng.randrange(len(secs))]["role"] = rng.choice(list(range(9)) + [-1, 100])
    elif op == 4:
        secs.append({"role": rng.randrange(8), "filter": rng.choice([0, 1]), "decoded": bytes(rng.randrange(9))})
    else:
        r = m["header"]["tensors"][i]
        m["post"].append(lambda h: r.__setitem__("x", rng.choice([None, [], [[1, 2, 3]], "x", [[0, 0, 0, 0, 0, 0]]])))


def mut_filters(rng, m):
    i, j = _nonempty_sec(rng, m)
    if i is None:
        return
    s = m["secs"][i][j]
    op = rng.randrange(6)
    if op == 0:
        s["filter"] = rng.choice([0, 1, 2])  # valid re-encoding: must decode to the same tensor
    elif op == 1:
        s["filter"] = rng.choice([5, 255, -1])
        s["stored"] = s["decoded"]
    elif op == 2:  # stored bytes of one filter under another's name
        s["stored"] = zstd_c(s["decoded"]) if s["filter"] == 0 else s["decoded"]
    elif op == 3:
        s["filter"] = 1
        s["stored"] = zstd_c(s["decoded"], content_size=True)
    elif op == 4:
        s["filter"] = 1
        s["stored"] = zstd_c(s["decoded"]) + rng.choice([b"\x00", b"junk", zstd_c(b"x")])
    else:
        s["filter"] = 1
        s["stored"] = zstd_c(b"")
        s["declen"] = len(s["decoded"])


def _arans_hint(rec: dict, role: int, decoded: bytes):
    """(kind, w, signed) under which a section's decoded bytes are ARANS elements (spec §5.8), or None."""
    p = rec.get("p", {}) if isinstance(rec, dict) else {}
    if role == 5 and p.get("sb", 4) == 4 and len(decoded) % 4 == 0:
        return 1, _fraction_bits(decoded), False
    w = {1: p.get("b"), 2: 1, 3: p.get("iw"), 4: 1, 6: p.get("zb")}.get(role)
    if not isinstance(w, int) or not 1 <= w <= 16 or (role == 1 and rec.get("e") not in (1, 2)):
        return None
    return 0, w, bool(p.get("sg")) if role == 1 and rec.get("e") == 1 else False


def _fraction_bits(b: bytes) -> int:
    u = 0
    for (x,) in struct.iter_unpack("<I", b):
        u |= x & 0x7FFFFF
    return 0 if not u else 23 - ((u & -u).bit_length() - 1)


def mut_arans(rng, m):
    """A section re-coded with the ARANS filter (spec §5.8): valid with random lanes and row length (must
    read back the same tensors), or with its header, lane states or lane stream damaged."""
    from mbz.codecs import arans
    cands = [(i, j) for i, secs in enumerate(m["secs"]) for j, s in enumerate(secs)
             if s["decoded"] and _arans_hint(m["header"]["tensors"][i], s["role"], s["decoded"])]
    if not cands:
        return
    i, j = rng.choice(cands)
    s = m["secs"][i][j]
    kind, w, signed = _arans_hint(m["header"]["tensors"][i], s["role"], s["decoded"])
    n = len(s["decoded"]) // 4 if kind == 1 else len(s["decoded"]) * 8 // w
    while kind == 0 and n and (n * w + 7) // 8 > len(s["decoded"]):
        n -= 1
    row = rng.choice([0, 0, rng.randrange(1, max(2, n))]) if kind == 0 else 0
    try:
        e = arans.encode(s["decoded"], kind, w, signed, row if row < n else 0, rng.choice([1, 7, 64, 1000]))
    except Exception:  # noqa: BLE001 - a section the filter cannot hold (padding bits set): leave it
        return
    s["filter"] = 4
    op = rng.randrange(8)
    if op < 3:
        s["stored"] = e
        m["same"] = True
        return
    b = bytearray(e)
    if op == 3:    # a header field (mode, w, n, R, K) changed
        k = rng.randrange(min(len(b), 6))
        b[k] = rng.choice([0, 1, 2, 3, 4, 5, 8, 17, 24, 127, 128, 255, b[k] ^ 1])
    elif op == 4:  # truncated or overlong
        b = b[:rng.randrange(len(b))] if rng.random() < 0.7 else b + bytes(rng.randrange(1, 5))
    elif op == 5:  # a lane state out of range or changed
        h = arans._Header(e, len(s["decoded"]))
        st = len(e) - h.stream.size - 4 * h.K
        if h.K:
            k = st + 4 * rng.randrange(h.K)
            b[k:k + 4] = rng.choice([0, (1 << 23) - 1, 1 << 31, 0xFFFFFFFF, (1 << 23) + 1, rng.randrange(1 << 23, 1 << 31)]
                                    ).to_bytes(4, "little")
    else:          # bytes of the lane stream flipped
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    s["stored"] = bytes(b)


def mut_payload(rng, m):
    i, j = _nonempty_sec(rng, m)
    if i is None:
        return
    s = m["secs"][i][j]
    b = bytearray(s["decoded"])
    op = rng.randrange(6)
    if op == 0 and b:
        k = rng.randrange(len(b))
        b[k] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        b[-1] |= 0x80 >> rng.randrange(4)   # unused bits of packed codes
    elif op == 2:
        b = b + bytes(rng.randrange(1, 9))
    elif op == 3 and b:
        b = b[:-rng.randrange(1, len(b) + 1)]
    elif op == 4 and b:
        k = rng.randrange(len(b))
        b[k] = rng.choice([0, 0xFF, 0x7F, 0x80])
    else:
        for k in range(0, len(b), 4):
            if len(b) - k >= 4 and rng.random() < 0.5:
                b[k:k + 4] = struct.pack("<f", rng.choice([float("nan"), -1.0, float("inf"), -0.0, 0.0, 1e-45]))
    s["decoded"] = bytes(b)


def mut_offsets(rng, m):
    i, j = _nonempty_sec(rng, m)
    if i is None:
        return
    field = rng.choice([1, 2, 4])
    d = rng.choice([-3, -1, 1, 2, 4096, 2**40, -2**40])
    r = m["header"]["tensors"][i]
    m["post"].append(lambda h: r["x"][j].__setitem__(field, r["x"][j][field] + d))


def mut_crc(rng, m):
    op = rng.randrange(3)
    if op == 0:
        m["file_post"].append(lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:])
    elif op == 1:
        m["file_post"].append(lambda d: d[:-1] + bytes([d[-1] ^ 0x40]))
    else:
        i, j = _nonempty_sec(rng, m)
        if i is not None:
            s = m["secs"][i][j]
            if "stored" not in s and s["filter"] == 0 and s["decoded"]:
                # corrupt stored bytes after the CRC is computed: a file_post on the exact byte
                m["file_post"].append(lambda d: d[:-5] + bytes([d[-5] ^ 4]) + d[-4:])


def mut_amplify(rng, m):
    i, r = _rec(rng, m)
    op = rng.randrange(6)
    if op == 0 and r.get("e") in (1, 2) and isinstance(r.get("p"), dict):
        p = r["p"]
        p["sp"], p["iw"] = 2, 16
        r["s"] = [rng.choice([10**6, 10**8, 2**31])]
        m["secs"][i] = [s for s in m["secs"][i] if s["role"] not in (2, 3)] + [
            {"role": 3, "filter": 1, "decoded": b"\xff\xff" * p.get("m", 1)}]
    elif op == 1 and r.get("e") in (1, 2) and isinstance(r.get("p"), dict):
        n = rng.choice([10**6, 6 * 10**7])
        r["s"] = [n]
        r["p"]["sp"], r["p"]["m"] = 1, 0
        codes = [s for s in m["secs"][i] if s["role"] not in (1, 2, 3)]
        m["secs"][i] = codes + [{"role": 1, "filter": 0, "decoded": b""},
                                {"role": 2, "filter": 1, "decoded": bytes((n + 7) // 8)}]
        r["p"].pop("iw", None)
    elif op == 2:
        m["header"].setdefault("meta", {})["maps"] = [{} for _ in range(rng.choice([10**5, 10**6]))]
    elif op == 3:
        j = rng.randrange(len(m["secs"][i])) if m["secs"][i] else None
        if j is not None:
            s = m["secs"][i][j]
            s["filter"] = 1
            s["stored"] = fake_frame(s["decoded"], rng.choice([2**28, 2**40, len(s["decoded"]) + 1]),
                                     window_log=rng.choice([10, 17, 30, 40]))
    elif op == 4:
        r["s"] = [2**24, 2**24] if rng.random() < 0.5 else [0, 2**47, 2**47]
    else:
        m["content_size"] = True
        m["header"].setdefault("meta", {})["pad"] = b"\0" * rng.choice([2**20, 2**23])


def fake_frame(content: bytes, fcs: int | None, window_log: int = 17) -> bytes:
    """A hand-made zstd frame: optional 8-byte content size, a window of 2^window_log, one raw last block."""
    fhd = 0xC0 if fcs is not None else 0x00
    out = b"\x28\xb5\x2f\xfd" + bytes([fhd, min(255, (window_log - 10) << 3)])
    if fcs is not None:
        out += fcs.to_bytes(8, "little")
    return out + ((len(content) << 3) | 1).to_bytes(3, "little") + bytes(content)


def mut_noncanonical(rng, m):
    """Valid but unusual encodings of the same content: must read back the same tensors."""
    op = rng.randrange(5)
    h = m["header"]
    if op == 0:
        h["align"] = rng.choice([1, 2, 8, 256, 4096])
    elif op == 1:
        m["codec"] = 1 - m["codec"]
    elif op == 2:
        m["minor"] = rng.choice([0, 1, 5])
        h["future_key"] = {"x": [1, 2]}
    elif op == 3:
        for secs in m["secs"]:
            for s in secs:
                s["filter"] = rng.choice([0, 1, 2])
    else:
        items = list(h.items())
        rng.shuffle(items)
        m["header"] = dict(items)
        for r in m["header"]["tensors"]:
            if isinstance(r.get("p"), dict):
                p = list(r["p"].items())
                rng.shuffle(p)
                r["p"] = dict(p)
    m["same"] = True


MUTATIONS = {
    "preamble": mut_preamble, "header": mut_header, "meta": mut_meta, "names": mut_names, "shape": mut_shape,
    "dtype": mut_dtype, "encoding": mut_encoding, "params": mut_params, "sections": mut_sections,
    "filters": mut_filters, "payload": mut_payload, "offsets": mut_offsets, "crc": mut_crc,
    "amplification": mut_amplify, "noncanonical": mut_noncanonical, "tree": mut_tree, "arans": mut_arans,
}


def mutate(rng, seed: dict, kind: str) -> tuple[bytes, bool]:
    """(mutated file, whether it must decode to the seed's tensors)."""
    m = parse_model(seed["data"])
    if kind == "havoc":
        for _ in range(rng.randrange(2, 5)):
            MUTATIONS[rng.choice([k for k in MUTATIONS if k != "noncanonical"])](rng, m)
        data = bytearray(emit(m))
        for _ in range(rng.randrange(0, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), False
    MUTATIONS[kind](rng, m)
    return emit(m), bool(m.get("same"))


KINDS = list(MUTATIONS) + ["havoc"]


# --------------------------------------------------------------------------- independent decoder (spec §2-§5)
def _bits(buf: bytes, count: int, width: int) -> list:
    v = int.from_bytes(buf, "little")
    mask = (1 << width) - 1
    return [(v >> (i * width)) & mask for i in range(count)]


def _unzstd(b: bytes, n: int) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b), read_across_frames=False).read(n + 1)[:n]


def _varint(b: bytes, pos: int):
    v = sh = 0
    for _ in range(8):
        x = b[pos]
        pos += 1
        v |= (x & 127) << sh
        sh += 7
        if not x & 128:
            return v, pos
    raise ValueError("varint over 8 bytes")


def _arans_decode(b: bytes, declen: int) -> bytes:
    """An ARANS section decoded from format_spec.md §5.8 alone, one decision at a time (ValueError: refused)."""
    mode, w = b[0], b[1]
    kind, signed = mode & 3, mode >> 2 & 1
    n, pos = _varint(b, 2)
    R, pos = _varint(b, pos)
    K, pos = _varint(b, pos)
    if mode >> 3 or kind > 1 or (kind == 1 and (signed or w > 23 or R)) or (kind == 0 and not 1 <= w <= 16):
        raise ValueError("mode / width")
    if (4 * n if kind else (n * w + 7) // 8) != declen or (K == 0) != (n == 0) or K > n or (R and R >= n):
        raise ValueError("n / K / R")
    x = list(struct.unpack_from(f"<{K}I", b, pos))
    if any(not (1 << 23) <= v < (1 << 31) for v in x):
        raise ValueError("state")
    stream, sp = b[pos + 4 * K:], 0
    S = -(-n // K) if K else 0
    lens = [max(0, min(S, n - k * S)) for k in range(K)]
    n0, n1 = [0] * 421, [0] * 421

    def step(lanes_slots):  # [(lane, slot)] of one step -> decisions
        nonlocal sp
        out = []
        for k, sl in lanes_slots:
            q = min(max(((2 * n0[sl] + 1) << 16) // (2 * (n0[sl] + n1[sl]) + 2), 1), 65535)
            slot = x[k] & 65535
            d = 1 if slot >= q else 0
            x[k] = (q * (x[k] >> 16) + slot) if d == 0 else ((65536 - q) * (x[k] >> 16) + slot - q)
            out.append(d)
        for (k, sl), d in zip(lanes_slots, out):
            if d:
                n1[sl] += 1
            else:
                n0[sl] += 1
        for sl in {sl for _, sl in lanes_slots}:
            if n0[sl] + n1[sl] > 1023:
                n0[sl], n1[sl] = (n0[sl] + 1) >> 1, (n1[sl] + 1) >> 1
        ks = [k for k, _ in lanes_slots]
        while any(x[k] < (1 << 23) for k in ks):
            for k in ks:
                if x[k] < (1 << 23):
                    if sp >= len(stream):
                        raise ValueError("stream ends early")
                    x[k] = (x[k] << 8) | stream[sp]
                    sp += 1
        return out
    dens = lambda x, y: (8 * x + y // 2) // y if y else 4  # noqa: E731
    z = [1] * n
    if kind == 0:  # pass 1: zero flags
        for t in range(max(lens, default=0)):
            ls = []
            for k in range(K):
                if t < lens[k]:
                    i, lo = k * S + t, k * S
                    if R:
                        c = i % R
                        row = range(max(lo, i - c), i)
                        col = range(i - R, lo - 1, -R)
                        rc, cc = sum(z[j] for j in row), sum(z[j] for j in col)
                        ls.append((k, dens(rc, len(row)) + 9 * dens(cc, len(col))))
                    else:
                        ls.append((k, (z[i - 1] if t >= 1 else 0) + 2 * (z[i - 2] if t >= 2 else 0)))
            for (k, _), d in zip(ls, step(ls)):
                z[k * S + t] = d
    D = 9 + w if kind else w
    els = [[i for i in range(k * S, k * S + lens[k]) if z[i]] for k in range(K)]
    val = [0] * n
    acc, sgn, fr = [0] * K, [0] * K, [0] * K
    for t in range(max((D * len(e) for e in els), default=0)):
        ls = []
        d = t % D
        for k in range(K):
            if t < D * len(els[k]):
                if kind == 0:
                    j, i = d - signed, els[k][t // D]
                    inrow = i - 1 >= k * S and z[i - 1] and (R == 0 or i % R > 0)
                    left = (1 if val[i - 1] > 0 else 2) if inrow else 0
                    sl = 81 + left if j < 0 else 84 + ((1 << j) + acc[k] if j < 4 else 16 + j)
                else:
                    sl = 116 + (1 << d) + acc[k] if d < 8 else 372 if d == 8 else 373 + d - 9 + 24 * (acc[k] == 127)
                ls.append((k, sl))
        for (k, _), bit in zip(ls, step(ls)):
            if (kind == 0 and d - signed < 0) or (kind == 1 and d == 8):
                sgn[k] = bit
            elif kind == 1 and d > 8:
                fr[k] = 2 * fr[k] + bit
            else:
                acc[k] = 2 * acc[k] + bit
            if d == D - 1:
                i = els[k][t // D]
                if kind:
                    val[i] = (sgn[k] << 31) | (acc[k] << 23) | (fr[k] << (23 - w))
                else:
                    val[i] = -(acc[k] + 1) if sgn[k] else acc[k] + 1
                acc[k] = sgn[k] = fr[k] = 0
    if sp != len(stream) or any(v != (1 << 23) for v in x):
        raise ValueError("stream not consumed / final states")
    if kind:
        return struct.pack(f"<{n}I", *val)
    lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if signed else (0, (1 << w) - 1)
    if any(not lo <= v <= hi for v in val):
        raise ValueError("codes outside the range")
    acc_i = 0
    for i, v in enumerate(val):
        acc_i |= (v & ((1 << w) - 1)) << (i * w)
    return acc_i.to_bytes((n * w + 7) // 8, "little")


def reference_decode(data: bytes) -> dict:
    """The tensors of a file the reference reader accepted, decoded from format_spec.md alone (no mbz code)."""
    _, _, _, codec, _, hlen, _ = PRE.unpack_from(data, 0)
    block = data[24:24 + hlen]
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(block), read_across_frames=False).read() \
        if codec == 1 else block
    h = msgpack.unpackb(raw, raw=False)
    pstart = -(-(24 + hlen) // h["align"]) * h["align"]
    out = {}
    for r in h["tensors"]:
        dt, shape, enc, p = r["t"], r["s"], r["e"], r.get("p", {})
        numel = math.prod(shape)
        item = ITEM[dt]
        secs = {}
        for role, off, stored, filt, dec in r["x"]:
            b = data[pstart + off:pstart + off + stored]
            if filt == 4:
                b = _arans_decode(b, dec)
            elif filt:
                b = _unzstd(b, dec)
                if filt == 2:
                    b = unshuffle(b, stride_of(role, dt))
            secs[role] = b
        if enc == 0 and p.get("sp", 0) == 1:   # BITMAP RAW (1.2, §5.2): stored elements at the MASK's ones
            bits = _bits(secs[2], numel, 1)
            vals = np.zeros((numel, item), np.uint8)
            src = np.frombuffer(secs[0], np.uint8).reshape(-1, item)
            for j, i in enumerate(i for i, x in enumerate(bits) if x):
                vals[i] = src[j]
            if p.get("nz"):   # NEGZERO: one bit per unstored element, 1 = the sign bit alone (little-endian)
                z = [i for i, x in enumerate(bits) if not x]
                for i, bit in zip(z, _bits(secs[4], len(z), 1)):
                    if bit:
                        vals[i, item - 1] = 0x80
            out[r["n"]] = torch.from_numpy(vals.reshape(-1)).view(TORCH[dt]).reshape(shape)
            continue
        if enc == 0:
            out[r["n"]] = torch.frombuffer(bytearray(secs[0]), dtype=torch.uint8).view(TORCH[dt]).reshape(shape) \
                if numel else torch.zeros(shape, dtype=TORCH[dt])
            continue
        m, sp = p["m"], p["sp"]
        if sp == 0:
            pos = list(range(numel))
        elif sp == 1:
            bits = _bits(secs[2], numel, 1)
            pos = [i for i, x in enumerate(bits) if x]
        else:
            pos, prev = [], -1
            for d in _bits(secs[3], m, p["iw"]):
                prev = prev + d + 1
                pos.append(prev)
        codes = _bits(secs[1], m, p["b"])
        if enc == 2:
            book = np.frombuffer(secs[7], np.uint8).reshape(-1, item)
            vals = np.zeros((numel, item), np.uint8)
            for i, q in zip(pos, codes):
                vals[i] = book[q]
            out[r["n"]] = torch.from_numpy(vals.reshape(-1)).view(TORCH[dt]).reshape(shape)
            continue
        if p.get("sg"):
            codes = [q - (1 << p["b"]) if q >> (p["b"] - 1) else q for q in codes]
        g = p["g"]
        scales = np.frombuffer(secs[5], "<f8" if p.get("sb") == 8 else "<f4")
        if np.isnan(scales).any():
            raise ValueError("a NaN scale: the spec refuses the file")
        ngroups = len(scales)
        zps = _bits(secs[6], ngroups, p["zb"]) if p.get("zb") else [0] * ngroups
        if p.get("zs"):
            zps = [z - (1 << p["zb"]) if z >> (p["zb"] - 1) else z for z in zps]

        def group(i):
            if g == 0:
                return 0
            if g == 1:
                post = math.prod(shape[p["ax"] + 1:])
                return (i // post) % shape[p["ax"]]
            return i // p["gs"]
        if dt in QUANTIZED:  # spec §5.3.1: int_repr q (unstored: the group's zero point), scales, zero points
            full = np.array([zps[group(i)] for i in range(numel)], np.int64)
            full[pos] = codes
            info = np.iinfo(str(TORCH[dt]).replace("torch.", ""))
            if full.size and (full.min() < info.min or full.max() > info.max):
                raise ValueError("codes outside the integer type: the spec refuses the file")
            rep = torch.from_numpy(full.astype(info.dtype)).reshape(shape)
            if g == 0:
                out[r["n"]] = torch._make_per_tensor_quantized_tensor(rep, float(scales[0]), int(zps[0]))
            else:
                out[r["n"]] = torch._make_per_channel_quantized_tensor(
                    rep, torch.from_numpy(scales.copy()), torch.tensor(zps, dtype=torch.int64), p["ax"])
            continue
        f = np.zeros(numel, np.float32)
        with np.errstate(all="ignore"):
            for i, q in zip(pos, codes):
                k = group(i)
                f[i] = np.float32(np.float32(q - zps[k]) * scales[k]) if q != zps[k] else 0.0
        if p.get("nz"):
            z = [i for i in range(numel) if f[i] == 0]
            for i, bit in zip(z, _bits(secs[4], len(z), 1)):
                if bit:
                    f[i] = -0.0
        out[r["n"]] = torch.from_numpy(f).reshape(shape).to(TORCH[dt])
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.is_quantized:
        if a.qscheme() != b.qscheme() or not same_bits(a.int_repr(), b.int_repr()):
            return False
        if a.qscheme() == torch.per_tensor_affine:
            return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
        return a.q_per_channel_axis() == b.q_per_channel_axis() and \
            torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales()) and \
            torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


# --------------------------------------------------------------------------- oracle
def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    """Start the peak RSS afresh (Linux: clear_refs 5), so that a peak an earlier test reached is not
    counted against this case; elsewhere the peak only ever grows and a case is measured from it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


_PARSER = []


def _cached_parser():
    """mbz.cli.main builds its parser per call (~75 ms); the fuzzer reuses one (argparse parsers are reusable)."""
    if not _PARSER:
        _PARSER.append(_build_parser())
    return _PARSER[0]


import mbz.cli as _cli_mod  # noqa: E402

_build_parser = _cli_mod.build_parser


def _cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    _cli_mod.build_parser = _cached_parser
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(argv)
    finally:
        _cli_mod.build_parser = _build_parser
    return rc, out.getvalue(), err.getvalue()


def run_case(data: bytes, seed: dict, same: bool, folder: str, cli: bool = True, retry: bool = True) -> tuple[str, str]:
    """('ok' | 'mbzerror' | 'valid_changed' | a failure kind, detail) for one mutated file.

    Each call (load; open with keys / metadata / accounting / every tensor; each CLI verb) is timed on
    its own.  A case over the time or memory bound is run once more: on a shared machine another
    process can stall one run; only a case over the bound twice is a failure ('slow_once' otherwise).
    """
    path = os.path.join(folder, "case.mbz")
    with open(path, "wb") as f:
        f.write(data)
    bound = 50 * len(data) + (200 << 20)
    _reset_peak()
    rss0 = min(_rss_now(), _maxrss())
    slowest = 0.0
    outcome, detail = "ok", ""
    got = None

    def timed(fn, *args):
        nonlocal slowest
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            slowest = max(slowest, time.perf_counter() - t0)

    recs = {}

    def open_and_read():
        with mbz.open(path) as r:
            r.keys()
            r.metadata
            acc = r.accounting()
            for name in r.keys():
                try:
                    recs[name] = r[name]
                except MbzError:
                    pass
            if r.has_structure:
                try:
                    r.checkpoint()
                except MbzError:
                    pass
            return acc

    try:
        try:
            got = timed(mbz.load, path)
        except MbzError as e:
            outcome, detail = "mbzerror", str(e)
        try:
            acc = timed(open_and_read)
            if acc["file_bytes"] != len(data) or sum(acc["categories"].values()) != len(data) or \
                    min(acc["categories"].values()) < 0 or \
                    any(v < 0 for t in acc["tensors"] for v in t["bytes"].values()):
                return "bad_accounting", json.dumps(acc["categories"])
        except MbzError:
            if got is not None:
                return "inconsistent", "load accepted a file open refused"
        if cli:
            out = os.path.join(folder, "out.pt")
            for argv in (["inspect", path], ["inspect", "--json", "--all", path], ["verify", path, seed["ckpt"]],
                         ["unpack", path, "-o", out, "--force"]):
                rc, so, se = timed(_cli, argv)
                if rc == 0:
                    continue
                lines = se.strip().splitlines()
                if rc not in (1, 2) or len(lines) != 1 or rc == 1 and argv[0] != "verify":
                    return "cli", f"{' '.join(argv[:1])}: rc {rc}, stderr {se[-300:]!r}"
    except Exception:
        return "exception", traceback.format_exc(limit=6)[-1500:]
    grown = _maxrss() - rss0
    if slowest > HANG_S or grown > bound:
        if retry:
            again = run_case(data, seed, same, folder, cli, retry=False)
            if again[0] not in ("hang", "memory"):
                return "slow_once", f"{slowest:.1f} s / {grown >> 20} MB on the first run; then {again[0]}"
            return again
        if slowest > HANG_S:
            return "hang", f"one call took {slowest:.1f} s"
        return "memory", f"peak grew {grown >> 20} MB for a {len(data)}-byte file (bound {bound >> 20} MB)"
    if got is not None:
        if len(recs) != len(acc["tensors"]):  # a tree file's load may not need every record
            return "mbzerror", "a record the model state_dict does not use is refused on decode"
        got = recs
        try:
            ref = reference_decode(data)
        except Exception:
            return "silent_accept", "mbz accepted a file the spec-only decoder cannot decode: " + \
                traceback.format_exc(limit=3)[-600:]
        if sorted(ref) != sorted(got) or not all(same_bits(got[k], ref[k]) for k in ref):
            bad = [k for k in ref if k in got and not same_bits(got[k], ref[k])]
            return "silent_wrong", f"tensors differ from the spec-only decoder: {bad[:5]}"
        orig = seed["tensors"]
        unchanged = sorted(orig) == sorted(got) and all(same_bits(got[k], orig[k]) for k in orig)
        if same and not unchanged:
            return "silent_wrong", "a semantics-preserving edit changed the tensors"
        return ("ok" if unchanged else "valid_changed"), ""
    return outcome, detail


FAILURES = ("exception", "hang", "memory", "silent_wrong", "silent_accept", "cli", "bad_accounting", "inconsistent")


def campaign(cases: int, seed: int = 0, cli_every: int = 1, progress: int = 0, deadline: float | None = None,
             folder: str | None = None, examples: int = 3, seeds: list | None = None,
             failure_log: str | None = None, kinds: list | None = None) -> dict:
    """Run `cases` mutated files (round robin over `kinds`, default all, and seeds); a table of outcomes per kind."""
    kinds = kinds or KINDS
    rng = random.Random(seed)
    own = folder is None
    tmp = tempfile.TemporaryDirectory() if own else None
    folder = tmp.name if own else folder
    seeds = seeds or make_seeds(folder)
    table = {k: {} for k in kinds}
    failures = []
    t0 = time.time()
    done = 0
    try:
        for n in range(cases):
            if deadline is not None and time.time() > deadline:
                break
            kind = kinds[n % len(kinds)]
            sd = seeds[(n // len(kinds)) % len(seeds)]
            try:
                data, same = mutate(rng, sd, kind)
            except Exception:  # the mutator could not apply (e.g. an unencodable header): not a reader case
                table[kind]["not_built"] = table[kind].get("not_built", 0) + 1
                done += 1
                continue
            outcome, detail = run_case(data, sd, same, folder, cli=n % cli_every == 0)
            table[kind][outcome] = table[kind].get(outcome, 0) + 1
            if outcome in FAILURES or outcome == "slow_once":
                rec = {"case": n, "kind": kind, "seed": sd["name"], "outcome": outcome, "detail": detail,
                       "file_hex": data.hex() if len(data) < 4096 else None}
                if outcome in FAILURES and len(failures) < 200:
                    failures.append(rec)
                if failure_log:
                    with open(failure_log, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            done += 1
            if progress and done % progress == 0:
                bad = sum(v for t in table.values() for k, v in t.items() if k in FAILURES)
                print(f"{done}/{cases} cases, {time.time() - t0:.0f} s, {bad} failures", file=sys.stderr, flush=True)
    finally:
        if own:
            tmp.cleanup()
    totals = {}
    for t in table.values():
        for k, v in t.items():
            totals[k] = totals.get(k, 0) + v
    return {"cases": done, "seconds": round(time.time() - t0, 1), "seed": seed, "kinds": len(kinds),
            "by_kind": table, "totals": totals,
            "failures": sum(totals.get(k, 0) for k in FAILURES), "examples": failures[:examples * 20]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli-every", type=int, default=1, help="run the CLI verbs on every Nth case (default all)")
    ap.add_argument("--minutes", type=float, help="stop after this many minutes (the table says how many ran)")
    ap.add_argument("--out", help="write the result table (JSON) here")
    ap.add_argument("--log", help="append each failing (or once-slow) case here as it happens (JSON lines)")
    ap.add_argument("--kinds", help="comma-separated mutation kinds (default: all): " + ",".join(KINDS))
    a = ap.parse_args(argv)
    deadline = time.time() + 60 * a.minutes if a.minutes else None
    kinds = a.kinds.split(",") if a.kinds else None
    if kinds and set(kinds) - set(KINDS):
        ap.error(f"unknown mutation kinds {sorted(set(kinds) - set(KINDS))}; known: {KINDS}")
    res = campaign(a.cases, a.seed, a.cli_every, progress=1000, deadline=deadline, failure_log=a.log, kinds=kinds)
    res["command"] = "python tests/fuzz_format.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = json.dumps(res, indent=1)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(a.out + ".tmp", a.out)
    print(json.dumps({k: res[k] for k in ("cases", "seconds", "totals", "failures")}, indent=1))
    return 0 if res["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
