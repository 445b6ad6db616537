"""The process pool that outlives a worker's death: the task that kills its process fails alone,
every other task completes, and the pool goes on taking tasks; its workers exit with their parent."""

import math
import os
import subprocess
import sys
from pathlib import Path

from hessbatch.pool import DIED, Pool
from processes import alive, children


def _drain(pool, queue):
    out = {}
    while queue or pool.busy():
        while queue and pool.free():
            tag, fn, *args = queue.pop(0)
            pool.submit(tag, fn, *args)
        for tag, result, error in pool.wait():
            assert tag not in out
            out[tag] = (result, error)
    return out


def test_a_dying_task_fails_alone_and_the_others_complete():
    queue = [("a", math.sqrt, 4.0), ("dies", os._exit, 9), ("b", math.sqrt, 9.0), ("raises", int, "x"),
             ("c", math.sqrt, 16.0), ("d", math.sqrt, 25.0)]
    with Pool(2) as pool:
        out = _drain(pool, queue)
        assert pool.restarts >= 1
        assert _drain(pool, [("after", math.sqrt, 36.0)]) == {"after": (6.0, None)}
    assert {t: r for t, (r, e) in out.items() if e is None} == {"a": 2.0, "b": 3.0, "c": 4.0, "d": 5.0}
    assert out["dies"] == (None, f"BrokenProcessPool: {DIED}")
    assert out["raises"][0] is None and out["raises"][1].startswith("ValueError: invalid literal for int()")


def test_without_a_death_nothing_is_run_twice_or_alone():
    with Pool(2) as pool:
        out = _drain(pool, [(i, math.sqrt, float(i * i)) for i in range(5)])
        assert pool.restarts == 0
    assert out == {i: (float(i), None) for i in range(5)}


PARENT = """
import sys, time
from hessbatch.pool import Pool
pool = Pool(2)
pool.submit("a", time.sleep, 120)
pool.submit("b", time.sleep, 120)
print("ready", flush=True)
time.sleep(120)
"""


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"

    deadline = time.time() + 60
    while len(children(parent.pid)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = children(parent.pid)
    assert len(workers) >= 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(workers) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(workers) == []
