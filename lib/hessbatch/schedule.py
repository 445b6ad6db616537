"""The order in which a pool of workers takes training runs and the measurements that need them.

Runs go first, in the order given, each once the runs it starts from (or is guided by) are done.
A measurement waits until the runs it needs are done and then takes the first free worker, so
measurements fill the workers that the last long runs leave idle. The policy is kept apart from
the pool that executes it, so that it can be tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Schedule:
    """``runs``: ``(key, run, parents)`` in the order wanted, ``parents`` the keys of the runs it
    needs first; ``jobs``: ``(name, needs, job)``, ``needs`` the keys of the runs the job reads.
    After a failed run no new run starts unless ``keep_going``; a run or job lacking a run that
    will never come is handed out as skipped."""

    runs: list[tuple[str, object, set]]
    jobs: list[tuple[str, set, object]]
    keep_going: bool = False
    trained: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    running: set = field(default_factory=set)  # runs handed out and not yet ended

    def __post_init__(self):
        known = {key for key, _, _ in self.runs}  # a parent outside the list is the trainer's to find
        self._runs = [(key, run, set(parents) & known) for key, run, parents in self.runs]
        self._jobs = list(self.jobs)

    def next(self) -> tuple[str, object] | None:
        """What a free worker does now: ``("run", (key, run))``, ``("job", job)``, ``("lost", (key,
        why))`` or ``("skip", (name, why))`` (a run or a job that will not execute: report it), or
        None (wait for a run to end; if nothing is in flight either, everything is done)."""
        halted = bool(self.failed) and not self.keep_going
        for i, (key, run, parents) in enumerate(self._runs if not halted else []):
            if parents & self.failed:
                del self._runs[i]
                self.failed.add(key)
                return "lost", (key, "a run it starts from failed")
            if parents <= self.trained:
                del self._runs[i]
                self.running.add(key)
                return "run", (key, run)
        settled = not self.running and (halted or not self._runs)
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
        self.running.discard(key)
        (self.trained if ok else self.failed).add(key)
