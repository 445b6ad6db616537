"""Computing a profile without notebooks (on a GPU machine, say): training runs first, several
at once, then each chapter's measurements; the book built later finds everything in the store.
Each chapter's wall time and device go to ``<results>/_timings.yml``."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from ..data import load_dataset
from ..devices import resolve_device
from ..errors import HessbatchError, NotInStore, check, describe
from ..hessian import graph_memory_share, split_graph_memory
from ..store import Store, atomic_write_bytes
from ..sweep import run_sweep
from . import registry
from .profiles import load_profile, only_batch_sizes, profile_results, selected


def fetch_data(runs, data_root) -> list[str]:
    """Download the datasets these executions read that are missing under ``data_root``, before any
    compute; return their names."""
    names = {c["dataset"] for wave in registry.profile_train_configs({n: p for n, _, p, _ in runs}) for c in wave}
    names |= {p["pga_training"].get("dataset", "mnist5k") for _, _, p, _ in runs if p.get("pga_training")}
    fetched = []
    for name in sorted(names):
        try:
            load_dataset(name, data_root)
        except HessbatchError:
            load_dataset(name, data_root, download=True)
            fetched.append(name)
    return fetched


def stored_split(runs, res, partial: bool = False):
    """Split executions into those whose every result is in the store at ``res`` (their chapter,
    run on the store read-only, computes nothing) and the rest: a profile with committed results
    renders what was computed, on any machine, and a placeholder for the rest. With ``partial``, a
    page of a chapter that can show some of its batch sizes (``Chapter.shows_any_batch_sizes``),
    of which at least two are in, counts as in, with its ``batch_sizes`` cut to those (its page then
    says which are missing)."""
    store, have, absent = Store(res, read_only=True), [], []
    for run in runs:
        if _stored(run[1], run[2], store):
            have.append(run)
            continue
        sizes = run[2].get("batch_sizes")
        part = [b for b in sizes if _stored(run[1], only_batch_sizes(run[2], [b]), store, probe=True)] \
            if partial and registry.chapter(run[1]).shows_any_batch_sizes and isinstance(sizes, list) \
            and len(sizes) > 2 else []
        if len(part) >= 2:
            have.append((run[0], run[1], only_batch_sizes(run[2], part), run[3]))
        else:
            absent.append(run)
    return have, absent


def _stored(chapter: str, params: dict, store: Store, probe: bool = False) -> bool:
    """Whether the page computes from ``store`` alone; a ``probe`` (a page cut to one batch size)
    whose parameters the chapter refuses counts as not stored."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            registry.run_chapter(chapter, params, store)
        return True
    except NotInStore:
        return False
    except HessbatchError:
        if probe:
            return False
        raise


def train_profile(runs, res, device, data_root, executor, scheduler=None, workers=None,
                   keep_going: bool = False, progress: bool = True) -> tuple[float, list[str]]:
    """Train every run the chosen chapters need, wave after wave; return the wall time and
    the errors of failed runs (raised at once unless ``keep_going``)."""
    t0, errors = time.perf_counter(), []
    for wave in registry.profile_train_configs({n: p for n, _, p, _ in runs}):
        table = run_sweep(wave, Store(res), device=device, data_root=data_root, executor=executor,
                          scheduler=scheduler, workers=workers, progress=progress)
        failed = table[table["state"] == "failed"]
        errors += [f"training run {k}: {e}" for k, e in zip(failed["key"], failed["error"])]
        check(keep_going or failed.empty, f"{len(failed)} training run(s) failed on {executor}: "
                                          f"{failed['error'].iloc[0] if len(failed) else ''}")
    return time.perf_counter() - t0, errors


def compute_one(name: str, chapter: str, params: dict, res: str, device: str, data_root,
                 threads: int | None = None, progress: bool = False,
                 processes: int = 1, part: tuple[int, int] = (0, 1)) -> tuple[str, float, str | None, int]:
    """Compute one chapter's results; never raises (the error comes back as text). Returns the
    name, wall time, error and the number of store entries written. ``progress``: bars of the
    chapter's runs and of each spectrum's HVPs (for one chapter at a time). ``processes``: how
    many run at once (they split the memory for cached gradient graphs). ``part``: which of the
    processes computing this chapter together this is (:meth:`Context.each`)."""
    if threads:
        torch.set_num_threads(threads)
    if processes > 1:
        split_graph_memory(processes)
    t0 = time.perf_counter()
    store = Store(res)
    try:
        registry.run_chapter(chapter, params, store, device=device, data_root=data_root, progress=progress,
                             part=part)
        error = None
    except Exception as e:  # noqa: BLE001 — reported per chapter; the others go on
        error = describe(e)
    return name, time.perf_counter() - t0, error, store.written


