"""A chapter measured by several processes at once: each part starts at a different item, the
store computes every entry once, and the page is reported once with its wall time."""

import shutil
import time

import pandas as pd
import pytest
import torch

from hessbatch.paper.chapters.common import Context
from hessbatch.paper.compute import _Parts, compute_one, overlapped
from hessbatch.paper.profiles import load_profile, selected
from hessbatch.paper.registry import chapter as find_chapter
from hessbatch.paper.registry import run_chapter
from hessbatch.pool import DIED
from hessbatch.store import Store


def test_each_part_starts_at_a_different_item_and_covers_all(tmp_path):
    orders = [list(Context(Store(tmp_path), progress=False, part=(k, 3)).each(range(7), "x")) for k in range(3)]
    assert orders == [[0, 1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 0, 1], [4, 5, 6, 0, 1, 2, 3]]
    assert list(Context(Store(tmp_path), progress=False).each("ab", "x")) == ["a", "b"]
    assert list(Context(Store(tmp_path), progress=False, part=(1, 4)).each([9], "x")) == [9]


def test_a_page_in_parts_is_reported_once_when_its_last_part_ends():
    seen = []
    parts = _Parts(2, lambda *a: seen.append(a))
    parts.started("p", 10.0)
    parts.started("p", 12.0)
    parts.ended("p", 15.0, None, 3)
    assert seen == []
    parts.ended("p", 19.0, "RuntimeError: boom", 2)
    assert seen == [("p", 9.0, "RuntimeError: boom", 5)]
    parts.ended("q", 4.0, "not measured: a training run it needs failed", 0)
    parts.ended("q", 4.0, "not measured: a training run it needs failed", 0)
    assert seen[-1] == ("q", 0.0, "not measured: a training run it needs failed", 0)


def test_two_processes_measure_a_chapter_as_one_does(tmp_path):
    """Chapter 1 of the smoke profile measured in 2 parts writes the entries one process writes,
    each once, with the same numbers (one thread everywhere, as in the parts' processes)."""
    runs = [r for r in selected(load_profile("smoke"), ["01-batch-size"], optional=False) if r[0] == r[1]]
    name, chapter, params, _ = runs[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = Store(tmp_path / "one")
        for cfg in find_chapter(chapter).train_configs(params):
            Context(one, progress=False).train(cfg)
        shutil.copytree(one.root, tmp_path / "parts")
        trained = len(one.entries())
        t0 = time.perf_counter()
        _, _, error, written = compute_one(name, chapter, params, str(one.root), "cpu", None)
        print(f"one process: {time.perf_counter() - t0:.1f} s")
    finally:
        torch.set_num_threads(threads)
    assert error is None and written > 0
    seen = []
    overlapped(runs, str(tmp_path / "parts"), "cpu", None, 2, lambda *a: seen.append(a))
    assert [(n, e, w) for n, _, e, w in seen] == [(name, None, written)]
    parts = Store(tmp_path / "parts", read_only=True)
    assert sorted((e.kind, e.key) for e in parts.entries()) == sorted((e.kind, e.key) for e in one.entries())
    assert len(one.entries()) == trained + written
    a = run_chapter(chapter, params, parts)["table"]
    b = run_chapter(chapter, params, Store(one.root, read_only=True))["table"]
    pd.testing.assert_frame_equal(a, b)



@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_run_failing_in_a_worker_process_skips_only_the_pages_that_need_it(tmp_path, inject_failure, how):
    """A real failure in a pool process (an exception, or the process dying as in an out-of-memory
    kill): the page that needs the run is reported as not measured, the run's error is returned,
    and a page that does not need it is still measured."""
    inject_failure(how, 200, 15)
    runs = selected(load_profile("smoke"), ["01-batch-size", "04-saddle-free"], optional=False)
    runs = [r for r in runs if r[0] in ("01-batch-size", "04-saddle-free")]
    seen = {}
    _, errors = overlapped(runs, str(tmp_path / "store"), "cpu", None, 2,
                           lambda name, s, error=None, written=0: seen.update({name: error}), keep_going=True)
    assert len(errors) == 1 and errors[0].startswith("training run "), errors
    assert ("RuntimeError: injected" if how == "raise" else DIED) in errors[0]
    assert seen == {"01-batch-size": "not measured: a training run it needs failed", "04-saddle-free": None}
    store = Store(tmp_path / "store", read_only=True)
    assert sorted(e.config["config"]["batch_size"] for e in store.entries("train")) == [10, 50]
