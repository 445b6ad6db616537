"""Listing a large store: `hessbatch ls` before (every file hashed on every read) and after
(sizes checked, small files hashed, weights hashed only when loaded or verified).

Fills a temporary store with N fake C1-sized training entries (weights of 1,756,682 float32
parameters, about 7 MB each), then times, in one run, the listing with the full SHA-256
check that every read used to make (``HASHED_ON_READ`` set to infinity) and the listing as it
is now, with the page cache warm and (as root on Linux) cold. Prints a Markdown table.

    python benchmarks/store_ls.py --entries 300
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import hessbatch.store as store_mod
from hessbatch.store import Store

C1_PARAMS = 1_756_682
LIST = {"entries": "import hessbatch.store as store; store.HASHED_ON_READ = {limit}; "
                   "store.Store({root!r}).entries('train')",
        "ls": "import hessbatch.store as store; store.HASHED_ON_READ = {limit}; "
              "from hessbatch.cli import main; main(['ls', '--results', {root!r}])"}


def fill(store: Store, n: int, nbytes: int) -> None:
    blob = os.urandom(nbytes)
    for i in range(n):
        with store.writer("train", {"model": "C1", "batch_size": 64, "seed": i}) as tmp:
            (tmp / "weights.pt").write_bytes(blob[i % 251:] + blob[:i % 251])
            pd.DataFrame({"epoch": [1], "train_loss": [0.1]}).to_csv(tmp / "history.csv", index=False)
            (tmp / "result.json").write_text('{"status": "converged", "epochs": 1, "train_loss": 0.001, '
                                             '"test_acc": 0.78}')


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def in_process(store: Store, limit) -> None:
    saved, store_mod.HASHED_ON_READ = store_mod.HASHED_ON_READ, limit
    try:
        store.entries("train")
    finally:
        store_mod.HASHED_ON_READ = saved


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        fill(store, a.entries, 4 * C1_PARAMS)
        rows = []
        for cache in ("warm", "cold"):
            if cache == "cold" and not drop_caches():
                continue
            times = []
            for limit in ("float('inf')", "store.HASHED_ON_READ"):  # before: every file hashed on every read
                for how in ("entries", "ls"):
                    if cache == "cold":
                        drop_caches()
                    times.append(timed(lambda: subprocess.run([sys.executable, "-c", LIST[how].format(
                        limit=limit, root=root)], check=True, capture_output=True)))
            for limit in (float("inf"), store_mod.HASHED_ON_READ):
                if cache == "cold":
                    drop_caches()
                times.append(timed(lambda: in_process(store, limit)))
            rows.append((cache, *times))
        print(f"{a.entries} fake C1 training entries ({4 * C1_PARAMS / 1e6:.1f} MB of weights each), "
              f"{os.cpu_count()} cores; each a new process (imports included)\n")
        print("| page cache | `Store.entries()` before | `hessbatch ls` before | `Store.entries()` after | "
              "`hessbatch ls` after | in process: before | in process: after |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for cache, *t in rows:
            print(f"| {cache} | " + " | ".join(f"{x:.2f} s" for x in t) + " |")


if __name__ == "__main__":
    main()
