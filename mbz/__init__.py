"""mbz: store compressed neural networks in honest, byte-exact files.

The public API: open / load / load_checkpoint (the core), save and load_model (mbz.models: save records
the architecture).

`import mbz` imports neither torch nor torchvision: the errors and the format version are defined here, the
rest is imported on first use (PEP 562 module __getattr__), so `mbz.open` imports torch (about 3 s) and
`mbz.load_model` of a torchvision-built architecture imports torchvision too.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .errors import (ChecksumError, CheckpointError, EncodeError, FormatError, LimitError,  # noqa: F401
                     MbzError, MismatchError, PathError, PathExistsError, PathIsDirectoryError, PathNotFoundError,
                     PathPermissionError, TensorNotFoundError, TruncatedError, VersionError)
from .spec import VERSION_MAJOR, VERSION_MINOR  # noqa: F401

__version__ = "0.2.0"

# public name -> the module (relative to mbz) that defines it, imported when the name is first used
_LAZY = {"MbzReader": "api", "load": "api", "load_checkpoint": "api", "open": "api",
         "load_model": "models.load", "save": "models.load"}

# `open` is left out of __all__ so that `from mbz import *` never shadows the built-in open (use mbz.open)
__all__ = ["MbzReader", "load", "load_checkpoint", "load_model", "save", "VERSION_MAJOR", "VERSION_MINOR",
           "ChecksumError", "CheckpointError", "EncodeError", "FormatError", "LimitError", "MbzError",
           "MismatchError", "PathError", "PathExistsError", "PathIsDirectoryError", "PathNotFoundError",
           "PathPermissionError", "TensorNotFoundError", "TruncatedError", "VersionError"]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .api import MbzReader, load, load_checkpoint, open  # noqa: F401,A004
    from .models.load import load_model, save  # noqa: F401


def __getattr__(name: str):
    """A public name of _LAZY (its module imported now), or a submodule (mbz.api, mbz.codecs, ...: `import mbz`
    used to import them all)."""
    mod = _LAZY.get(name)
    if mod is not None:
        value = getattr(importlib.import_module(f".{mod}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
