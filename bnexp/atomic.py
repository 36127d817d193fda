"""Atomic file writes, the one way bnexp writes a file that must never be seen half-written.

Run directories (bnexp.results), the reproduce report (bnexp.htmlreport), downloads
(bnexp.data.fetch) and the decompressed dataset cache (bnexp.data.sources) all write through
``write_atomic``: the bytes go to a temporary file in the target's own directory (so the final
rename stays on one file system), are flushed and fsynced, optionally checked, given the user's
default permissions (``mkstemp`` makes 0600) and renamed over the target with ``os.replace``. A
reader sees the old file or the new one, never a mix; on any error (a failed check, a full disk,
an interrupt) the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give a new file: 0o666 minus umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(
    path: Path | str,
    write: Callable[[BinaryIO], object],
    *,
    check: Callable[[Path], object] | None = None,
    suffix: str = ".tmp",
) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file next to it, ``check(tmp)``
    (if given) may raise to reject the bytes, then the file replaces ``path``. Returns ``path``.
    Parent directories are created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as e:  # a read-only or full file system: say which file could not be made
        e.filename = e.filename or str(path)
        raise
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)
        raise
    return path


def _fsync(fd: int) -> None:
    """os.fsync: where a full disk (ENOSPC) or a failing one reports a write at the latest; the
    fault tests put their ENOSPC/EROFS here."""
    os.fsync(fd)


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
