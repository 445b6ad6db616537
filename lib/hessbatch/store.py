"""A result store keyed by a stable hash of each computation's full configuration.

Layout: ``<root>/<kind>/<key>/`` holds ``config.json``, the result files, and
``MANIFEST.json`` (size and SHA-256 of every file). An entry is built in a temporary
folder beside its final place and renamed into place in one step, so a reader sees a
whole entry or none. Reads check the manifest, every file's size and the SHA-256 of the
small files (up to ``HASHED_ON_READ`` bytes: results, tables); weight files are hashed
when they are loaded (``Entry.torch``), by ``Store.verify`` (``hessbatch verify``), on
export, and with ``get(..., verify=True)``, so that listing a store of hundreds of C1 runs
does not read every weight file. An entry whose
manifest is missing or disagrees with its files is treated as absent and recomputed. Work in progress (resumable checkpoints) lives in
``<root>/<kind>/<key>.work/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import HessbatchError, NotInStore, check

SCHEMA = 1
RESULTS_ENV = "HESSBATCH_RESULTS"
MANIFEST = "MANIFEST.json"
HASHED_ON_READ = 1 << 20


KEY = re.compile(r"[0-9a-f]{1,16}")


def results_root(root: str | os.PathLike | None = None) -> Path:
    """The results folder: the argument, else ``$HESSBATCH_RESULTS``, else ``./results``. An empty
    argument is an error (an unset variable in a script), and so is a path that is not a folder."""
    if root is not None:
        check(str(root).strip() != "", "the results folder must not be empty (omit --results for ./results)")
    path = Path(root or os.environ.get(RESULTS_ENV) or "results").expanduser()
    check(not path.exists() or path.is_dir(), f"the results folder {path} is not a folder")
    return path


def check_key(key: str, what: str = "run") -> str:
    """A store key or a unique prefix of one: 1 to 16 hex digits, so it names a folder inside the store."""
    check(isinstance(key, str) and KEY.fullmatch(key) is not None,
          f"{what} {key!r} is not a store key (1 to 16 hex digits, as `hessbatch ls` lists them)")
    return key


def _tmp_name(key: str) -> str:
    """A publication's temporary folder: its host and process, so a later write can tell a dead one."""
    return f".{key}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _clean_stale(folder: Path) -> None:
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


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON-serializable in a configuration: {o!r}")


def config_key(kind: str, config: dict) -> str:
    """16 hex digits of SHA-256 over the kind, the schema version and the canonical config."""
    blob = canonical_json({"kind": kind, "schema": SCHEMA, "config": config})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    import torch

    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class Entry:
    """One complete result: a folder with its configuration and files."""

    path: Path
    kind: str
    key: str

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def json(self, name: str = "result.json") -> dict:
        return json.loads((self.path / name).read_text())

    def csv(self, name: str):
        import pandas as pd

        return pd.read_csv(self.path / name)

    def torch(self, name: str = "weights.pt"):
        """A tensor file of the entry, its SHA-256 checked against the manifest as it is read."""
        blob = (self.path / name).read_bytes()
        expected = json.loads((self.path / MANIFEST).read_text())["files"].get(name, {}).get("sha256")
        if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
            raise HessbatchError(f"{self.path / name} is corrupt (its SHA-256 differs from the manifest's); "
                                 "`hessbatch verify` lists such entries, and they are recomputed once removed")
        import torch

        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)

    def files(self) -> list[str]:
        return sorted(json.loads((self.path / MANIFEST).read_text())["files"])

    def omitted(self) -> list[str]:
        """Files of the original entry left out of an export (see ``Store.export``)."""
        return sorted(json.loads((self.path / MANIFEST).read_text()).get("omitted", {}))


