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


def _command_lines(text: str) -> list[str]:
    """The ``hessbatch ...`` commands of a page's bash blocks, continuation lines joined, comments and
    what follows ``&&`` dropped."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].split("&&")[0].strip()
            if line.startswith("hessbatch "):
                out.append(line)
    return out


@pytest.mark.parametrize("page", ["book/guide.md", "README.md"])
def test_every_command_of_the_guide_and_the_readme_parses(page):
    """The shell examples need data or a GPU to run; their every command and flag must still exist."""
    import shlex

    from hessbatch.paper.parser import build_parser

    lines = _command_lines((GUIDE.parents[1] / page).read_text())
    assert len(lines) >= 3
    parser = build_parser()
    for line in lines:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{page}: {line!r} does not parse")


def test_the_guides_papermill_example_names_parameters_of_its_notebook():
    import shlex

    from hessbatch.paper.registry import chapter

    (line,) = [ln.split(" #")[0] for ln in GUIDE.read_text().splitlines() if ln.startswith("papermill ")]
    args = shlex.split(line)
    names = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    notebook = args[1].removeprefix("book/").removesuffix(".ipynb")
    assert names and set(names) <= set(chapter(notebook).parameter_names()), names
