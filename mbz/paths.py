"""Input paths checked once, before anything is read: one PathError line naming the path and what was expected."""
from __future__ import annotations

import errno
import os

from .errors import path_error


def open_input(path, what: str = "input"):
    """`path` opened for binary reading (the caller closes it).

    `what` names what was expected there (".mbz file", "checkpoint") for the message.  Raises
    PathNotFoundError (nothing at `path`), PathIsDirectoryError (a folder), PathPermissionError (not
    readable) or PathError (any other OSError of open): MbzError subclasses that are also the matching
    built-in OSError; TypeError when `path` is not a str, bytes or os.PathLike (an int would open a file
    descriptor)."""
    if isinstance(path, (int, bool)) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a path (str, bytes or os.PathLike) to a {what}, got {type(path).__name__}")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise path_error(errno.ENOENT, f"no such file ({what})", p)
    if os.path.isdir(p):
        raise path_error(errno.EISDIR, f"is a directory, expected a file ({what})", p)
    try:
        return open(p, "rb")
    except OSError as e:
        why = "not readable" if e.errno in (errno.EACCES, errno.EPERM) else (e.strerror or type(e).__name__)
        raise path_error(e.errno, f"{why} ({what})", p) from None
