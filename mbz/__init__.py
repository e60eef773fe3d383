"""mbz: store compressed neural networks in honest, byte-exact files.

The public API: open / load / load_checkpoint (the core), save and load_model (mbz.models: save records
the architecture).
"""
from .api import MbzReader, load, load_checkpoint, open  # noqa: F401,A004
from .errors import (ChecksumError, CheckpointError, EncodeError, FormatError, LimitError,  # noqa: F401
                     MbzError, MismatchError, PathError, PathExistsError, PathIsDirectoryError, PathNotFoundError,
                     PathPermissionError, TensorNotFoundError, TruncatedError, VersionError)
from .models.load import load_model, save  # noqa: F401
from .spec import VERSION_MAJOR, VERSION_MINOR  # noqa: F401

__version__ = "0.2.0"
