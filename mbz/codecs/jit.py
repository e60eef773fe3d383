"""Whether the entropy stages run their compiled lane loops (`entropy_jit`, numba) or the numpy reference.

numba is optional (the `fast` extra): `kernels()` imports it on first use, never at `import mbz`.  The
numpy implementations in `rans.py` / `arans.py` stay the reference and the fallback; set the environment
variable ``MBZ_NO_JIT=1`` to force them.  Both give the same bytes and the same errors.
"""
from __future__ import annotations

import os

_loaded = None  # the entropy_jit module, False when numba cannot be imported, None before the first try


_OFF = ("", "0", "false", "no", "off")


def kernels():
    """The `entropy_jit` module, or None when numba is missing or cannot compile, MBZ_NO_JIT is set (to
    anything but 0 / false / no / off), or numba's own NUMBA_DISABLE_JIT is set (its interpreted kernels
    would be slower than numpy)."""
    global _loaded
    if os.environ.get("MBZ_NO_JIT", "0").strip().lower() not in _OFF:
        return None
    if os.environ.get("NUMBA_DISABLE_JIT", "0").strip().lower() not in _OFF:
        return None
    if _loaded is None:
        try:
            from . import entropy_jit
            _note_compiles(entropy_jit.__name__)
            _loaded = entropy_jit
        except ImportError:  # numba not installed: the numpy reference, silently (the `fast` extra is optional)
            _loaded = False
        except Exception as e:  # noqa: BLE001 -- numba broken, or no folder to cache its code in: say so once
            import warnings
            warnings.warn(f"mbz: compiled entropy coders unavailable ({type(e).__name__}: {str(e)[:160]}); "
                          f"RANS / ARANS sections decode with numpy, far slower", RuntimeWarning, stacklevel=2)
            _loaded = False
    return _loaded or None


COMPILE_NOTE = "compiling the entropy coder kernels (first use, 10-20 s; cached afterwards)"
_compile_noted = False
_listening = False


def _note_compiles(module: str) -> None:
    """Say once per process (RuntimeWarning COMPILE_NOTE, one line on the CLI) when numba starts compiling a
    kernel of `module`: a compile happens only when numba's on-disk cache (``__pycache__`` beside the module,
    or NUMBA_CACHE_DIR) has no valid entry for it, so a cached run stays silent.

    Source: numba's event API (``numba.core.event``): its dispatcher fires "numba:compile" after its cache
    lookup missed, just before compiling.  A numba without that API compiles silently."""
    global _listening
    if _listening:
        return
    try:
        from numba.core import event
    except ImportError:  # pragma: no cover - a numba without the event API
        return

    class _Note(event.Listener):
        def on_start(self, ev):
            global _compile_noted
            disp = (getattr(ev, "data", None) or {}).get("dispatcher")
            if _compile_noted or getattr(getattr(disp, "py_func", None), "__module__", None) != module:
                return
            _compile_noted = True
            import warnings
            try:
                # one line naming mbz, not a frame inside numba's event dispatch
                warnings.warn_explicit(COMPILE_NOTE, RuntimeWarning, "mbz", 0, module="mbz.codecs.jit")
            except Exception:  # noqa: BLE001 -- warnings turned into errors: a note never fails the compile
                pass

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Note())
    _listening = True


def _from_numba(e: BaseException) -> bool:
    """The exception was raised inside numba (loading a cache file, compiling), not by mbz's own code."""
    if type(e).__module__.split(".")[0] == "numba":
        return True
    tb = e.__traceback__
    while tb is not None:
        if f"{os.sep}numba{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def compiled(call, reference):
    """call(kernels) when the compiled kernels are available, else reference() (the numpy path).

    A failure inside numba itself (a corrupt or unreadable cache file, a compiler error) empties numba's
    cache index of these kernels (so that they compile again and re-save it) and retries once; if that fails
    too, it is reported once (RuntimeWarning) and the compiled path is off for the process: reference()
    gives the same result.  Errors of mbz's own code (FormatError for a malformed section, ...) propagate."""
    global _loaded, _noted
    jk = kernels()
    if jk is None:
        return reference()
    try:
        return call(jk)
    except Exception as e:  # noqa: BLE001 -- sorted below: numba's failures are repaired or fall back
        if not _from_numba(e):
            raise
        first = e
    import warnings
    if _flush_caches(jk):
        try:
            out = call(jk)
        except Exception as e:  # noqa: BLE001
            if not _from_numba(e):
                raise
        else:
            warnings.warn(f"numba's cache of the compiled entropy coders was unreadable ({type(first).__name__}: "
                          f"{str(first)[:120]}); it was emptied and the coders compiled again", RuntimeWarning,
                          stacklevel=2)
            return out
    warnings.warn(f"compiled entropy coders failed ({type(first).__name__}: {str(first)[:160]}); using numpy "
                  f"from now on, far slower (to recompile, delete numba's cache files entropy_jit.*.nbi / .nbc, "
                  f"beside mbz/codecs/entropy_jit.py or under NUMBA_CACHE_DIR)", RuntimeWarning, stacklevel=2)
    _loaded = False
    _noted = True  # the slow-numpy note would tell to install numba, which is installed
    return reference()


def _flush_caches(jk) -> bool:
    """Empty the numba cache index of every kernel of `jk` (numba's own Cache.flush); False if none could be."""
    done = False
    for f in list(getattr(jk, "__dict__", {}).values()):
        cache = getattr(f, "_cache", None)
        if cache is not None and callable(getattr(cache, "flush", None)):
            try:
                cache.flush()
                done = True
            except Exception:  # noqa: BLE001 -- an unwritable cache folder: nothing to repair here
                pass
    return done


SLOW_STEPS = 8192  # numpy lane-loop steps above which decoding takes seconds (~0.1-1 ms per step)
_noted = False


def note_numpy(steps: int, sections: int) -> None:
    """Say once per process (RuntimeWarning) that a batch of `sections` entropy-coded sections decodes with
    numpy in about `steps` lane-loop steps, when that is slow and numba is not installed (MBZ_NO_JIT unset)."""
    global _noted
    if _noted or steps <= SLOW_STEPS or os.environ.get("MBZ_NO_JIT", "0").strip().lower() not in _OFF:
        return
    _noted = True
    import warnings
    warnings.warn(f"decoding {sections} entropy-coded section(s) with numpy, up to {steps:,} steps per lane: "
                  f"this takes seconds to minutes; with numba (pip install 'mbz[fast]') it takes milliseconds",
                  RuntimeWarning, stacklevel=3)


PARALLEL_MIN = 1 << 16  # elements: a batch of sections smaller than this decodes on the calling thread


def map_sections(fn, items: list, sizes: list) -> list:
    """[fn(x) for x in items], on up to min(cpu_count, 8) threads when the batch holds PARALLEL_MIN elements
    or more (`sizes`: elements per item; the compiled kernels release the GIL); largest first."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(items) < 2 or sum(sizes) < PARALLEL_MIN:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor
    order = sorted(range(len(items)), key=lambda i: -sizes[i])
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        done = dict(zip(order, pool.map(lambda i: fn(items[i]), order)))
    return [done[i] for i in range(len(items))]
