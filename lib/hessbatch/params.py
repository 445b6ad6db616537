"""Parameter files (YAML): a ``train`` block of defaults and a ``grid`` of values to sweep.

.. code-block:: yaml

    train:               # any TrainConfig field
      model: M1
      dataset: mnist5k
      max_epochs: 60
    grid:                # every combination becomes one run
      batch_size: [64, 256, 1024]
      seed: [0, 1, 2]
"""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from .errors import HessbatchError, check


def load_params(path: str | Path) -> dict:
    """Read a parameter file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise HessbatchError(f"parameter file {path} does not exist")
    try:
        params = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise HessbatchError(f"{path}: not a YAML text file ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HessbatchError(f"{path}: malformed YAML{where}: {problem}") from None
    check(isinstance(params, dict), f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def load_sweep(path: str | Path) -> dict:
    """A sweep's parameter file: only ``train`` and ``grid`` at the top level, at least one of them."""
    params = load_params(path)
    unknown = sorted(set(map(str, params)) - {"train", "grid"})
    check(not unknown, f"{path}: unknown top-level key(s) {', '.join(unknown)}; a sweep file has 'train' and 'grid'")
    check(params, f"{path}: a sweep file needs a 'train' or a 'grid' block")
    for block in ("train", "grid"):
        check(isinstance(params.get(block, {}), dict), f"{path}: '{block}' must be a mapping")
    for k, v in params.get("grid", {}).items():
        check(isinstance(v, list) and len(v) > 0, f"{path}: grid.{k} must be a non-empty list, got {v!r}")
    return params


def expand_grid(params: dict) -> list[dict]:
    """One configuration dict per combination of the grid, over the ``train`` defaults."""
    base, grid = dict(params.get("train", {})), params.get("grid", {})
    keys = list(grid)
    return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]
