"""Reading files from strangers: regular files only, with a size limit, never blocking.

Every loader of adverse (data files, images, ``results.json``, resume state, Hugging Face folders) reads through
these functions. A FIFO, a device, a socket or a folder is refused before any byte is read — opening a FIFO
for reading would block forever — by opening the path non-blocking and checking it with ``fstat``. Errors are
``error`` (an :class:`~adverse.errors.AdverseError` subclass) naming the file, what it was meant to be and the fix.

This module imports nothing from the package but :mod:`adverse.errors`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import AdverseError, InputError


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def open_regular(path: str | os.PathLike[str], what: str, limit: int | None = None, *,
                 limit_hint: str = "", error: type[AdverseError] = InputError) -> BinaryIO:
    """``path`` opened for binary reading after checking it is a regular file of at most ``limit`` bytes
    (``limit_hint`` ends the message of a file over the limit: how to raise it)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"no such file: {p} (the {what})") from None
    except OSError as e:
        raise error(f"cannot open the {what} {p}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"the {what} {p} is {_kind(st.st_mode)}; adverse reads regular files only")
        if limit is not None and st.st_size > limit:
            raise error(f"the {what} {p} has {st.st_size:,} bytes, more than the limit of {limit:,}"
                        + (limit_hint if limit_hint[:1] in ("", ";", ",") else f" {limit_hint}"))
        if hasattr(os, "O_NONBLOCK"):  # regular files ignore it, but say what we mean
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], what: str, limit: int, *, limit_hint: str = "",
                 error: type[AdverseError] = InputError) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`), refusing a file that grows past ``limit`` while read."""
    with open_regular(path, what, limit, limit_hint=limit_hint, error=error) as f:
        # read what the file holds (+1 byte to see growth), not a buffer of the limit's size: f.read(limit + 1)
        # allocates limit + 1 bytes up front, gigabytes per small image
        want, parts, total = os.fstat(f.fileno()).st_size + 1, [], 0
        while total <= limit:
            chunk = f.read(min(want, limit + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            want = 1 << 20
        raw = b"".join(parts)
    if len(raw) > limit:
        raise error(f"the {what} {path} grew past the limit of {limit:,} bytes while it was read")
    return raw


def check_regular(path: str | os.PathLike[str], what: str, *, error: type[AdverseError] = InputError) -> None:
    """Refuse ``path`` unless it is a regular file (for files another library opens, e.g. weights)."""
    open_regular(path, what, error=error).close()