def compute(profile: str, results: str | None = None, device: str = "cpu", data_root: str | None = None,
            chapters: list[str] | None = None, workers: int = 1, download: bool = False,
            progress: bool = True, overrides: dict | None = None) -> dict:
    """Compute every chapter of a profile into its store, without notebooks; return the timings.

    With ``workers`` > 1, runs and chapters share one pool of processes (see :func:`overlapped`):
    the runs first, ``workers`` at a time, and each chapter's measurements as soon as its runs are
    done. Everything resumes from the store.
    A failed training run or chapter is reported (in the timings too) and the others go on;
    the call then raises, naming what failed. A chapter found complete in the store keeps the
    timing of the call that computed it; one that was missing some results, on the same hardware,
    adds this call's time to it (``calls`` counts them). A call stopped by Ctrl-C or SIGTERM (a
    ``timeout``) still records its wall time, marked ``interrupted``.
    """
    prof = load_profile(profile)
    check(workers >= 1, f"workers must be >= 1, got {workers}")
    graph_memory_share()
    dev = resolve_device(device)
    runs = selected(prof, chapters, overrides, optional=False)
    res = profile_results(prof, results)
    if download:
        fetch_data(runs, data_root)
    hw = hardware(dev)
    t0 = time.perf_counter()
    record = Path(res) / "_timings.yml"
    timings = (yaml.safe_load(record.read_text()) if record.is_file() else None) or {}
    call = {"started": time.strftime("%Y-%m-%d %H:%M"), "chapters": [n for n, _, _, _ in runs], "workers": workers,
            "hardware": hw, "seconds": 0.0, "train_seconds": 0.0}
    timings.setdefault("_calls", []).append(call)

    def save():
        call["seconds"] = round(time.perf_counter() - t0, 1)
        Path(res).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, yaml.safe_dump(timings, sort_keys=False).encode())

    training, errors = [True], []

    def interrupted():
        call["interrupted"] = True
        if training[0]:
            call["train_seconds"] = round(time.perf_counter() - t0, 1)
        save()

    with _on_sigterm(interrupted):
        try:
            save()
            done = _reporter(timings, dev, hw, call, errors, save)
            seconds = train_and_measure(runs, res, dev, data_root, workers, done, errors, progress)
            call["train_seconds"], training[0] = round(seconds, 1), False
            save()
        except KeyboardInterrupt:
            interrupted()
            raise
    if errors:
        raise HessbatchError(f"{len(errors)} failure(s) in this call (the rest is stored): {errors[0]}")
    return timings


def train_and_measure(runs, res, dev, data_root, workers, done, errors, progress) -> float:
    """Train and measure (in processes, overlapped, with several workers); add what failed to
    ``errors``; return the time the training took."""
    def on_run(outcome):
        if outcome["state"] == "failed":
            print(f"failed: training run {outcome['key']}: {outcome['error']}", flush=True)

    if workers > 1:
        seconds, failed = overlapped(runs, res, dev, data_root, workers, done, on_run, keep_going=True)
        errors += failed
        return seconds
    seconds, failed = train_profile(runs, res, str(dev), data_root, "local", keep_going=True, progress=progress)
    errors += failed
    for e in failed:
        print(f"failed: {e}", flush=True)
    measure_chapters(runs, res, dev, data_root, done, progress)
    return seconds


def hardware(dev) -> str:
    """The machine a call computes on, as ``_timings.yml`` records it."""
    gpu = f"{torch.cuda.get_device_name(dev)}, " if dev.type == "cuda" else ""
    return f"{gpu}{os.cpu_count()} CPU cores ({platform.machine()})"


def _reporter(timings, dev, hw, call, errors, save):
    """What :func:`compute` does as each page ends: print it, record its timing, save."""
    def done(name, seconds, error=None, written=1):
        if error:
            errors.append(f"chapter {name}: {error}")
            print(f"{name}: failed after {seconds / 60:.1f} min: {error}", flush=True)
        elif not written and name in timings:
            print(f"{name}: already in the store (read in {seconds / 60:.1f} min; its timing is kept)", flush=True)
        elif record_timing(timings, name, seconds, str(dev), hw):
            print(f"{name}: {seconds / 60:.1f} min for what was missing, added to its earlier timing", flush=True)
        else:
            print(f"{name}: {seconds / 60:.1f} min", flush=True)
        call["failed"] = errors
        save()

    return done


def record_timing(timings: dict, name: str, seconds: float, device: str, hw: str) -> bool:
    """A page's compute time in a ``_timings.yml`` mapping: added to an earlier timing of the page
    on the same hardware (``calls`` counts them; returns True), else replacing it."""
    before = timings.get(name)
    if isinstance(before, dict) and before.get("hardware") == hw:
        timings[name] = {**before, "seconds": round(before["seconds"] + seconds, 1), "calls": before.get("calls", 1) + 1}
        return True
    timings[name] = {"seconds": round(seconds, 1), "device": device, "hardware": hw}
    return False


