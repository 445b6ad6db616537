"""Book profiles (``params/<name>.yaml``): ``common`` parameters for every chapter, a ``chapters``
mapping from notebook name to its own parameters, and optional ``variants`` per chapter (label →
parameters, with an optional ``title`` and ``optional``): the notebook is then executed once per
variant, the first under the chapter's own name, the others as ``<chapter>--<label>``. A
profile's ``results`` names its result store (relative to the checkout) when none is given."""

from __future__ import annotations

import ast
import json
import keyword
from pathlib import Path

from ..errors import HessbatchError, check
from ..params import load_params
from ..store import results_root


def repo_root() -> Path:
    """The folder holding ``_config.yml`` and ``book/`` (the checkout), or the current folder."""
    here = Path(__file__).resolve()
    for p in [Path.cwd(), *here.parents]:
        if (p / "_config.yml").is_file() and (p / "book").is_dir():
            return p
    raise HessbatchError("cannot find the book sources (_config.yml and book/): run from the repository checkout")


def profile_path(profile: str) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        return p
    return repo_root() / "params" / f"{profile}.yaml"


def load_profile(profile: str) -> dict:
    path = profile_path(profile)
    if not path.is_file():
        known = sorted(q.stem for q in (repo_root() / "params").glob("*.yaml") if "chapters" in q.read_text())
        raise HessbatchError(f"unknown profile {profile!r} (no {path}); choose one of: {', '.join(known)}")
    params = load_params(path)
    unknown = sorted(set(map(str, params)) - set(PROFILE_KEYS))
    check(not unknown, f"{path}: unknown top-level key(s) {', '.join(unknown)}; a profile has {', '.join(PROFILE_KEYS)}")
    check(isinstance(params.get("chapters"), dict) and params["chapters"],
          f"{path}: a book profile needs a non-empty 'chapters' mapping")
    check(isinstance(params.get("common", {}), dict), f"{path}: 'common' must be a mapping")
    for name, ch in params["chapters"].items():
        check(isinstance(ch, dict), f"{path}: chapters.{name} must be a mapping")
        check((repo_root() / "book" / f"{name}.ipynb").is_file(), f"{path}: no notebook book/{name}.ipynb")
        variants = ch.get("variants")
        check(variants is None or (isinstance(variants, dict) and variants
                                   and all(isinstance(v, dict) for v in variants.values())),
              f"{path}: chapters.{name}.variants must map labels to parameter mappings")
        _check_names(path, name, [*params.get("common", {}), *(k for k in ch if k != "variants"),
                                  *(k for v in (variants or {}).values() for k in v if k not in _VARIANT_KEYS)])
    notes = params.get("notes")
    check(notes is None or (repo_root() / "book" / str(notes)).is_file(),
          f"{path}: notes must name a file in book/, got {notes!r}")
    params.setdefault("profile", path.stem)
    return params


PROFILE_KEYS = ("profile", "results", "notes", "common", "chapters")


def notebook_parameters(chapter: str) -> list[str]:
    """The names its notebook's ``parameters`` cell assigns: the only names a profile may set."""
    nb = json.loads((repo_root() / "book" / f"{chapter}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]


def _check_names(path: Path, chapter: str, names) -> None:
    """Parameter names reach the notebook as code: each must be one of its parameters."""
    known = notebook_parameters(chapter)
    for n in names:
        check(isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n) and n in known,
              f"{path}: chapter {chapter} has no parameter {n!r}; its notebook's parameters are {', '.join(known)}")


def chapter_parameters(profile: dict, chapter: str, variant: str | None = None) -> dict:
    """A chapter's notebook parameters: ``common``, then the chapter's, then the variant's."""
    ch = {k: v for k, v in profile["chapters"][chapter].items() if k != "variants"}
    var = {k: v for k, v in (profile["chapters"][chapter].get("variants") or {}).get(variant, {}).items()
           if k not in _VARIANT_KEYS} if variant else {}
    return {**profile.get("common", {}), **ch, **var, "profile": profile["profile"]}


_VARIANT_KEYS = ("title", "optional")


def executions(profile: dict, chapters: list[str] | None = None,
               optional: bool = True) -> list[tuple[str, str, dict, str | None]]:
    """``(executed name, chapter, parameters, title)`` of every notebook execution of a profile.

    ``chapters`` names chapters (all their variants) or single variants as ``chapter--label``
    (``01-batch-size--C2``); the first variant's executed name is the chapter's own.
    A variant marked ``optional: true`` (it needs data a user may not have) is left out when
    ``optional`` is false, unless named."""
    out = []
    for chapter, ch in profile["chapters"].items():
        variants = ch.get("variants") or {}
        if not variants:
            if not chapters or chapter in chapters:
                out.append((chapter, chapter, chapter_parameters(profile, chapter), None))
        for i, (label, var) in enumerate(variants.items()):
            name = chapter if i == 0 else f"{chapter}--{label}"
            named = bool(chapters) and (name in chapters or f"{chapter}--{label}" in chapters)
            if chapters and not named and chapter not in chapters:
                continue
            if var.get("optional") and not optional and not named:
                continue
            out.append((name, chapter, chapter_parameters(profile, chapter, label), var.get("title", label)))
    return out


def profile_results(profile: dict, results: str | None) -> str:
    """The result store of a build: the argument, else the profile's ``results``, else the default."""
    if results:
        return str(Path(results).resolve())
    if profile.get("results"):
        return str((repo_root() / profile["results"]).resolve())
    return str(results_root(None).resolve())


def check_chapters(prof: dict, chapters: list[str] | None) -> None:
    """One error line for a chapter or variant name the profile does not have."""
    if chapters:
        known = [*prof["chapters"], *(f"{c}--{label}" for c, ch in prof["chapters"].items()
                                      for label in (ch.get("variants") or {}))]
        unknown = sorted(set(chapters) - set(known))
        check(not unknown, f"profile {prof['profile']!r} has no chapter(s) {', '.join(unknown)}; "
                           f"it has {', '.join(known)}")
