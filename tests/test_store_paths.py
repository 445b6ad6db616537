"""A store is only ever written inside itself, and never loses an entry it did not replace.

Grouped by mechanism: every path is built from the root and validated names (kind, key, a
manifest's file names), no symlink leads a write out of the store, every entry is published
atomically, an export writes only apart from the store and deletes nothing, and the book prints
a profile's strings as text."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hessbatch.errors import HessbatchError
from hessbatch.paper.cli import main
from hessbatch.store import Store, atomic_write_bytes

LIB = Path(__file__).resolve().parents[1] / "lib"
TINY = ["--model", "MLP", "--dataset", "mnist5k", "--subset", "10", "--test-subset", "5", "--batch-size", "25",
        "--max-epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one tiny run (copied per test: tests damage it)."""
    root = tmp_path_factory.mktemp("trained") / "S"
    assert main(["train", *TINY, "--results", str(root)]) == 0
    return root


@pytest.fixture
def store(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "S", symlinks=True)
    return Store(tmp_path / "S")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- export writes only apart from the store and deletes nothing ---------------------------------

def test_export_through_a_symlinked_child_is_refused_and_keeps_the_weights(store, tmp_path):
    dest = tmp_path / "D"
    dest.mkdir()
    (dest / "train").symlink_to(store.root / "train")
    with pytest.raises(HessbatchError, match="symlink out of the store"):
        store.export(dest)
    assert len(list(store.root.rglob("weights.pt"))) == 1


def test_export_into_a_folder_that_holds_the_store_is_refused(store, tmp_path):
    before = _files(store.root)
    for dest in (tmp_path, store.root.parent / ".", store.root / "train"):
        with pytest.raises(HessbatchError, match="the two folders overlap"):
            store.export(dest)
    assert _files(store.root) == before


