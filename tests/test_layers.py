"""The package's layers point one way: core -> models -> pipeline -> report -> cli.

Every `import` / `from ... import` in every module counts, including those inside
functions (a lazy import is still a dependency).  A module may import only modules
of its own layer or of a lower one, and the module graph has no cycle.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "mbz")
ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
LAYERS = ["core", "models", "pipeline", "report", "cli"]  # lowest first
EXAMPLES = [os.path.join(ROOT, "examples", f) for f in ("mobilenetv2_cifar10.mbz", "mobilenetv2_cifar10_200k.mbz")]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[1:]:
        return parts[1]
    return "core"


def modules() -> dict[str, str]:
    """{dotted module name: file path} of the package."""
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def imports_of(name: str, path: str, known: set) -> set:
    """Modules of the package that `name` imports (resolved, submodule-precise where it names one)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == "mbz" or t.startswith("mbz."):
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in known and t != name:
                    out.add(t)
    return out


def graph() -> dict[str, set]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_layers_point_one_way():
    bad = []
    for m, deps in graph().items():
        if m == "mbz":  # the facade: re-exports the core API and load_model
            assert all(layer_of(d) in ("core", "models") for d in deps), deps
            continue
        for d in deps:
            if d == "mbz":  # the facade re-exports models' load_model: a core module must not use it
                if layer_of(m) == "core":
                    bad.append(f"{m} (core) imports the package facade 'mbz', which imports mbz.models")
            elif LAYERS.index(layer_of(d)) > LAYERS.index(layer_of(m)):
                bad.append(f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def find_cycle(g: dict[str, set]) -> list | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if d == "mbz" or d == n:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_no_import_cycle():
    g = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph().items()}  # a package's own __init__
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_violations():
    """The two checks fail on a graph with an upward import and with a cycle."""
    assert find_cycle({"mbz.a": {"mbz.b"}, "mbz.b": {"mbz.a"}}) == ["mbz.a", "mbz.b", "mbz.a"]
    assert LAYERS.index(layer_of("mbz.pipeline.train")) > LAYERS.index(layer_of("mbz.models.load"))
    src = os.path.join(PKG, "reader.py")
    assert "mbz.container" in imports_of("mbz.reader", src, set(modules()))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_load_model_imports_no_training_code(path):
    code = ("import sys, mbz; m = mbz.load_model(sys.argv[1]); "
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('yaml', 'wandb', 'matplotlib', 'fpdf') "
            "or k.startswith(('mbz.pipeline', 'mbz.report', 'mbz.cli'))); print(type(m).__name__, bad)")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "MobileNetV2" and r.stdout.strip().endswith("[]"), r.stdout


def test_import_mbz_imports_no_heavy_dependency():
    """`import mbz` imports neither torch, torchvision, numba nor zstandard (module __getattr__); the public
    names and the submodules are still there on first use."""
    code = ("import sys, mbz\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'numba', 'zstandard') if m in sys.modules)\n"
            "print(heavy)\n"
            "from mbz import load_model, open\n"
            "assert mbz.open is open and mbz.api.open is open and mbz.load_model is load_model\n"
            "assert issubclass(mbz.TensorNotFoundError, mbz.MbzError) and 'save' in dir(mbz)\n"
            "assert mbz.codecs.bitpack.pack_codes and mbz.VERSION_MAJOR == 1\n"
            "try:\n    mbz.no_such_name\nexcept AttributeError:\n    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "ok"], r.stdout
