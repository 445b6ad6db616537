"""The notebooks' runtime: their papermill parameters read back as objects, the plotting style,
and figures shown with their captions."""

from __future__ import annotations

import os

import yaml

from ..errors import HessbatchError

PROJECT_ENV = "HESSBATCH_PROJECT"


def coerce(value):
    """A papermill ``-p`` value as an object: ``'[32, 4096]'`` becomes a list, ``'{a: 1}'`` a dict."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise HessbatchError(f"cannot read parameter value {value!r}: {e}") from None
    return value


def setup(namespace: dict, chapter: str) -> dict:
    """Coerce a notebook's parameters in place (the chapter's declared parameters and the runtime
    ones), set the plotting style, return them as a dict."""
    from .registry import chapter as find

    params = {}
    for n in find(chapter).parameter_names():
        if n in namespace:
            namespace[n] = coerce(namespace[n])
            params[n] = namespace[n]
    project = os.environ.get(PROJECT_ENV)
    for n in ("results", "data_root"):  # `hessbatch book` passes them relative to the project
        if project and params.get(n) and not os.path.isabs(str(params[n])):
            params[n] = namespace[n] = os.path.join(project, str(params[n]))
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "figure.figsize": (6.4, 4.0)})
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="viridis")
    if params.get("results"):
        os.environ["HESSBATCH_RESULTS"] = str(params["results"])
    return params


def show_figure(caption: str) -> None:
    """Show the open figure(s), then their caption (in a notebook)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    plt.show()
    display(Markdown(caption))


def glue(name: str, markdown: str) -> None:
    """Make ``markdown`` available to the page's text as ``{glue:md}`name```. Every use of the book
    toolchain's glue goes through here (Jupyter Book 1's ``myst_nb.glue``), so that a port to
    Jupyter Book 2 touches this one function."""
    from IPython.display import Markdown
    from myst_nb import glue as myst_glue

    myst_glue(name, Markdown(markdown), display=False)


CLAIMS_GLUE = "claims"


def glue_claims(checks, prefix: str) -> None:
    """Each claim's sentence as ``{prefix}_claim_{i}``, for the chapter's text, and every verdict
    as ``claims`` (``CLAIMS_GLUE``), which the book's introduction gathers from every page."""
    from .claims import sentence, verdicts

    for i, row in checks.iterrows():
        glue(f"{prefix}_claim_{i}", sentence(row))
    glue(CLAIMS_GLUE, verdicts(checks))


def glued_markdown(path, name: str) -> str | None:
    """The Markdown glued as ``name`` in the executed notebook at ``path`` (None if none was)."""
    import nbformat
    from myst_nb.ext.glue import GLUE_PREFIX

    for cell in nbformat.read(str(path), as_version=4).cells:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                data = out.get("data", {})
                return data.get(GLUE_PREFIX + "text/markdown", data.get("text/markdown"))
    return None


def executed(path) -> bool:
    """Whether the notebook at ``path`` holds any output (a source copy holds none)."""
    import nbformat

    return any(cell.get("outputs") for cell in nbformat.read(str(path), as_version=4).cells)
