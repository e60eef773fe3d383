"""One base error for everything mbz refuses; subclasses say what kind of wrong."""


class MbzError(Exception):
    """Base class of every error mbz raises on bad input or bad files."""


class FormatError(MbzError):
    """The bytes are not a well-formed .mbz file (bad magic, bad field, bad layout)."""


class TruncatedError(FormatError):
    """The file is shorter than its own header says."""


class VersionError(FormatError):
    """The file's major version is newer than this reader understands."""


class ChecksumError(FormatError):
    """Stored bytes do not match their CRC-32: the file is corrupt."""


class LimitError(FormatError):
    """A field asks for more memory than the file's size justifies."""


class EncodeError(MbzError):
    """A tensor or policy cannot be written as asked."""


class CheckpointError(MbzError):
    """An input checkpoint cannot be read as a state_dict."""


class MismatchError(MbzError):
    """verify: decoded tensors differ from the checkpoint."""


class DataError(MbzError):
    """A dataset spec (--data, MBZ_DATA) names nothing readable."""


class UsageError(MbzError):
    """A command's arguments cannot be carried out as given (e.g. an output that exists without --force)."""