def measure_chapters(runs, res, device, data_root, done, progress: bool = False) -> None:
    """Each chapter's measurements, one after another in this process; ``done(name, seconds, error,
    written)`` as each ends (:func:`overlapped` runs them in processes)."""
    for name, chapter, params, _ in runs:
        done(*compute_one(name, chapter, params, res, str(device), data_root, progress=progress))


def overlapped(runs, res, device, data_root, workers: int, done, on_run=None,
               keep_going: bool = False, parts: int | None = None) -> tuple[float, list[str]]:
    """The pages' training runs and their measurements in one pool of ``workers`` processes, in
    the order of :class:`hessbatch.schedule.Schedule`: runs first, a page as soon as its runs are
    done, so measurements fill the cores the last long runs leave idle (put a chapter's first page
    first: its other pages reuse what it measures). Each page is measured in ``parts`` processes
    (default ``workers``), each starting at a different run (:meth:`Context.each`), so a page
    measured last does not leave cores idle. ``done(name, seconds, error, written)`` as each page
    ends (its wall time from its first part's start to its last part's end), ``on_run(outcome)``
    as each run ends. A process that dies (killed for memory, say) fails only the run or page
    that killed it (:class:`hessbatch.pool.Pool`). Returns the time the last run ended and the
    failed runs' errors."""
    from ..config import parent_keys, run_key
    from ..pool import Pool
    from ..schedule import Schedule
    from ..sweep import run_one, validate

    t0, root = time.perf_counter(), str(Path(res).resolve())
    configs = [c for w in registry.profile_train_configs({n: p for n, _, p, _ in runs}) for c in w]
    order = [(run_key(c), c.to_dict(), parent_keys(c)) for c, _ in validate(configs, data_root)]
    parts = parts or workers
    check(parts >= 1, f"parts must be >= 1, got {parts}")
    jobs = [(n, {run_key(c) for w in registry.profile_train_configs({n: p}) for c in w}, (n, c, p, (k, parts)))
            for n, c, p, _ in runs for k in range(parts)]
    plan = Schedule(order, jobs, keep_going)
    threads = max(1, (os.cpu_count() or 1) // workers)
    errors, trained_at = [], 0.0
    page = _Parts(parts, done)
    with Pool(workers) as pool:
        while True:
            while pool.free() and (step := plan.next()) is not None:
                kind, what = step
                if kind == "skip":
                    page.ended(what[0], time.perf_counter(), f"not measured: {what[1]}", 0)
                elif kind == "lost":
                    errors.append(f"training run {what[0]}: not trained: {what[1]}")
                elif kind == "run":
                    pool.submit(step, run_one, what[1], root, str(device), data_root, False, threads)
                else:
                    name, chapter, params, part = what
                    page.started(name, time.perf_counter())
                    pool.submit(step, compute_one, name, chapter, params, res, str(device), data_root, threads,
                                False, workers, part)
            if not pool.busy():
                break
            for (kind, what), result, error in pool.wait():
                if kind == "run":
                    _run_ended(result or {"key": what[0], "state": "failed", "error": error}, plan, errors, on_run)
                    trained_at = time.perf_counter() - t0
                else:
                    name, _, err, written = result or (what[0], 0.0, error, 0)
                    page.ended(name, time.perf_counter(), err, written)
    return trained_at, errors


def _run_ended(outcome: dict, plan, errors, on_run) -> None:
    """A training run has ended (its outcome, or a failure of its process): tell the schedule,
    record a failure, call ``on_run``."""
    plan.ended(outcome["key"], outcome["state"] != "failed")
    if outcome["state"] == "failed":
        errors.append(f"training run {outcome['key']}: {outcome['error'].splitlines()[0]}")
    if on_run is not None:
        on_run(outcome)


class _Parts:
    """A page measured in ``n`` parts: ``done`` once, when its last part ends, with the wall time
    from its first part's start, the first error and the entries written in all."""

    def __init__(self, n: int, done):
        self.n, self.done, self.pages = n, done, {}

    def started(self, name: str, at: float) -> None:
        self.pages.setdefault(name, {"start": at, "ended": 0, "error": None, "written": 0})

    def ended(self, name: str, at: float, error: str | None, written: int) -> None:
        self.started(name, at)
        p = self.pages[name]
        p["ended"] += 1
        p["error"] = p["error"] or error
        p["written"] += written
        if p["ended"] == self.n:
            self.done(name, at - p["start"], p["error"], p["written"])


@contextmanager
def _on_sigterm(record):
    """Within the block, SIGTERM (what ``timeout`` sends) first calls ``record()``, then kills the
    process as before; outside the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        record()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
