"""The compiled (numba) RANS / ARANS lane loops agree bit for bit with the numpy reference (spec §5.7, §5.8).

Every case runs twice, with MBZ_NO_JIT=1 (numpy) and without (numba): the same bytes out of the encoders,
the same bytes out of the decoders, the same FormatError message on malformed sections.  Skipped where
numba is not installed (the numpy path is then the only one, tested by test_arans.py / test_rans.py), all
but the test that mbz imports and decodes without numba."""
import os

import numpy as np
import pytest

import mbz
from mbz.codecs import arans, jit, rans
from mbz.codecs.bitpack import pack_codes
from mbz.errors import FormatError, MbzError
from mbz.spec import ARANS_LIMIT, RANS_L, AransKind, Filter

try:
    import numba  # noqa: F401
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
# every test but the import one compares the two paths: they need numba
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (the 'fast' extra)")

DATA = os.path.join(os.path.dirname(__file__), "data")


def both(monkeypatch, f):
    """(numpy result, numba result) of f(); an exception counts as its (type, message).  Batches of sections
    run on threads (jit.map_sections) whatever their size."""
    monkeypatch.setattr(jit, "PARALLEL_MIN", 0)
    out = []
    for nojit in ("1", "0"):
        monkeypatch.setenv("MBZ_NO_JIT", nojit)
        assert (jit.kernels() is None) == (nojit == "1")
        try:
            out.append(f())
        except Exception as e:  # noqa: BLE001 -- compared, not swallowed
            out.append((type(e).__name__, str(e)))
        # the compiled path really ran (jit.compiled falls back to numpy when numba itself fails)
        assert (jit.kernels() is None) == (nojit == "1")
    return out


def agree(monkeypatch, f):
    ref, fast = both(monkeypatch, f)
    assert fast == ref
    return ref


def codes(w, signed, n, rng, zeros=0.5, scale=2.0):
    lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if signed else (0, (1 << w) - 1)
    v = np.clip(np.round(rng.laplace(0, scale, n)), lo, hi).astype(np.int64)
    v[rng.random(n) < zeros] = 0
    return pack_codes(v, w, signed) if n else b""


def floats(n, rng, fb):
    f = (rng.random(n) * 0.2 + 0.01).astype(np.float32)
    f[rng.random(n) < 0.3] = 1.0
    f[rng.random(n) < 0.05] *= -1
    u = f.view(np.uint32) & np.uint32((0xFFFFFFFF << (23 - fb)) & 0xFFFFFFFF)
    return u.astype("<u4").tobytes()


