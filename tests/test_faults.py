"""Fault injection: ``export``, ``plan --unpack``, ``verify --remove`` and a sweep's parent killed
(SIGKILL) at random points. After each kill every entry is whole or absent and no worker outlives
its parent; after the command runs again, it has done its work and no temporary file is left."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hessbatch.paper.cli import main
from hessbatch.paper.plans import export
from hessbatch.store import Store
from processes import alive, children

HESSBATCH = [sys.executable, "-m", "hessbatch.paper.cli"]
KILLS = 3


def _grid(path: Path, seeds) -> Path:
    path.write_text("train: {model: MLP, dataset: mnist5k, subset: 10, test_subset: 5, batch_size: 25, "
                    f"max_epochs: 2, save_every: 1}}\ngrid: {{seed: {list(seeds)}}}\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store of six tiny runs, each with weight snapshots (so that copies take a while)."""
    tmp = tmp_path_factory.mktemp("faults")
    assert main(["sweep", str(_grid(tmp / "grid.yaml", range(6))), "--results", str(tmp / "store"),
                 "--no-progress"]) == 0
    return tmp / "store"


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))] if folder.exists() else []


def _whole_or_absent(folder: Path) -> None:
    assert Store(folder).invalid() == [], "a killed command left an entry half written"


def _killed(argv, delay: float, cwd: Path) -> list[int]:
    """Start ``hessbatch argv``, SIGKILL it after ``delay`` seconds (if still running); its children."""
    proc = subprocess.Popen([*HESSBATCH, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None:
        seen |= set(children(proc.pid))
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return sorted(seen)


def _delays(argv, cwd: Path, seed: int) -> list[float]:
    """Kill points spread over the command's own duration, measured on a first, whole run."""
    t0 = time.perf_counter()
    subprocess.run([*HESSBATCH, *argv], cwd=cwd, check=True, capture_output=True, timeout=300)
    rng = random.Random(seed)
    return [rng.uniform(0.1, time.perf_counter() - t0) for _ in range(KILLS)]


def test_export_killed_at_random_points(store, tmp_path):
    dest = tmp_path / "dest"
    for i, delay in enumerate(_delays(["export", str(tmp_path / "probe"), "--results", str(store)], tmp_path, 1)):
        _killed(["export", str(dest), "--results", str(store)], delay, tmp_path)
        _whole_or_absent(dest)
    assert main(["export", str(dest), "--results", str(store)]) == 0
    assert len(Store(dest).entries()) == 6 and Store(store).verify()[1] == [] and _leftovers(dest) == []


def test_unpack_killed_at_random_points(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    export(str(store), out / "tidy.tgz")
    (out / "plan.json").write_text(json.dumps(
        {"plan": "p", "title": "p", "profile": "paper", "dry_run": False, "device": "cpu", "hardware": "cpu",
         "workers": 1, "started": "2026-01-01 00:00", "seconds": 1.0, "pages": []}))
    dest = tmp_path / "dest"
    argv = ["plan", "--unpack", str(out), "--results", str(dest)]
    for delay in _delays(["plan", "--unpack", str(out), "--results", str(tmp_path / "probe")], tmp_path, 2):
        _killed(argv, delay, tmp_path)
        _whole_or_absent(dest)
    assert main(argv) == 0
    assert len(Store(dest).entries()) == 6 and _leftovers(dest) == []


def test_verify_remove_killed_at_random_points(store, tmp_path):
    def damaged(folder: Path) -> Path:
        shutil.copytree(store, folder)
        for e in Store(folder).entries()[:3]:
            f = e.path / "history.csv"
            f.write_bytes(f.read_bytes()[:-1] + b"#")
        return folder

    delays = _delays(["verify", "--remove", "--results", str(damaged(tmp_path / "probe"))], tmp_path, 3)
    copy = damaged(tmp_path / "copy")
    whole = sorted(e.key for e in Store(copy).entries())
    for delay in delays:
        _killed(["verify", "--remove", "--results", str(copy)], delay, tmp_path)
        assert sorted(e.key for e in Store(copy).entries()) == whole
    assert main(["verify", "--remove", "--results", str(copy)]) == 0
    assert Store(copy).invalid() == [] and len(Store(copy).entries()) == 3 and _leftovers(copy) == []


def test_a_sweep_parent_killed_at_random_points_takes_its_workers_along(tmp_path):
    grid = _grid(tmp_path / "grid.yaml", range(10, 14))
    argv = ["sweep", str(grid), "--executor", "processes", "--workers", "2", "--threads", "1", "--no-progress",
            "--results", str(tmp_path / "store")]
    rng, seen = random.Random(4), 0
    for _ in range(KILLS):
        workers = _killed(argv, rng.uniform(1.0, 6.0), tmp_path)
        seen += len(workers)
        deadline = time.time() + 15
        while alive(workers) and time.time() < deadline:
            time.sleep(0.2)
        assert alive(workers) == [], "a worker outlived its killed parent"
        _whole_or_absent(tmp_path / "store")
    assert seen > 0, "no kill came while workers ran"
    assert main(argv) == 0
    assert len(Store(tmp_path / "store").entries("train")) == 4 and _leftovers(tmp_path / "store") == []


def test_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails half way (here: the disk full at the flush) leaves the old file and no
    temporary one, however often it is tried again (checkpoints and snapshots are written so)."""
    import errno

    from hessbatch import checkpoints
    from hessbatch.atomic import atomic_write_bytes

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for _ in range(3):
        with pytest.raises(OSError, match="No space left"):
            checkpoints.save({"epoch": 1}, target)
        with pytest.raises(OSError, match="No space left"):
            atomic_write_bytes(tmp_path / "result.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert target.read_bytes() == b"the last good checkpoint"


def test_two_builds_into_one_folder_write_their_figures_apart(tmp_path):
    """Two builds with one ``--out`` save the same figure at once: each writes its own temporary
    file and the figure ends whole."""
    import threading

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from hessbatch.paper import figures

    errors = []

    def save():
        try:
            for _ in range(5):
                fig, ax = plt.subplots()
                ax.plot([0, 1], [1, 0])
                figures.save(fig, "fig1", pd.DataFrame({"x": [0, 1]}), "a figure", {"profile": "smoke"}, tmp_path)
                plt.close(fig)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(p.name for p in tmp_path.iterdir()) == ["fig1.csv", "fig1.pdf", "fig1.png"]
