"""Following a chapter while its notebook runs in a kernel: the runs of the page already in the
store out of its total, the current training run's epoch and loss, the measurement in progress,
and an estimate of the time left. On a terminal, one line rewritten in place; in a log, one line
per trained run or finished step of the chapter (and one every ``heartbeat`` seconds between).

The kernel's bars report to the events file ``$HESSBATCH_EVENTS`` (``hessbatch.progress``); the
runs are counted in the store itself."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from ..store import Store


class Follower:
    """A thread printing a page's progress until ``stop()``."""

    def __init__(self, label: str, events: Path, store: Store, run_keys: list[str], expected: float | None = None,
                 stream=None, heartbeat: float = 30.0, every: float = 1.0):
        self.label, self.events, self.store, self.keys = label, Path(events), store, run_keys
        self.expected, self.heartbeat, self.every = expected, heartbeat, every
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0, self.offset, self.bars, self.last_line, self.done0, self.done = time.monotonic(), 0, {}, 0.0, None, 0
        self.found: set[str] = set()  # runs seen in the store stay there: each is looked up until found
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Follower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def _loop(self) -> None:
        runs = None
        while not self._stop.wait(self.every):
            steps = [d for d, unit in self._read() if unit == "run"]
            line = self.status()
            if self.tty:
                self.stream.write("\r\x1b[2K" + line[:200])
            elif steps or self.done != runs or time.monotonic() - self.last_line >= self.heartbeat:
                self.stream.write(line + "\n")
                self.last_line, runs = time.monotonic(), self.done
            self.stream.flush()

    def _read(self) -> list[tuple[str, str]]:
        """New events since the last read; (description, unit) of the bars that finished."""
        try:
            with open(self.events) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        finished = []
        for line in chunk.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            self.bars[e["desc"]] = e
            if e.get("done"):
                finished.append((e["desc"], e.get("unit")))
        return finished

    def status(self) -> str:
        """``01-batch-size: runs 3/9 · M1/mnist5k B=64 epoch 12/300 (loss=0.0123) · curvature 1/4 · 2.5 min, ~6 min left``."""
        self.found |= {k for k in self.keys if k not in self.found and self.store.get("train", key=k) is not None}
        done = self.done = len(self.found)
        if self.done0 is None:
            self.done0 = done
        parts = [f"{self.label}: runs {done}/{len(self.keys)}" if self.keys else self.label]
        live = [e for e in self.bars.values() if not e.get("done")]
        for e in live[-3:]:  # two runs training side by side and the sweep over them
            total = f"/{e['total']}" if e.get("total") else ""
            post = f" ({e['postfix']})" if e.get("postfix") else ""
            parts.append(f"{e['desc']} {e['n']}{total} {e['unit']}{post}")
        elapsed = time.monotonic() - self.t0
        parts.append(f"{elapsed / 60:.1f} min" + self._left(elapsed, done))
        return " · ".join(parts)

    def _left(self, elapsed: float, done: int) -> str:
        """The last build's time of the page if known, else the training rate so far (the run in
        progress counted by its epochs, out of its cap: an estimate that a run stopping early at
        its target loss beats)."""
        if self.expected:
            return f", ~{max(self.expected - elapsed, 0) / 60:.1f} min left (as last built)"
        live = [e for e in self.bars.values()  # a training run's bar: "M1/mnist5k B=64", in epochs
                if not e.get("done") and e.get("unit") == "epoch" and "/" in e["desc"] and e.get("total")]
        current = live[-1]["n"] / live[-1]["total"] if live and done < len(self.keys) else 0.0
        trained = done + current - (self.done0 or 0)
        if self.keys and trained > 0 and done < len(self.keys):
            left = len(self.keys) - done - current
            return f", ~{elapsed / trained * left / 60:.1f} min of training left"
        return ""
