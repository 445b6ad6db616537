"""The order in which a pool takes runs and the measurements that need them, simulated on a clock."""

import heapq

from hessbatch.schedule import Schedule


def simulate(runs, jobs, workers, durations, fails=(), keep_going=False):
    """Execute a schedule on ``workers`` simulated workers. ``runs``: name or (name, parents).
    Returns (start, end, kind, name) per item executed and what was skipped or lost."""
    runs = [(r, r, set()) if isinstance(r, str) else (r[0], r[0], set(r[1])) for r in runs]
    plan = Schedule(runs, [(n, set(needs), n) for n, needs in jobs], keep_going)
    clock, busy, log, skipped = 0.0, [], [], []
    while True:
        while len(busy) < workers and (step := plan.next()) is not None:
            kind, what = step
            if kind in ("skip", "lost"):
                skipped.append(what)
                continue
            name = what[0] if kind == "run" else what
            heapq.heappush(busy, (clock + durations[name], clock, kind, name))
        if not busy:
            return log, skipped
        end, start, kind, name = heapq.heappop(busy)
        clock = end
        log.append((start, end, kind, name))
        if kind == "run":
            plan.ended(name, name not in fails)


def starts(log):
    return {name: start for start, _, _, name in log}


def test_a_page_is_measured_while_the_last_long_run_trains():
    durations = {"short": 1, "long": 10, "A": 8, "B": 3}
    log, _ = simulate(["long", "short"], [("A", ["short"]), ("B", ["long"])], 2, durations)
    assert starts(log)["A"] == 1 and starts(log)["B"] == 10
    assert max(end for _, end, _, _ in log) == 13  # train-then-measure: 10 + 8
    log1, _ = simulate(["long", "short"], [("A", ["short"]), ("B", ["long"])], 1, durations)
    assert [name for *_, name in log1] == ["long", "short", "A", "B"]  # runs first on a single worker


def test_a_run_starts_once_its_parent_is_done_and_pages_fill_the_gap():
    durations = {"a": 2, "b": 6, "child": 2, "P": 3, "Q": 1}
    log, _ = simulate(["a", "b", ("child", ["a"])], [("P", ["a"]), ("Q", ["child"])], 2, durations)
    assert starts(log) == {"a": 0, "b": 0, "child": 2, "P": 4, "Q": 6}
    log, _ = simulate([("child", ["b"]), "a", "b"], [("Q", ["child"])], 1, durations)
    assert [name for *_, name in log] == ["a", "b", "child", "Q"]  # a run waits; the next ready one goes


def test_a_failed_run_skips_its_pages_and_stops_new_runs():
    durations = {"a": 1, "b": 5, "c": 1, "P": 1, "Q": 1, "R": 1}
    jobs = [("P", ["a"]), ("Q", ["b"]), ("R", ["c"])]
    log, skipped = simulate(["a", "b", "c"], jobs, 1, durations, fails={"a"})
    assert [name for *_, name in log] == ["a"]
    assert skipped == [("P", "a training run it needs failed"), ("Q", "training stopped at a failed run"),
                       ("R", "training stopped at a failed run")]
    log, skipped = simulate(["a", "b", "c"], jobs, 1, durations, fails={"a"}, keep_going=True)
    assert [name for *_, name in log] == ["a", "b", "c", "Q", "R"]
    assert skipped == [("P", "a training run it needs failed")]


def test_a_run_whose_parent_failed_is_lost_and_so_are_its_pages():
    durations = {"a": 1, "child": 1, "b": 1, "P": 1, "Q": 1}
    log, skipped = simulate(["a", ("child", ["a"]), "b"], [("P", ["child"]), ("Q", ["b"])], 1, durations,
                            fails={"a"}, keep_going=True)
    assert [name for *_, name in log] == ["a", "b", "Q"]
    assert skipped == [("child", "a run it starts from failed"), ("P", "a training run it needs failed")]


def test_pages_without_runs_and_a_parent_outside_the_list():
    log, _ = simulate([], [("P", []), ("Q", [])], 2, {"P": 1, "Q": 2})
    assert sorted((s, n) for s, _, _, n in log) == [(0, "P"), (0, "Q")]
    log, _ = simulate([("child", ["in-the-store"])], [("P", ["child"])], 1, {"child": 1, "P": 1})
    assert [name for *_, name in log] == ["child", "P"]


def test_parent_keys_name_the_start_and_the_guide():
    from hessbatch.config import parent_keys

    base = {"model": "MLP", "dataset": "mnist5k", "batch_size": 10}
    assert parent_keys(base) == set()
    both = {**base, "init_from": "a" * 16, "sample_smoothing": {"guide": "b" * 16, "alpha": 0.3}}
    assert parent_keys(both) == {"a" * 16, "b" * 16}
