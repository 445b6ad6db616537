"""The order in which a pool takes runs and the measurements that need them, simulated on a clock."""

import heapq

from hessbatch.schedule import Schedule


def simulate(waves, jobs, workers, durations, fails=(), keep_going=False):
    """Execute a schedule on ``workers`` simulated workers; return (start, end, kind, name) per item
    and the skipped jobs."""
    plan = Schedule([[(k, k) for k in w] for w in waves], [(n, set(needs), n) for n, needs in jobs], keep_going)
    clock, busy, log, skipped = 0.0, [], [], []
    while True:
        while len(busy) < workers and (step := plan.next()) is not None:
            kind, what = step
            if kind == "skip":
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


def test_a_page_is_measured_while_the_last_long_run_trains():
    durations = {"short": 1, "long": 10, "A": 8, "B": 3}
    log, _ = simulate([["long", "short"]], [("A", ["short"]), ("B", ["long"])], 2, durations)
    starts = {name: start for start, _, _, name in log}
    assert starts["A"] == 1          # train-then-measure would start it at 10
    assert starts["B"] == 10
    assert max(end for _, end, _, _ in log) == 13  # train-then-measure: 10 + 8
    log1, _ = simulate([["long", "short"]], [("A", ["short"]), ("B", ["long"])], 1, durations)
    assert [name for *_, name in log1] == ["long", "short", "A", "B"]  # runs first on a single worker


def test_the_second_wave_waits_for_the_first_and_pages_fill_the_gap():
    durations = {"a": 2, "b": 6, "child": 2, "P": 3, "Q": 1}
    log, _ = simulate([["a", "b"], ["child"]], [("P", ["a"]), ("Q", ["child"])], 2, durations)
    starts = {name: start for start, _, _, name in log}
    assert starts["P"] == 2 and starts["child"] == 6 and starts["Q"] == 8


def test_a_failed_run_skips_its_pages_and_stops_new_runs():
    durations = {"a": 1, "b": 5, "c": 1, "P": 1, "Q": 1, "R": 1}
    jobs = [("P", ["a"]), ("Q", ["b"]), ("R", ["c"])]
    log, skipped = simulate([["a", "b", "c"]], jobs, 1, durations, fails={"a"})
    assert [name for *_, name in log] == ["a"]
    assert skipped == [("P", "a training run it needs failed"), ("Q", "training stopped at a failed run"),
                       ("R", "training stopped at a failed run")]
    log, skipped = simulate([["a", "b", "c"]], jobs, 1, durations, fails={"a"}, keep_going=True)
    assert [name for *_, name in log] == ["a", "b", "c", "Q", "R"]
    assert skipped == [("P", "a training run it needs failed")]


def test_pages_without_runs_and_a_profile_without_runs():
    log, _ = simulate([], [("P", []), ("Q", [])], 2, {"P": 1, "Q": 2})
    assert sorted((s, n) for s, _, _, n in log) == [(0, "P"), (0, "Q")]
