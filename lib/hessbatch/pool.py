"""A pool of spawned processes that outlives one of them dying.

``concurrent.futures.ProcessPoolExecutor`` breaks for good when a worker process dies (killed
for memory, a crash in a native library): every task in flight fails with ``BrokenProcessPool``
and no task can be submitted again. ``Pool`` runs at most ``workers`` tasks at once, so every
task in flight has a process of its own; when one dies, it starts a new pool and runs each task
that was in flight again, alone, before anything else. The task whose process dies while it runs
alone is the one that killed it: it is reported as failed, and the others complete. A worker
exits when its parent dies (``exit_with_parent``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .errors import describe

DIED = "its process died (killed, perhaps for memory) while it ran alone"


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a worker process: exit as soon as its parent is gone, so that a killed ``sweep`` or
    ``compute`` leaves no worker finishing its queue (a thread checks the parent's pid)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class Pool:
    """``submit(tag, fn, *args)`` while ``free()``; ``wait()`` returns ``(tag, result, error)`` for
    each task that ended (``error`` a one-line text or None) while ``busy()``."""

    def __init__(self, workers: int):
        self.workers = workers
        self.inflight: dict = {}
        self.suspects: list = []
        self.alone = False
        self.restarts = 0
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                   initializer=exit_with_parent, initargs=(os.getpid(),))

    def free(self) -> bool:
        return not self.suspects and not self.alone and len(self.inflight) < self.workers

    def busy(self) -> bool:
        return bool(self.inflight or self.suspects)

    def submit(self, tag, fn, *args) -> None:
        self.inflight[self._pool.submit(fn, *args)] = (tag, fn, args)

    def wait(self) -> list[tuple[object, object, str | None]]:
        if not self.inflight and self.suspects:
            tag, fn, args = self.suspects.pop(0)
            self.alone = True
            self.submit(tag, fn, *args)
        finished, _ = wait(self.inflight, return_when=FIRST_COMPLETED)
        out, broken = [], False
        for fut in finished:
            task = self.inflight.pop(fut)
            try:
                out.append((task[0], fut.result(), None))
            except BrokenProcessPool:
                broken = True
                if self.alone:
                    out.append((task[0], None, f"BrokenProcessPool: {DIED}"))
                else:
                    self.suspects.append(task)
            except Exception as e:  # noqa: BLE001 — the task's own error, reported as its outcome
                out.append((task[0], None, describe(e)))
        if broken:
            for fut, task in self.inflight.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    out.append((task[0], fut.result(), None))
                else:
                    self.suspects.append(task)
            self.inflight.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self.restarts = self._start(), self.restarts + 1
        self.alone = self.alone and bool(self.inflight)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
