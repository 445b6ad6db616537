"""Every Python example of the guide (book/guide.md) runs, top to bottom in one namespace, as a
reader would paste them; the cluster example only where its package (dask-jobqueue) is installed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "book" / "guide.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.M | re.S)


def test_the_guide_has_its_examples():
    assert len(BLOCKS) >= 3


def test_every_python_example_of_the_guide_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HESSBATCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("HESSBATCH_NO_PROGRESS", "1")
    namespace: dict = {}
    ran = 0
    for block in BLOCKS:
        needs = re.match(r"from (\w+)", block)
        if needs and needs.group(1) != "hessbatch" and importlib.util.find_spec(needs.group(1)) is None:
            continue  # a cluster's package, not a dependency of hessbatch
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 — the guide's own examples
        ran += 1
    assert ran >= 2 and namespace["e"].converged and len(namespace["c"].lambda_max) == len(namespace["y"])
    assert len(namespace["layers"]) > 0 and (namespace["g"].eigenvalues > 0).all()   # the GGN is PSD
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("ran every example but the SLURM one (dask-jobqueue is not installed)")
