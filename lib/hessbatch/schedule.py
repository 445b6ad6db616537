"""The order in which a pool of workers takes training runs and the measurements that need them.

Runs go first, wave after wave (a run that starts from another run's weights comes in a later
wave, which starts once the earlier one has ended). A measurement waits until the runs it needs
are done and then takes the first free worker, so measurements fill the workers that the last
long runs of a wave, or the wait for the next wave, leave idle. The policy is kept apart from the
pool that executes it, so that it can be tested without processes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Schedule:
    """``waves``: lists of ``(key, run)``; ``jobs``: ``(name, needs, job)`` in the order wanted,
    ``needs`` the keys of the runs the job reads. After a failed run no new run starts unless
    ``keep_going``; a job lacking a run that will never come is handed out as skipped."""

    waves: list[list[tuple[str, object]]]
    jobs: list[tuple[str, set, object]]
    keep_going: bool = False
    trained: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    running: int = 0  # runs handed out and not yet ended

    def __post_init__(self):
        self._queue = deque(self.waves[0] if self.waves else [])
        self._later = deque(self.waves[1:])
        self._jobs = list(self.jobs)

    def next(self) -> tuple[str, object] | None:
        """What a free worker does now: ``("run", run)``, ``("job", job)``, ``("skip", (name, why))``
        (nothing to execute: report it), or None (wait for something to end; if nothing is in
        flight either, everything is done)."""
        halted = bool(self.failed) and not self.keep_going
        if not self._queue and not self.running and self._later and not halted:
            self._queue.extend(self._later.popleft())
        if self._queue and not halted:
            key, run = self._queue.popleft()
            self.running += 1
            return "run", (key, run)
        settled = not self.running and (halted or not (self._queue or self._later))
        for i, (name, needs, job) in enumerate(self._jobs):
            if needs <= self.trained or needs & self.failed or settled:
                del self._jobs[i]
                if needs <= self.trained or not self.failed:
                    return "job", job
                why = ("a training run it needs failed" if needs & self.failed
                       else "training stopped at a failed run")
                return "skip", (name, why)
        return None

    def ended(self, key: str, ok: bool) -> None:
        """A run handed out by :meth:`next` ended (``ok``: it is in the store)."""
        self.running -= 1
        (self.trained if ok else self.failed).add(key)
