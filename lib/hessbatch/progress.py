"""The one progress-bar helper. Bars leave no line behind, and none is drawn when the caller
passes ``show=False`` or when ``$HESSBATCH_NO_PROGRESS`` is set (``--no-progress`` sets it,
so worker processes inherit it): logs and a GPU call's output then carry no bar lines.

Drawn or not, every bar also reports its progress as JSON lines to the file named by
``$HESSBATCH_EVENTS`` when it is set: that is how ``hessbatch book`` follows a chapter that runs
inside a notebook kernel."""

from __future__ import annotations

import contextlib
import json
import os
import time

NO_PROGRESS_ENV = "HESSBATCH_NO_PROGRESS"
EVENTS_ENV = "HESSBATCH_EVENTS"


def enabled(requested: bool = True) -> bool:
    """Whether a bar asked for with ``requested`` is drawn."""
    return bool(requested) and not os.environ.get(NO_PROGRESS_ENV)


@contextlib.contextmanager
def disabled():
    """No bars inside the block, in this process and in the processes it starts."""
    before = os.environ.get(NO_PROGRESS_ENV)
    os.environ[NO_PROGRESS_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[NO_PROGRESS_ENV]
        else:
            os.environ[NO_PROGRESS_ENV] = before


def bar(items=None, *, total: int | None = None, desc: str = "", unit: str = "it", show: bool = True,
        leave: bool = False, initial: int = 0):
    """A tqdm bar over ``items`` (or of ``total`` steps). A disabled bar still counts and
    accepts ``update``/``set_postfix`` but draws nothing; ``tqdm.auto`` is imported only for a
    drawn bar (in a notebook kernel without widgets its import warns)."""
    drawn = enabled(show)
    if drawn:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    t = tqdm(items, total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=not drawn,
             dynamic_ncols=True)
    events = os.environ.get(EVENTS_ENV)
    return _Reporting(t, items, total, desc, unit, initial, events) if events else t


class _Reporting:
    """A bar that also appends its state to an events file (at most twice a second, and when done)."""

    def __init__(self, bar, items, total, desc, unit, initial, path):
        self.bar, self.items, self.desc, self.unit, self.path = bar, items, desc, unit, path
        self.total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        self.n, self.postfix, self.last = initial, "", 0.0
        self._emit(force=True)

    def _emit(self, force=False, done=False):
        now = time.monotonic()
        if not (force or done or now - self.last >= 0.5):
            return
        self.last = now
        line = json.dumps({"desc": self.desc, "n": self.n, "total": self.total, "unit": self.unit,
                           "postfix": self.postfix, "done": done, "time": time.time()})
        with contextlib.suppress(OSError), open(self.path, "a") as f:
            f.write(line + "\n")

    def __iter__(self):
        for item in self.bar:
            yield item
            self.n += 1
            self._emit()
        self._emit(done=True)

    def __len__(self):
        return len(self.bar)

    def update(self, n=1):
        self.n += n
        self.bar.update(n)
        self._emit()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())
        self.bar.set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = s
        self.bar.set_postfix_str(s, refresh=refresh)

    def close(self):
        self.bar.close()
        self._emit(done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