def arans_items(seed=0, count=24):
    """Random ARANS sections: widths 1..16, signed / unsigned, 1-D / 2-D rows, FLOAT32, empty, 1..many lanes."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        n = int(rng.choice([0, 1, 2, 7, 60, 300, 1500]))
        if i % 6 == 5:
            fb = int(rng.integers(0, 24))
            items.append((floats(n, rng, fb), AransKind.FLOAT32, fb, False, 0, int(rng.integers(1, 400))))
            continue
        w = int(rng.integers(1, 17))
        signed = bool(rng.integers(0, 2)) and w > 1
        row = int(rng.choice([0, 0, 3, 16, 50]))
        zeros = float(rng.choice([0.0, 0.5, 0.9]))
        items.append((codes(w, signed, n, rng, zeros, float(rng.choice([1.0, 3.0, 300.0]))), AransKind.INT, w, signed,
                      row, int(rng.integers(1, 800))))
    # the halving limit: one slot past ARANS_LIMIT in one lane, and in one step of many lanes sharing slots
    items.append((codes(2, False, 3000, rng, 0.3), AransKind.INT, 2, False, 0, 10 ** 6))
    items.append((codes(1, False, 5000, rng, 0.9), AransKind.INT, 1, False, 0, 1, 2500))  # 2500 > 2 x limit
    items.append((codes(3, True, 2500, rng, 0.6), AransKind.INT, 3, True, 40, 1, 1250))
    # saturated slots and rare ones: a decision of probability ~1/2048 needs two bytes of renormalization
    items.append((codes(1, False, 1500, rng, 0.997), AransKind.INT, 1, False, 0, 10 ** 6))
    items.append((codes(1, False, 3000, rng, 0.997), AransKind.INT, 1, False, 100, 1, 3))
    return items


@needs_numba
def test_kernel_constants_are_the_reference_ones():
    from mbz.codecs import entropy_jit as ej
    for name in ("PB", "DQ", "ZF", "SGN", "MG", "FE", "FS", "FF", "NSLOT"):
        assert getattr(ej, name) == getattr(arans, name), name
    assert ej.FLOAT32 == AransKind.FLOAT32


@needs_numba
def test_kernels_switch(monkeypatch):
    monkeypatch.setenv("MBZ_NO_JIT", "1")
    assert jit.kernels() is None
    monkeypatch.setenv("MBZ_NO_JIT", "0")
    assert jit.kernels() is not None
    for off in ("false", "No", "off", ""):           # the usual false spellings leave the JIT on
        monkeypatch.setenv("MBZ_NO_JIT", off)
        assert jit.kernels() is not None
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")      # numba's interpreted kernels: numpy instead
    assert jit.kernels() is None


@needs_numba
def test_arans_encode_decode_model_bits_agree(monkeypatch):
    items = arans_items()
    assert max(len(it[0]) for it in items) and any(len(it[0]) == 0 for it in items)
    coded = agree(monkeypatch, lambda: arans.encode_many(items))
    assert any(arans._Header(c, len(it[0])).K > ARANS_LIMIT for c, it in zip(coded, items))
    pairs = [(c, len(it[0])) for c, it in zip(coded, items)]
    assert agree(monkeypatch, lambda: arans.decode_many(pairs)) == [bytes(it[0]) for it in items]
    assert agree(monkeypatch, lambda: [arans.decode(c, d) for c, d in pairs[:8]]) == [bytes(it[0]) for it in items[:8]]
    ref, fast = both(monkeypatch, lambda: arans.model_bits(items))
    assert fast == ref  # the same float additions in the same order


@needs_numba
def test_rans_encode_decode_agree(monkeypatch):
    rng = np.random.default_rng(1)
    cases = [(w, s, n, row, steps) for w, s, n, row, steps in
             [(4, True, 3000, 40, 100), (1, False, 2000, 50, 300), (8, False, 700, 0, 64), (12, True, 900, 30, 200),
              (16, False, 300, 7, 50), (3, False, 1, 0, 1), (5, True, 0, 0, 10), (2, True, 999, 10, 9),
              (8, True, 20000, 0, 4000)]]
    datas = [codes(w, s, n, rng, 0.6, 3.0) for w, s, n, _, _ in cases]
    v = np.zeros(20000, np.int64)
    v[rng.integers(0, 20000, 12)] = rng.integers(-128, 128, 12)  # rare symbols: frequency 1 of 2^12, two bytes
    datas[-1] = pack_codes(v, 8, True)
    coded = []
    for d, (w, s, n, row, steps) in zip(datas, cases):
        for alpha in (None, [rans.RansAlphabet.DIRECT] if w <= 8 else None):
            coded.append((agree(monkeypatch, lambda: rans.encode(d, w, s, row, steps, alphabets=alpha)), len(d), d))
    pairs = [(c, n) for c, n, _ in coded]
    assert agree(monkeypatch, lambda: rans.decode_many(pairs)) == [bytes(d) for _, _, d in coded]


def _golden_sections(name, flt):
    with mbz.open(os.path.join(DATA, name)) as r:
        buf = r._src.buf
        return [(bytes(buf[s.offset:s.offset + s.stored]), s.decoded) for rec in r.layout.records
                for s in rec.sections if s.filter == flt]


@pytest.mark.parametrize("name,flt,mod", [("golden_v1_2_arans.mbz", Filter.ARANS, arans),
                                          ("golden_v1_1_rans.mbz", Filter.RANS, rans)])
@needs_numba
def test_golden_files_agree(monkeypatch, name, flt, mod):
    items = _golden_sections(name, flt)
    assert items
    agree(monkeypatch, lambda: mod.decode_many(items))
    ref, fast = both(monkeypatch, lambda: mbz.load(os.path.join(DATA, name)))
    assert ref.keys() == fast.keys() and all(ref[k].equal(fast[k]) for k in ref)


def _arans_bad(rng):
    """Malformed ARANS sections: (what, stored, decoded length)."""
    d = codes(4, True, 1200, rng, 0.5)
    e = arans.encode(d, AransKind.INT, 4, True, 40, 300)
    h = arans._Header(e, len(d))
    s0 = len(e) - h.stream.size
    f = floats(200, rng, 7)
    ef = arans.encode(f, AransKind.FLOAT32, 7, False, 0, 100)
    sf = len(ef) - arans._Header(ef, len(f)).stream.size
    out = [("truncated", e[:s0 + h.stream.size // 2], len(d)), ("truncated early", e[:s0 + 3], len(d)),
           ("one byte short", e[:-1], len(d)), ("unread", e + b"\x07\x00", len(d)),
           ("state", e[:s0 - 4] + (RANS_L + 77).to_bytes(4, "little") + e[s0:], len(d)),
           ("state low", e[:s0 - 4] + (RANS_L - 1).to_bytes(4, "little") + e[s0:], len(d)),
           ("state high", e[:s0 - 4] + (1 << 31).to_bytes(4, "little") + e[s0:], len(d)),
           ("float truncated", ef[:sf + 10], len(f)), ("float stream", ef[:sf + 4] + bytes([ef[sf + 4] ^ 0x10]) + ef[sf + 5:], len(f)),
           ("range", bytes([0, 1, 1, 0, 1]) + (RANS_L + 12345).to_bytes(4, "little") + b"\x00\x00\x00", 1)]
    for i in range(12):  # random byte flips in the lane stream and states
        b = bytearray(e)
        b[int(rng.integers(s0 - 4 * h.K, len(b)))] ^= int(rng.integers(1, 256))
        out.append((f"flip {i}", bytes(b), len(d)))
    return out, (e, len(d)), (ef, len(f))


@needs_numba
def test_arans_malformed_same_errors(monkeypatch):
    bad, good, goodf = _arans_bad(np.random.default_rng(2))
    for what, b, n in bad:
        res = agree(monkeypatch, lambda: arans.decode(b, n))
        if not what.startswith("flip"):
            assert isinstance(res, tuple) and res[0] == "FormatError", what
    # several sections: the error of the section the reference meets first (a truncation during the run
    # before the checks that follow it, in section order)
    for combo in ([good, bad[1][1:], bad[0][1:]], [bad[3][1:], good, bad[0][1:]], [goodf, bad[4][1:], bad[7][1:]],
                  [bad[9][1:], bad[3][1:]], [good, bad[7][1:], bad[1][1:]]):
        res = agree(monkeypatch, lambda: arans.decode_many(combo))
        assert isinstance(res, tuple) and "(section" in res[1]


@needs_numba
def test_rans_malformed_same_errors(monkeypatch):
    rng = np.random.default_rng(3)
    d = codes(4, True, 2000, rng, 0.5, 3.0)
    e = rans.encode(d, 4, True, 40, 100)
    s = rans._Section(e, len(d))
    raw = len(s.raw)
    s0 = len(e) - raw - s.stream.size
    bad = [e[:s0] + s.stream.tobytes()[:-5] + s.raw, e[:s0 - 4] + (RANS_L + 3).to_bytes(4, "little") + e[s0:]]
    for i in range(12):
        b = bytearray(e)
        b[int(rng.integers(s0 - 4 * s.K, s0 + s.stream.size))] ^= int(rng.integers(1, 256))
        bad.append(bytes(b))
    for b in bad:
        agree(monkeypatch, lambda: rans.decode(b, len(d)))
    assert agree(monkeypatch, lambda: rans.decode_many([(e, len(d)), (bad[0], len(d)), (bad[1], len(d))]))[0] == "FormatError"


def test_import_mbz_without_numba():
    import subprocess
    import sys
    code = ("import sys; sys.modules['numba'] = None\n"
            "import mbz; from mbz.codecs import arans, jit\n"
            "from mbz.spec import AransKind\n"
            "assert jit.kernels() is None and 'numba' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "d = bytes(range(40))\n"
            "assert arans.decode(arans.encode(d, AransKind.INT, 8), len(d)) == d\n")
    env = dict(os.environ, MBZ_NO_JIT="0", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@needs_numba
def test_errors_are_mbz_errors(monkeypatch):
    monkeypatch.setenv("MBZ_NO_JIT", "0")
    with pytest.raises(FormatError):
        arans.decode(b"\x00\x04\x01", 10)
    assert issubclass(FormatError, MbzError)


def test_numba_failure_falls_back_to_numpy_once(monkeypatch):
    """An error raised inside numba (a corrupt cache file, a compiler error) is reported once and the numpy
    reference used from then on; an error of mbz's own code propagates, the compiled path kept."""
    monkeypatch.setattr(jit, "_loaded", object())  # stands for the loaded kernels module
    monkeypatch.delenv("MBZ_NO_JIT", raising=False)
    numba_error = type("TypingError", (Exception,), {"__module__": "numba.core.errors"})

    def broken(jk):
        raise numba_error("cache index unreadable")
    with pytest.warns(RuntimeWarning, match="compiled entropy coders failed .*TypingError.*using numpy"):
        assert jit.compiled(broken, lambda: "numpy") == "numpy"
    assert jit.kernels() is None  # off for the rest of the process
    monkeypatch.setattr(jit, "_loaded", object())
    with pytest.raises(FormatError, match="own"):
        jit.compiled(lambda jk: (_ for _ in ()).throw(FormatError("own")), lambda: "numpy")
    with pytest.raises(ZeroDivisionError):
        jit.compiled(lambda jk: 1 // 0, lambda: "numpy")
    assert jit.kernels() is not None
    # kernels with a numba cache: the index is emptied and the call retried once
    from types import SimpleNamespace
    flushed, calls = [], []
    monkeypatch.setattr(jit, "_loaded", SimpleNamespace(k=SimpleNamespace(_cache=SimpleNamespace(
        flush=lambda: flushed.append(1)))))

    def fails_once(jk):
        calls.append(1)
        if len(calls) == 1:
            raise numba_error("cache data unreadable")
        return "jit"
    with pytest.warns(RuntimeWarning, match="cache of the compiled entropy coders was unreadable"):
        assert jit.compiled(fails_once, lambda: "numpy") == "jit"
    assert flushed == [1] and len(calls) == 2 and jit.kernels() is not None


@needs_numba
def test_corrupt_numba_cache_is_rebuilt(tmp_path):
    """A corrupt numba cache (index or data files overwritten) in a fresh process: one RuntimeWarning that the
    cache was emptied and the coders compiled again, the section decoded, no traceback; the next process
    loads the rebuilt cache without a word."""
    import subprocess
    import sys
    code = ("import os, warnings; warnings.simplefilter('always')\n"
            "from mbz.codecs import rans\n"
            "d = bytes(range(256)) * 40\n"
            "os.environ['MBZ_NO_JIT'] = '1'; e = rans.encode(d, 8, row=64); del os.environ['MBZ_NO_JIT']\n"
            "print(rans.decode(e, len(d)) == d)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), MBZ_NO_JIT="0")

    def run():
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    first = run()  # an empty cache: the compile is announced, nothing else is said
    assert first.stdout.strip() == "True", first.stderr
    said = [ln for ln in first.stderr.splitlines() if "Warning" in ln]
    assert len(said) == 1 and jit.COMPILE_NOTE in said[0], first.stderr
    for pattern in ("*.nbi", "*.nbc"):
        files = list(tmp_path.rglob(pattern))
        assert files, f"numba wrote no {pattern} under NUMBA_CACHE_DIR"
        for f in files:
            f.write_bytes(b"garbage")
        second = run()
        assert second.stdout.strip() == "True", second.stderr
        assert "cache of the compiled entropy coders was unreadable" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and "using numpy" not in second.stderr, second.stderr
        third = run()
        assert third.stdout.strip() == "True" and "Warning" not in third.stderr, third.stderr


@needs_numba
def test_first_compile_is_announced_in_one_line(tmp_path, monkeypatch):
    """Unpacking a --best file in a fresh process whose numba cache folder is empty says, in one line on stderr,
    that the kernels compile; the next process, which loads them from that cache, says nothing; with
    MBZ_NO_JIT=1 nothing compiles and nothing is said."""
    import subprocess
    import sys

    import torch
    monkeypatch.setenv("MBZ_NO_JIT", "1")  # the file is written without compiling anything here
    path = tmp_path / "best.mbz"
    g = torch.Generator().manual_seed(0)
    mbz.save({"w": torch.randint(-7, 8, (64, 300), generator=g).float() * 0.5}, path, profile="best")
    cache, empty = tmp_path / "numba_cache", tmp_path / "unused_cache"
    cache.mkdir()
    empty.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def unpack(out, cache_dir, nojit="0"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), MBZ_NO_JIT=nojit, PYTHONPATH=root)
        r = subprocess.run([sys.executable, "-m", "mbz.cli", "unpack", str(path), "-o", str(tmp_path / out)],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and (tmp_path / out).exists(), r.stderr
        return r.stderr.splitlines()
    assert unpack("a.pt", cache) == [f"mbz unpack: warning: {jit.COMPILE_NOTE}"]
    assert list(cache.rglob("*.nbi")), "numba cached nothing"
    assert unpack("b.pt", cache) == []
    assert unpack("c.pt", empty, nojit="1") == [] and not list(empty.rglob("*.nbi"))


def test_slow_numpy_decode_is_announced_once(monkeypatch, tmp_path):
    """Without numba, a batch whose lanes take many numpy steps says so once (what to install), in one line
    on the CLI; with MBZ_NO_JIT set on purpose, or short lanes, nothing is said."""
    import warnings

    from mbz.cli import main
    monkeypatch.setattr(jit, "_loaded", False)  # as when numba is not installed
    monkeypatch.setattr(jit, "_noted", False)
    monkeypatch.delenv("MBZ_NO_JIT", raising=False)
    d = codes(4, True, 3000, np.random.default_rng(0))
    long_lanes, short_lanes = arans.encode(d, AransKind.INT, 4, True, 100, 20000), arans.encode(d, AransKind.INT, 4, True, 100, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arans.decode(short_lanes, len(d)) == d  # 30 steps per lane: quiet
    with pytest.warns(RuntimeWarning, match=r"with numpy, up to [\d,]+ steps per lane.*mbz\[fast\]"):
        assert arans.decode(long_lanes, len(d)) == d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arans.decode(long_lanes, len(d)) == d  # once per process
    monkeypatch.setattr(jit, "_noted", False)
    monkeypatch.setenv("MBZ_NO_JIT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arans.decode(long_lanes, len(d)) == d
    # the CLI prints it as one line
    monkeypatch.delenv("MBZ_NO_JIT")
    monkeypatch.setattr(jit, "SLOW_STEPS", 0)
    import torch
    path = tmp_path / "m.mbz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the writer's self-check decodes too
        mbz.save({"w": torch.randint(-7, 8, (64, 300)).float() * 0.5}, path, profile="best")
    monkeypatch.setattr(jit, "_noted", False)
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["verify", str(path), str(path)]) == 0
    lines = [ln for ln in err.getvalue().splitlines() if "warning" in ln]
    assert lines and all(ln.startswith("mbz verify: warning: decoding") for ln in lines), err.getvalue()


def test_inspect_decodes_entropy_coded_files_in_one_batch(monkeypatch, tmp_path):
    """summarize (mbz inspect) decodes a file with RANS / ARANS sections in one batch per filter, not tensor
    by tensor (the numpy path's cost is per lane-loop step, whatever the number of lanes)."""
    import torch

    from mbz.summary import summarize
    g = torch.Generator().manual_seed(0)
    sd = {f"l{i}.weight": torch.randint(-7, 8, (32, 200), generator=g).float() * 0.25 for i in range(4)}
    path = tmp_path / "b.mbz"
    mbz.save(sd, path, profile="best")
    with mbz.open(path) as r:
        filters = {s.filter for rec in r.layout.records for s in rec.sections} & {Filter.RANS, Filter.ARANS}
        assert filters, "the --best file holds no entropy-coded section"
        batches = []
        for mod in (rans, arans):
            real = mod.decode_many
            monkeypatch.setattr(mod, "decode_many", lambda items, real=real: batches.append(len(items)) or real(items))
        s = summarize(r)
    assert len(batches) == len(filters) and sum(batches) >= 4, batches
    assert all(t["sparsity"] >= 0 for t in s["tensors"])
