"""Sweeps on Dask: same results as in process, resilient to a killed worker and to concurrent sweeps."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hessbatch import HessbatchError
from hessbatch.params import expand_grid
from hessbatch.pool import DIED
from hessbatch.store import Store
from hessbatch.sweep import run_sweep

distributed = pytest.importorskip("distributed")

GRID = {"train": {"model": "MLP", "dataset": "mnist5k", "subset": 20, "test_subset": 5, "max_epochs": 3,
                  "target_loss": None, "lr": 0.05},
        "grid": {"batch_size": [20, 50], "seed": [0, 1]}}


def _entries(root: Path):
    folder = root / "train"
    names = sorted(p.name for p in folder.iterdir())
    return names, Store(root).entries("train")


def _weights(store, key):
    return store.get("train", key=key).torch()


def test_dask_matches_local_executor_bitwise(tmp_path):
    configs = expand_grid(GRID)
    local = run_sweep(configs, Store(tmp_path / "local"), progress=False, threads=1)
    dask = run_sweep(configs, Store(tmp_path / "dask"), progress=False, executor="dask", workers=2, threads=1)
    assert list(local["state"]) == ["done"] * 4 and list(dask["state"]) == ["done"] * 4
    assert list(local["key"]) == list(dask["key"])
    for key in local["key"]:
        a, b = _weights(Store(tmp_path / "local"), key), _weights(Store(tmp_path / "dask"), key)
        assert all(torch.equal(a[n], b[n]) for n in a)
    again = run_sweep(configs, Store(tmp_path / "dask"), progress=False, executor="dask", workers=2)
    assert list(again["state"]) == ["cached"] * 4


def test_processes_executor_matches_local_bitwise(tmp_path):
    configs = expand_grid(GRID)[:2]
    local = run_sweep(configs, Store(tmp_path / "local"), progress=False, threads=1)
    procs = run_sweep(configs, Store(tmp_path / "procs"), progress=False, executor="processes", workers=2, threads=1)
    assert list(procs["state"]) == ["done"] * 2 and list(local["key"]) == list(procs["key"])
    for key in local["key"]:
        a, b = _weights(Store(tmp_path / "local"), key), _weights(Store(tmp_path / "procs"), key)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_run_whose_process_dies_fails_alone(tmp_path, inject_failure):
    """The processes executor: a worker killed mid-run (as for memory) fails that run only."""
    grid = expand_grid(GRID)
    configs = [grid[0], grid[-1]]
    doomed = configs[1]
    inject_failure("die", doomed["batch_size"], doomed["max_epochs"])
    assert configs[0]["batch_size"] != doomed["batch_size"]
    table = run_sweep(configs, Store(tmp_path), progress=False, executor="processes", workers=2, threads=1)
    # the survivor may have stored its result just before the pool broke; run again alone, it is cached
    assert table["state"].iloc[0] in ("done", "cached") and table["state"].iloc[1] == "failed"
    assert table["error"].iloc[1] == f"BrokenProcessPool: {DIED}"
    assert [e.key for e in Store(tmp_path).entries("train")] == [table["key"].iloc[0]]


def test_killed_worker_task_is_retried(tmp_path):
    grid = {**GRID, "train": {**GRID["train"], "max_epochs": 25}}
    configs = expand_grid(grid)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    store = Store(tmp_path)
    result = {}
    try:
        t = threading.Thread(target=lambda: result.setdefault("table", run_sweep(
            configs, store, progress=False, executor="dask", scheduler=cluster.scheduler_address, threads=1)))
        t.start()
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "train").glob("*.work/checkpoint.pt")):
            time.sleep(0.05)
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        t.join(timeout=600)
        assert not t.is_alive()
    finally:
        client.close()
        cluster.close()
    table = result["table"]
    assert set(table["state"]) <= {"done", "cached"} and len(table) == 4, table
    names, entries = _entries(tmp_path)
    assert len(entries) == 4 and len({e.key for e in entries}) == 4
    assert not [n for n in names if n.endswith((".tmp", ".work"))]
    for e in entries:
        assert e.torch() and e.json()["status"] == "capped"


def test_two_sweeps_at_once_give_one_entry_per_configuration(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("train: {model: MLP, dataset: mnist5k, subset: 20, test_subset: 5, max_epochs: 8, "
                    "target_loss: null}\ngrid: {batch_size: [20, 50], seed: [0, 1]}\n")
    cmd = [sys.executable, "-m", "hessbatch.cli", "sweep", str(grid), "--results", str(tmp_path / "r"),
           "--no-progress", "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    names, entries = _entries(tmp_path / "r")
    assert len(entries) == 4
    assert not [n for n in names if n.endswith((".tmp", ".work"))]
    done = sum(int(o[0].strip().splitlines()[-1].split()[0]) for o in outs)
    assert done == 4, "each configuration is trained by exactly one of the two sweeps"


def test_executor_arguments():
    with pytest.raises(HessbatchError, match="unknown executor 'ray'"):
        run_sweep([], Store("/nonexistent"), executor="ray")
    with pytest.raises(HessbatchError, match="--scheduler needs --executor dask"):
        run_sweep([], Store("/nonexistent"), scheduler="tcp://x:1")


def test_oversized_batch_fails_before_any_run(tmp_path):
    configs = expand_grid({**GRID, "grid": {"batch_size": [20, 5000]}})
    with pytest.raises(HessbatchError, match="batch_size 5000 is larger than the training set of mnist5k"):
        run_sweep(configs, Store(tmp_path), progress=False)
    assert not (tmp_path / "train").exists()
