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


class TensorNotFoundError(MbzError, KeyError):
    """No tensor of that name in the file (also a KeyError, as for a missing key of any mapping)."""

    def __str__(self):  # KeyError's str() would quote the whole message
        return str(self.args[0]) if self.args else ""


class PathError(MbzError, OSError):
    """A path names nothing mbz can read or write: missing, a folder where a file is expected, unreadable.

    Also an OSError carrying errno, strerror and filename; the subclasses below derive from the matching
    built-in too, so `except FileNotFoundError` (or IsADirectoryError, PermissionError, FileExistsError) keeps
    working.  Its message is one line: "PATH: what is wrong (what was expected)"."""

    def __str__(self):
        if self.filename is None:
            return str(self.strerror)
        return f"{self.filename or repr(self.filename)}: {self.strerror}"   # an empty path shows as ''


class PathNotFoundError(PathError, FileNotFoundError):
    """No file or folder at the path."""


class PathIsDirectoryError(PathError, IsADirectoryError):
    """A folder where a file is expected."""


class PathPermissionError(PathError, PermissionError):
    """The file exists but may not be read (or written)."""


class PathExistsError(PathError, FileExistsError):
    """Something at the path may not be replaced."""


_PATH_ERRORS = {2: PathNotFoundError, 21: PathIsDirectoryError, 13: PathPermissionError, 1: PathPermissionError,
                17: PathExistsError}


def path_error(errno: int | None, message: str, path) -> PathError:
    """The PathError subclass for `errno` (ENOENT, EISDIR, EACCES / EPERM, EEXIST; PathError for others),
    with `message` (what is wrong, what was expected) and `path` as its filename."""
    import os
    return _PATH_ERRORS.get(errno, PathError)(errno, message, os.fspath(path))
