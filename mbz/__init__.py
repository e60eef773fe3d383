"""mbz: store compressed neural networks in honest, byte-exact files."""
from .api import MbzReader, load, load_model, open, save  # noqa: F401,A004
from .errors import (ChecksumError, CheckpointError, EncodeError, FormatError, LimitError,  # noqa: F401
                     MbzError, MismatchError, TruncatedError, VersionError)
from .spec import VERSION_MAJOR, VERSION_MINOR  # noqa: F401

__version__ = "0.1.0"
