"""A result store keyed by a stable hash of each computation's full configuration.

Layout: ``<root>/<kind>/<key>/`` holds ``config.json``, the result files, and
``MANIFEST.json`` (size and SHA-256 of every file). An entry is built in a temporary
folder beside its final place and renamed into place in one step, so a reader sees a
whole entry or none; a newer entry replaces an older one by an atomic exchange of the two
folders. Every path is built from the store's root and validated names (a kind is one lower-case
word, a key hex digits, a manifest's file name one path component), and no symlink inside the
store is followed out of it. Reads check the manifest, every file's size and the SHA-256 of the
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
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_torch_save, atomic_write_bytes, clean_stale, exchange_folders, tmp_name  # noqa: F401
from . import locks
from .errors import HessbatchError, NotInStore, check

SCHEMA = 1
RESULTS_ENV = "HESSBATCH_RESULTS"
MANIFEST = "MANIFEST.json"
HASHED_ON_READ = 1 << 20


KEY = re.compile(r"[0-9a-f]{1,16}")
KIND = re.compile(r"[a-z][a-z0-9-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def results_root(root: str | os.PathLike | None = None) -> Path:
    """The results folder: the argument, else ``$HESSBATCH_RESULTS``, else ``./results``. An empty
    argument is an error (an unset variable in a script), and so is a path that is not a folder."""
    if root is not None:
        check(str(root).strip() != "", "the results folder must not be empty (omit --results for ./results)")
    from .schema import env, folder

    return folder(root or env(RESULTS_ENV) or "results", "the results folder")


def check_key(key: str, what: str = "run") -> str:
    """A store key or a unique prefix of one: 1 to 16 hex digits, so it names a folder inside the store."""
    check(isinstance(key, str) and KEY.fullmatch(key) is not None,
          f"{what} {key!r} is not a store key (1 to 16 hex digits, as `hessbatch ls` lists them)")
    return key


def check_kind(kind: str) -> str:
    """A kind of entry: one lower-case word (letters, digits, hyphens), so it names a folder inside the store."""
    check(isinstance(kind, str) and KIND.fullmatch(kind) is not None,
          f"{kind!r} is not a kind of entry (a lower-case word such as train or spectrum, as `hessbatch ls` lists them)")
    return kind


def _inside(path: Path, root: Path) -> bool:
    real, top = path.resolve(), root.resolve()
    return real == top or top in real.parents


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    def csv(self, name: str, **options):
        """A CSV file of the entry as a DataFrame (``options``: ``pandas.read_csv``'s, e.g. ``dtype``)."""
        import pandas as pd

        return pd.read_csv(self.path / name, **options)

    def torch(self, name: str = "weights.pt"):
        """A tensor file of the entry, its SHA-256 checked against the manifest as it is read."""
        blob = (self.path / name).read_bytes()
        expected = self.digest(name)
        if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
            raise HessbatchError(f"{self.path / name} is corrupt (its SHA-256 differs from the manifest's); "
                                 "`hessbatch verify` lists such entries, and they are recomputed once removed")
        import torch

        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)

    def digest(self, name: str) -> str | None:
        """The SHA-256 the manifest records for the entry's file ``name`` (None: none recorded)."""
        return json.loads((self.path / MANIFEST).read_text())["files"].get(name, {}).get("sha256")

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

    def folder(self, kind: str) -> Path:
        """The folder of one kind of entry; an error if it is a symlink that leads out of the store."""
        path = self.root / check_kind(kind)
        check(not path.is_symlink() or _inside(path, self.root),
              f"{path} is a symlink out of the store at {self.root}; remove it")
        return path

    def path(self, kind: str, key: str) -> Path:
        return self.folder(kind) / check_key(key, "key")

    def work_dir(self, kind: str, key: str) -> Path:
        """Folder for resumable work in progress on (kind, key); never a symlink."""
        path = self.folder(kind) / f"{check_key(key, 'key')}.work"
        check(not path.is_symlink(), f"{path} is a symlink; remove it (work in progress is written only inside "
                                     "the store)")
        return path

    def lock(self, kind: str, key: str):
        """Exclusive lock on computing (kind, key) across processes (``hessbatch.locks``; released if
        the holder dies). Another process asking for it waits. The lock file is never a symlink."""
        return locks.hold(self.folder(kind) / f".{check_key(key, 'key')}.lock")

    def busy(self, kind: str, key: str) -> bool:
        """Whether a process holds the lock on computing (kind, key) (``lock``) now."""
        return locks.held(self.folder(kind) / f".{check_key(key, 'key')}.lock")

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
        """Check the SHA-256 of every file of every entry folder: the number of folders checked and
        those that are not whole entries (a file missing or damaged, a manifest unreadable or naming
        a file outside its folder; they are treated as absent from now on)."""
        folders = self._folders(kind)
        return len(folders), [Entry(p, k, p.name) for k, p in folders if not _valid(p, verify=True)]

    def clean(self) -> None:
        """Remove what writers that died left behind: their temporary folders (named for their
        host and process, see ``building``), in the store's folder and in each kind's."""
        for folder in [self.root, *(self.root / k for k in self.kinds())]:
            if folder.is_dir():
                clean_stale(folder)

    @contextlib.contextmanager
    def scratch(self, name: str = "scratch"):
        """A temporary folder inside the store, deleted after; one left by a killed process is
        removed by the next ``clean``."""
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / tmp_name(name)
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if created and not any(self.root.iterdir()):
                self.root.rmdir()

    def remove(self, entry: Entry) -> None:
        """Delete an entry of this store: it disappears in one step (renamed aside, then deleted)."""
        check(entry.path.parent == self.folder(entry.kind) and KEY.fullmatch(entry.path.name),
              f"{entry.path} is not an entry of the store at {self.root}")
        trash = entry.path.parent / tmp_name(entry.key)
        os.rename(entry.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def building(self, kind: str, key: str, replace: bool = False):
        """Yield a fresh temporary folder beside entry (kind, key) to build it in (its files and
        MANIFEST); on success publish it in one step. An entry already there is kept if it is whole
        (unless ``replace``), and otherwise exchanged atomically with the new one. Every write to
        the store goes through here; ``written`` counts the builds that became entries."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent)
        tmp = final.parent / tmp_name(key)
        tmp.mkdir()
        try:
            yield tmp
            if self._publish(tmp, final, replace):
                self.written += 1
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def writer(self, kind: str, config: dict):
        """Yield a temporary folder to write result files into; publish it on success.

        If a complete entry for the same configuration appears meanwhile (another
        worker), it wins and this one is discarded.
        """
        key = self.key(kind, config)
        if self.read_only:
            raise NotInStore(f"no {kind} entry {key} in the read-only store at {self.root}")
        with self.building(kind, key) as tmp:
            yield tmp
            (tmp / "config.json").write_text(json.dumps(
                {"kind": kind, "key": key, "schema": SCHEMA, "config": json.loads(canonical_json(config))}, indent=2))
            files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=2))

    @staticmethod
    def _publish(tmp: Path, final: Path, replace: bool) -> bool:
        """Move the built entry ``tmp`` to ``final``: whether it became the entry."""
        if final.is_symlink():
            raise HessbatchError(f"{final} is a symlink; remove it (entries are folders inside the store)")
        if final.exists():
            if not replace and _valid(final, verify=True):
                return False
            if exchange_folders(tmp, final):  # tmp now holds the old entry, removed by the caller
                return True
            old = final.parent / tmp_name(final.name)
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            finally:
                shutil.rmtree(old, ignore_errors=True)
            return True
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if not _valid(final, verify=True):  # another process published it meanwhile
                raise
            return False

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

    def kinds(self) -> list[str]:
        """The kinds of entry this store holds."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if KIND.fullmatch(p.name) and p.is_dir() and _inside(p, self.root))

    def _folders(self, kind: str | None) -> list[tuple[str, Path]]:
        kinds = self.kinds()
        if kind is not None:
            check_kind(kind)
            kinds = [kind] if kind in kinds else []
        return [(k, p) for k in kinds for p in sorted((self.root / k).iterdir())
                if KEY.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


    def export(self, dest: str | os.PathLike, omit: tuple[str, ...] = ("*.pt", "probs.csv")) -> tuple[int, int]:
        """Copy every complete entry to the store at ``dest``, leaving out files matching ``omit``
        (weights, and the per-sample test predictions that chapter 8 summarizes: a tidy store small
        enough to commit, from which the book renders). Left-out files stay listed in the manifest
        under ``omitted``. Entries whose files fail their SHA-256 are not copied. Returns (entries,
        bytes) written."""
        import fnmatch

        target = Store(dest)
        here, there = self.root.resolve(), target.root.resolve()
        check(there != here and here not in there.parents and there not in here.parents,
              f"cannot export the store at {self.root} into {dest}: the two folders overlap "
              "(an export leaves out the weights; it writes only into a folder apart from the store)")
        n, size = 0, 0
        target.clean()
        for e in self.entries():
            if not _valid(e.path, verify=True):
                continue
            manifest = json.loads((e.path / MANIFEST).read_text())
            keep = {f: m for f, m in manifest["files"].items() if not any(fnmatch.fnmatch(f, o) for o in omit)}
            gone = {f: m for f, m in manifest["files"].items() if f not in keep}
            gone.update(manifest.get("omitted", {}))
            before = target.written
            with target.building(e.kind, e.key) as tmp:  # an entry already there is kept, never deleted
                for f in dict.fromkeys([*keep, "config.json"]):
                    shutil.copy2(e.path / f, tmp / f)
                (tmp / MANIFEST).write_text(json.dumps({"key": e.key, "files": keep, "omitted": gone}, indent=2))
            if target.written > before:
                n += 1
                size += sum(m["size"] for m in keep.values()) + (e.path / "config.json").stat().st_size
        for extra in ("_timings.yml",):
            if (self.root / extra).is_file():
                atomic_write_bytes(target.root / extra, (self.root / extra).read_bytes())
        return n, size


def _valid(path: Path, verify: bool = False) -> bool:
    """Whether ``path`` is a complete entry whose files have the sizes and the SHA-256 sums its
    manifest lists (the sums of files over ``HASHED_ON_READ`` bytes only with ``verify``). A
    manifest that names anything but a plain file inside the folder makes it incomplete."""
    try:
        if path.is_symlink():
            return False
        manifest = json.loads((path / MANIFEST).read_text())
        if "config.json" not in manifest["files"]:
            return False
        for name, meta in manifest["files"].items():
            if not (isinstance(name, str) and FILE_NAME.fullmatch(name)):
                return False
            f = path / name
            if f.is_symlink():
                return False
            size = f.stat().st_size
            if size != meta["size"] or ((verify or size <= HASHED_ON_READ) and file_sha256(f) != meta["sha256"]):
                return False
        return (path / "config.json").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False
