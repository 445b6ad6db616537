"""Writes that a reader never sees half done: a file replaced in one step, two folders exchanged in one
step; and the temporary names of writers, which tell whose process died and left one behind."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import socket
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves nothing behind


def atomic_torch_save(obj, path: Path) -> str:
    """``torch.save`` to ``path`` atomically; returns the SHA-256 of what it wrote."""
    import hashlib

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def tmp_name(key: str) -> str:
    """A publication's temporary folder: its host and process, so a later write can tell a dead one."""
    return f".{key}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def clean_stale(folder: Path) -> None:
    """Remove the temporary folders of publications whose process (on this host) is gone."""
    host = socket.gethostname()
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name[1:-4].split(".")
        if len(parts) < 4 or ".".join(parts[1:-2]) != host or not parts[-2].isdigit():
            continue
        try:
            os.kill(int(parts[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass
