"""Exclusive locks across processes on a file (``flock``): released if the holder dies, never
taken through a symlink. Without ``fcntl`` (not POSIX) there is no cross-process lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import HessbatchError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextlib.contextmanager
def hold(path: Path):
    """Hold the lock on ``path`` (created if missing) for the ``with`` block; another process
    asking for it waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | NOFOLLOW, 0o644)
    except OSError as e:
        raise HessbatchError(f"cannot open the lock file {path} ({e.strerror}); if it is a symlink, "
                             "remove it") from None
    with os.fdopen(fd, "a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def held(path: Path) -> bool:
    """Whether a process holds the lock on ``path`` now."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