def test_export_into_another_store_keeps_its_entries_and_weights(store, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(store.root, other)
    assert store.export(other) == (0, 0)
    assert len(list(other.rglob("weights.pt"))) == 1 and Store(other).get("train", key=store.entries()[0].key,
                                                                           verify=True) is not None
    n, size = store.export(tmp_path / "tidy")
    assert n == 1 and size > 0 and not list((tmp_path / "tidy").rglob("weights.pt"))
    assert store.export(tmp_path / "tidy") == (0, 0)  # a second export finds it there and keeps it


# --- names: kind, key, and a manifest's file names ----------------------------------------------

@pytest.mark.parametrize("argv,msg", [
    (["verify", "--kind", "../other/train", "--remove"], "must be a kind of entry (e.g. train)"),
    (["ls", "--kind", "../.."], "must be a kind of entry (e.g. train)"),
    (["ls", "--kind", "trian"], "unknown kind of entry"),
    (["verify", "--kind", "Train"], "must be a kind of entry (e.g. train)"),
])
def test_a_kind_names_a_folder_of_the_store(store, tmp_path, argv, msg, capsys):
    victim = tmp_path / "other" / "train" / "0123456789abcdef"
    victim.mkdir(parents=True)
    assert main([*argv, "--results", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert victim.is_dir()


def _plant(store: Store, name: str, data: bytes) -> Path:
    """Add a file to the run's manifest, under ``name``, with its true size and hash."""
    e = store.entries("train")[0]
    m = json.loads((e.path / "MANIFEST.json").read_text())
    m["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (e.path / "MANIFEST.json").write_text(json.dumps(m))
    return e.path


@pytest.mark.parametrize("name", ["../../../leak.txt", "/tmp/leak.txt", ".hidden", "a/b.txt", ".."])
def test_a_manifest_naming_a_file_outside_its_entry_makes_it_incomplete(store, tmp_path, name, capsys):
    path = _plant(store, name, b"leak")
    target = (path / name)
    if name.startswith("../"):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"leak")
    assert store.entries() == [] and store.get("train", key=path.name) is None
    assert main(["verify", "--results", str(store.root)]) == 1
    assert f"corrupt: train/{path.name}" in capsys.readouterr().out
    assert store.export(tmp_path / "D") == (0, 0) and not list(tmp_path.rglob("D/**/leak.txt"))


def test_a_symlinked_file_in_an_entry_makes_it_incomplete(store, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"x")
    path = _plant(store, "link.txt", b"x")
    (path / "link.txt").symlink_to(outside)
    assert store.entries() == []


@pytest.mark.parametrize("damage", ["truncated MANIFEST", "flipped history.csv", "deleted result.json"])
def test_verify_counts_and_removes_entries_with_damaged_small_files(store, damage, capsys):
    path = store.entries("train")[0].path
    if damage == "truncated MANIFEST":
        (path / "MANIFEST.json").write_text((path / "MANIFEST.json").read_text()[:40])
    elif damage == "flipped history.csv":
        blob = bytearray((path / "history.csv").read_bytes())
        blob[5] ^= 1
        (path / "history.csv").write_bytes(bytes(blob))
    else:
        (path / "result.json").unlink()
    assert main(["verify", "--results", str(store.root)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "1 entries checked, 1 corrupt"
    assert main(["verify", "--remove", "--results", str(store.root)]) == 0
    assert not path.exists() and store.invalid() == [] and store.entries() == []


# --- no symlink leads a write out of the store --------------------------------------------------

def test_a_dangling_lock_symlink_is_refused_not_followed(tmp_path, capsys):
    root = tmp_path / "S"
    (root / "train").mkdir(parents=True)
    from hessbatch.config import TrainConfig

    argv = ["train", *TINY, "--results", str(root)]
    key = Store(root).key("train", TrainConfig.from_dict(
        {"model": "MLP", "dataset": "mnist5k", "subset": 10, "test_subset": 5, "batch_size": 25,
         "max_epochs": 2}).resolved().to_dict())
    (root / "train" / f".{key}.lock").symlink_to(tmp_path / "created-by-lock")
    assert main(argv) == 2
    assert "lock file" in capsys.readouterr().err
    assert not (tmp_path / "created-by-lock").exists()


def test_a_symlinked_work_folder_is_refused(tmp_path, capsys):
    root = tmp_path / "S"
    (root / "train").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["train", *TINY, "--results", str(tmp_path / "probe")]) == 0
    key = Store(tmp_path / "probe").entries("train")[0].key
    (root / "train" / f"{key}.work").symlink_to(elsewhere)
    assert main(["train", *TINY, "--results", str(root)]) == 2
    assert "is a symlink" in capsys.readouterr().err
    assert not any(elsewhere.iterdir())


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "checkpoint.pt", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


# --- replacing an entry is one step -------------------------------------------------------------

REPLACE = """
import os, sys
import hessbatch.store as st
root, stage = sys.argv[1], sys.argv[2]
s = st.Store(root)
if stage == "exchanged":
    real = st.exchange_folders
    def exchange(a, b):
        real(a, b)
        os._exit(9)
    st.exchange_folders = exchange
with s.building("demo", "00aa", replace=True) as tmp:
    (tmp / "config.json").write_text("{}")
    (tmp / "out.txt").write_text(sys.argv[3])
    files = {p.name: {"size": p.stat().st_size, "sha256": st.file_sha256(p)} for p in tmp.iterdir()}
    (tmp / "MANIFEST.json").write_text(__import__("json").dumps({"key": "00aa", "files": files}))
    if stage == "built":
        os._exit(9)
"""


@pytest.mark.parametrize("stage", ["built", "exchanged"])
def test_a_replacement_killed_midway_leaves_the_old_entry_or_the_new(tmp_path, stage):
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    run = [sys.executable, "-c", REPLACE, str(tmp_path)]
    assert subprocess.run([*run, "none", "old"], env=env, timeout=120).returncode == 0
    assert subprocess.run([*run, stage, "new"], env=env, timeout=120).returncode == 9
    e = Store(tmp_path).get("demo", key="00aa", verify=True)
    assert e is not None and (e.path / "out.txt").read_text() == ("old" if stage == "built" else "new")
    assert subprocess.run([*run, "none", "third"], env=env, timeout=120).returncode == 0
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["00aa"]  # leftovers of the dead one cleaned
    assert (Store(tmp_path).get("demo", key="00aa").path / "out.txt").read_text() == "third"


# --- the book prints a profile's strings as text ------------------------------------------------

def test_a_profiles_notes_must_be_a_file_under_book(tmp_path, capsys):
    from hessbatch.paper.profiles import load_profile

    for notes in ("/etc/passwd", "../README.md", "../../etc/passwd"):
        f = tmp_path / "p.yaml"
        f.write_text(f"profile: p\nnotes: {notes}\nchapters: {{04-saddle-free: {{}}}}\n")
        with pytest.raises(HessbatchError, match="notes must name a file in book/"):
            load_profile(str(f))


def test_a_title_is_printed_as_text():
    from markdown_it import MarkdownIt

    from hessbatch.paper.book import markdown_text

    title = "<img src=x onerror=alert(1)> [x](javascript:y) `c` {{ s }} & C1 (Table 1)"
    html = MarkdownIt("commonmark").render(f"# A — {markdown_text(title)}")
    assert "<img" not in html and "<a" not in html and "<code" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; [x](javascript:y) `c` {{ s }} &amp; C1 (Table 1)" in html

