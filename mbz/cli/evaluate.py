"""`mbz eval`: top-1 of a packed model, rebuilt with mbz.load_model, beside its size figures."""
from __future__ import annotations

import sys
import time

from .common import add_data, device_of, input_file, print_json, show_progress


def _bar(enabled: bool, log: bool = False):
    """(tqdm bar, progress callback) on a terminal; with `log` and no terminal, a line on stderr at each
    quarter of the images (a long evaluation written to a log file shows it is running)."""
    if not enabled:
        if not log:
            return None, None
        t0, shown = time.time(), [0]

        def line(done, total):
            q = 4 * done // max(total, 1)
            if q > shown[0] and done < total:
                shown[0] = q
                print(f"eval: {done:,d} / {total:,d} images ({100 * done // total}%), {time.time() - t0:.0f} s",
                      file=sys.stderr, flush=True)
        return None, line
    from tqdm import tqdm
    bar = tqdm(total=0, unit="img", desc="eval", leave=False)

    def tick(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
    return bar, tick


def _import_user_module(name: str):
    """import `name` from the installed packages, else its top-level package from the working folder (the
    `mbz` console script, unlike `python -m`, does not put the working folder on sys.path; sys.path is left
    as it is)."""
    import importlib
    import importlib.machinery
    import importlib.util
    import os
    top = name.partition(".")[0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != top or top in sys.modules:
            raise
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is None:
            raise
    mod = importlib.util.module_from_spec(spec)
    sys.modules[top] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(name)


def user_model(spec: str):
    """The module `package.module:builder` builds (called with no arguments), imported because the user named it
    on the command line; it must be importable (from the working folder, installed, or on PYTHONPATH).  UsageError otherwise."""
    from torch import nn

    from ..errors import UsageError
    mod_name, colon, attr = spec.partition(":")
    if not colon or not mod_name or not attr:
        raise UsageError(f"--model {spec!r}: expected package.module:builder")
    try:
        mod = _import_user_module(mod_name)
    except Exception as e:  # noqa: BLE001 - the user's module may fail in any way; say how, in one line
        raise UsageError(f"--model {spec}: cannot import {mod_name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise UsageError(f"--model {spec}: {mod_name} has no callable {attr}")
    try:
        m = fn()
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--model {spec}: {attr}() failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(m, nn.Module):
        raise UsageError(f"--model {spec}: {attr}() returned a {type(m).__name__}, not a torch.nn.Module")
    return m


def cmd_eval(a) -> int:
    from .. import api
    from ..models import load_model
    from ..errors import UsageError
    from ..pipeline.data import load_dataset
    from ..summary import summarize
    input_file(a.file, ".mbz file")
    if a.limit < 0:
        raise UsageError(f"--limit {a.limit}: must be >= 1 (or 0: every test image)")
    a.device = str(device_of(a.device))
    with api.open(a.file) as r:
        r.check_checksums()  # a corrupt file is refused before the model is built (seconds)
        s = summarize(r, decode=False)
        arch = r.metadata.get("arch", {}) if isinstance(r.metadata.get("arch"), dict) else {}
    from ..pipeline.data import check_dataset
    check_dataset(a.data, "test")  # a missing dataset is said before the model is built (seconds)
    model = load_model(a.file, model=user_model(a.model) if a.model else None)  # fail fast before the data is read
    # on a terminal, say what is being read; in a log, say it once it has been (an error stays one line)
    if show_progress(a.quiet):
        print(f"reading {a.data} (test split) ...", file=sys.stderr, flush=True)
    t0 = time.time()
    ds = load_dataset(a.data, "test")
    n_read, read_from = len(ds), ds.source
    if a.limit:
        ds = ds.subset(min(a.limit, len(ds)))
    if not a.quiet and not show_progress(a.quiet):
        print(f"read {n_read:,d} test images of {read_from} in {time.time() - t0:.0f} s"
              + (f"; evaluating {len(ds):,d} of them (--limit)" if len(ds) < n_read else ""), file=sys.stderr, flush=True)
    bar, tick = _bar(show_progress(a.quiet), log=not a.quiet)
    try:
        from ..pipeline.evaluate import evaluate_file
        ev = evaluate_file(a.file, ds, a.device, progress=tick, model=model)
    finally:
        if bar is not None:
            bar.close()
    abits = 32 if a.model else arch.get("act_bits", 32)  # validated by load_model; --model: not the file's arch
    out = {"file": a.file, "data": ds.source, "split": "test", "n": ev["n"], "top1": ev["top1"], "file_bytes": s["file_bytes"],
           "file_mb": s["file_mb"], "model_compression_ratio": s["model_compression_ratio"],
           "weight_compression_ratio": s["weight_compression_ratio"],
           "input_bytes": s["input_bytes"], "input_compression_ratio": s["input_compression_ratio"],
           "activation_bits": abits, "activation_compression_ratio": 32 / abits,
           "categories": s["categories"]}
    if a.json:
        print_json(out)
        return 0
    print(f"{a.file}: top-1 {ev['top1']:.2f}% on {ev['n']} images of {ds.source} (test split)")
    print(f"file {s['file_bytes']:,d} bytes ({s['file_mb']:.4f} MB, every byte counted); "
          f"model CR {s['model_compression_ratio']:.2f}x, weight CR {s['weight_compression_ratio']:.2f}x, "
          + (f"activations {abits}-bit = {32 / abits:.1f}x vs fp32 (per-tensor quantizers in the file's metadata)"
           if abits < 32 else "activations fp32 (no activation quantizers in the file)"))
    print(f"vs the input checkpoint's own dtypes ({s['input_bytes']:,d} B, {s['input_bytes_source']}): "
          f"{s['input_compression_ratio']:.2f}x")
    print("bytes by category: " + ", ".join(f"{k} {v:,d}" for k, v in s["categories"].items() if v))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="top-1 of a packed model (rebuilt with mbz.load_model) and its size figures",
                       description="Rebuild the model a .mbz file describes (its 'arch' metadata, or your own with --model), evaluate top-1 on "
                                   "the test split of --data with the preprocessing the file records, and print it "
                                   "beside the file's bytes and compression ratios. CIFAR-10's 10,000 test images take "
                                   "about a minute on 2 CPU cores.")
    p.add_argument("file", help=".mbz file with 'arch' metadata (mbz pack --arch), or any .mbz with --model")
    p.add_argument("--model", metavar="PACKAGE.MODULE:BUILDER",
                   help="your own network: import PACKAGE.MODULE (from the working folder or the installed packages), "
                        "call BUILDER() and fill the module it returns with the file's tensors (names wrapped by "
                        "DataParallel 'module.' or torch.compile '_orig_mod.' match); the file's 'arch' is then not used")
    add_data(p)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto (CUDA when present)")
    p.add_argument("--limit", type=int, default=0, help="evaluate on a random subset of N test images (default 0: all of them)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_eval)
