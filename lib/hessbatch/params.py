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
from .schema import YAML_BYTES, load_yaml

GRID_MAX = 10_000   # runs one sweep file may ask for


def load_params(path: str | Path) -> dict:
    """Read a parameter file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise HessbatchError(f"parameter file {path} does not exist")
    try:
        check(path.stat().st_size <= YAML_BYTES, f"{path}: larger than {YAML_BYTES >> 20} MiB")
        params = load_yaml(path.read_text(), str(path))
    except HessbatchError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise HessbatchError(f"{path}: not a YAML text file ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HessbatchError(f"{path}: malformed YAML{where}: {problem}") from None
    check(isinstance(params, dict), f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    _check_keys(params, str(path))
    return params


def _check_keys(value, where: str, seen=None) -> None:
    """Every mapping's keys are texts (YAML also allows numbers, lists, null); a part shared
    through a YAML alias is looked at once."""
    seen = set() if seen is None else seen
    if not isinstance(value, (dict, list)) or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, list):
        for v in value:
            _check_keys(v, where, seen)
        return
    for k, v in value.items():
        check(isinstance(k, str), f"{where}: a key must be a text, got {k!r}")
        _check_keys(v, f"{where}: {k}", seen)


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
    n = 1
    for v in params.get("grid", {}).values():
        n *= len(v)
        check(n <= GRID_MAX, f"{path}: the grid asks for more than {GRID_MAX} runs")
    return params


def expand_grid(params: dict) -> list[dict]:
    """One configuration dict per combination of the grid, over the ``train`` defaults."""
    base, grid = dict(params.get("train", {})), params.get("grid", {})
    keys = list(grid)
    return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]
