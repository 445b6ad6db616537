"""The one progress-bar helper. Bars leave no line behind, and none is drawn when the caller
passes ``enabled=False`` or when ``$HESSBATCH_NO_PROGRESS`` is set (``--no-progress`` sets it,
so worker processes inherit it): logs and a GPU call's output then carry no bar lines."""

from __future__ import annotations

import contextlib
import os

NO_PROGRESS_ENV = "HESSBATCH_NO_PROGRESS"


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
    return tqdm(items, total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=not drawn,
                dynamic_ncols=True)
