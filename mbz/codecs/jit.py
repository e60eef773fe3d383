"""Whether the entropy stages run their compiled lane loops (`entropy_jit`, numba) or the numpy reference.

numba is optional (the `fast` extra): `kernels()` imports it on first use, never at `import mbz`.  The
numpy implementations in `rans.py` / `arans.py` stay the reference and the fallback; set the environment
variable ``MBZ_NO_JIT=1`` to force them.  Both give the same bytes and the same errors.
"""
from __future__ import annotations

import os

_loaded = None  # the entropy_jit module, False when numba cannot be imported, None before the first try


def kernels():
    """The `entropy_jit` module, or None when numba is missing or MBZ_NO_JIT is set (to anything but 0)."""
    global _loaded
    if os.environ.get("MBZ_NO_JIT", "0") not in ("", "0"):
        return None
    if _loaded is None:
        try:
            from . import entropy_jit
            _loaded = entropy_jit
        except Exception:  # noqa: BLE001 -- numba missing or broken (e.g. built for another numpy): numpy then
            _loaded = False
    return _loaded or None


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