class Store:
    """Results on disk, one entry per (kind, configuration). ``written`` counts the entries this
    object wrote (not those it found). A ``read_only`` store computes nothing: asked for a missing
    result, it raises :class:`~hessbatch.errors.NotInStore`."""

    def __init__(self, root: str | os.PathLike | None = None, read_only: bool = False):
        self.root = results_root(root)
        self.read_only = read_only
        self.written = 0

    def __repr__(self):
        return f"Store({str(self.root)!r})"

    def key(self, kind: str, config: dict) -> str:
        return config_key(kind, config)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / check_key(key, "key")

    def work_dir(self, kind: str, key: str) -> Path:
        """Folder for resumable work in progress on (kind, key)."""
        return self.root / kind / f"{key}.work"

    @contextlib.contextmanager
    def lock(self, kind: str, key: str):
        """Exclusive lock on computing (kind, key) across processes (``flock``; released if the
        holder dies). Another process asking for it waits."""
        path = self.root / kind / f".{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
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

    def exported(self) -> bool:
        """Whether this store is an export without weights (``Store.export``)."""
        return any(e.omitted() for e in self.entries("train"))

    def get(self, kind: str, config: dict | None = None, key: str | None = None,
            verify: bool = False) -> Entry | None:
        """The complete entry for this configuration (or key), or ``None``; ``verify`` also checks
        every file's SHA-256."""
        key = key or self.key(kind, config)
        path = self.path(kind, key)
        return Entry(path, kind, key) if _valid(path, verify) else None

    def verify(self, kind: str | None = None) -> tuple[int, list[Entry]]:
        """Check the SHA-256 of every file of every entry: the number of entries checked and those
        whose files disagree with their manifest (they are treated as absent from now on)."""
        entries = self.entries(kind)
        return len(entries), [e for e in entries if not _valid(e.path, verify=True)]

    @contextlib.contextmanager
    def writer(self, kind: str, config: dict):
        """Yield a temporary folder to write result files into; publish it on success.

        If a complete entry for the same configuration appears meanwhile (another
        worker), it wins and this one is discarded.
        """
        key = self.key(kind, config)
        if self.read_only:
            raise NotInStore(f"no {kind} entry {key} in the read-only store at {self.root}")
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(final.parent)
        tmp = final.parent / _tmp_name(key)
        tmp.mkdir()
        try:
            yield tmp
            (tmp / "config.json").write_text(json.dumps(
                {"kind": kind, "key": key, "schema": SCHEMA, "config": json.loads(canonical_json(config))}, indent=2))
            files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=2))
            self._publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists():
            if _valid(final, verify=True):
                return
            trash = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.trash"
            with contextlib.suppress(OSError):
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
            self.written += 1
        except OSError:
            if not _valid(final, verify=True):
                raise

    def cached(self, kind: str, config: dict, compute) -> Entry:
        """The entry for (kind, config), computed once: ``compute()`` returns ``(files, meta)``; a file
        is written as CSV (a DataFrame), JSON (a name ending in ``.json``) or with ``torch.save``;
        ``meta`` goes to ``result.json`` with the compute time."""
        if (entry := self.get(kind, config)) is not None:
            return entry
        if self.read_only:
            raise NotInStore(f"no {kind} entry {self.key(kind, config)} in the read-only store at {self.root}")
        key = self.key(kind, config)
        folder = self.root / kind
        fresh = not folder.exists()
        with self.lock(kind, key):  # another process computing it: wait, then read it
            if (entry := self.get(kind, config)) is not None:
                return entry
            try:
                return self._compute(kind, config, compute)
            except BaseException:  # bad input found while computing: leave nothing behind
                (folder / f".{key}.lock").unlink(missing_ok=True)
                if fresh:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                raise

    def _compute(self, kind: str, config: dict, compute) -> Entry:
        t0 = time.perf_counter()
        try:
            files, meta = compute()
        except HessbatchError as e:
            if self.exported():
                raise HessbatchError(f"this {kind} result is not in {self.root}, a store exported without weights, "
                                     f"and computing it failed: {e} (`hessbatch compute` on the full store adds it)"
                                     ) from None
            raise
        meta["time_s"] = time.perf_counter() - t0
        import pandas as pd
        import torch

        with self.writer(kind, config) as tmp:
            for name, obj in files.items():
                if isinstance(obj, pd.DataFrame):
                    obj.to_csv(tmp / name, index=False)
                elif name.endswith(".json"):
                    (tmp / name).write_text(json.dumps(obj, default=float))
                else:
                    torch.save(obj, tmp / name)
            (tmp / "result.json").write_text(json.dumps(meta, indent=2, default=float))
        return self.get(kind, config)

    def load_config(self, kind: str, key: str) -> dict:
        return json.loads((self.path(kind, key) / "config.json").read_text())["config"]

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every complete entry, optionally of one kind."""
        return [Entry(p, k, p.name) for k, p in self._folders(kind) if _valid(p)]

    def invalid(self, kind: str | None = None) -> list[Path]:
        """Entry folders that are not complete entries (a file missing, of the wrong size or hash):
        they count as absent and are computed again when asked for."""
        return [p for _, p in self._folders(kind) if not _valid(p)]

    def _folders(self, kind: str | None) -> list[tuple[str, Path]]:
        if not self.root.is_dir():
            return []
        kinds = [kind] if kind else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        return [(k, p) for k in kinds if (self.root / k).is_dir() for p in sorted((self.root / k).iterdir())
                if p.is_dir() and not p.name.startswith(".") and "." not in p.name]


    def export(self, dest: str | os.PathLike, omit: tuple[str, ...] = ("*.pt", "probs.csv")) -> tuple[int, int]:
        """Copy every complete entry to the store at ``dest``, leaving out files matching ``omit``
        (weights, and the per-sample test predictions that chapter 8 summarizes: a tidy store small
        enough to commit, from which the book renders). Left-out files stay listed in the manifest
        under ``omitted``. Entries whose files fail their SHA-256 are not copied. Returns (entries,
        bytes) written."""
        import fnmatch

        target = Store(dest)
        here, there = self.root.resolve(), target.root.resolve()
        check(there != here and here not in there.parents,
              f"cannot export the store at {self.root} into {dest}: that is the store itself or a folder inside it "
              "(an export leaves out the weights, so it would delete them)")
        n, size = 0, 0
        for e in self.entries():
            if not _valid(e.path, verify=True):
                continue
            final = target.path(e.kind, e.key)
            manifest = json.loads((e.path / MANIFEST).read_text())
            keep = {f: m for f, m in manifest["files"].items() if not any(fnmatch.fnmatch(f, o) for o in omit)}
            gone = {f: m for f, m in manifest["files"].items() if f not in keep}
            gone.update(manifest.get("omitted", {}))
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / _tmp_name(e.key)
            tmp.mkdir()
            try:
                for f in dict.fromkeys([*keep, "config.json"]):
                    shutil.copy2(e.path / f, tmp / f)
                    size += (tmp / f).stat().st_size
                (tmp / MANIFEST).write_text(json.dumps({"key": e.key, "files": keep, "omitted": gone}, indent=2))
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        for extra in ("_timings.yml",):
            if (self.root / extra).is_file():
                target.root.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.root / extra, target.root / extra)
        return n, size


def _valid(path: Path, verify: bool = False) -> bool:
    """Whether ``path`` is a complete entry whose files have the sizes and the SHA-256 sums its
    manifest lists (the sums of files over ``HASHED_ON_READ`` bytes only with ``verify``)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if "config.json" not in manifest["files"]:
            return False
        for name, meta in manifest["files"].items():
            f = path / name
            size = f.stat().st_size
            if size != meta["size"] or ((verify or size <= HASHED_ON_READ) and _sha256(f) != meta["sha256"]):
                return False
        return (path / "config.json").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False
