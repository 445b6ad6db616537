"""Book profiles (``params/<name>.yaml``): ``common`` parameters for every chapter, a ``chapters``
mapping from notebook name to its own parameters, and optional ``variants`` per chapter (label →
parameters, with an optional ``title`` and ``optional``): the notebook is then executed once per
variant, the first under the chapter's own name, the others as ``<chapter>--<label>``. A
profile's ``results`` names its result store (relative to the checkout) when none is given."""

from __future__ import annotations

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
    check(isinstance(params.get("chapters"), dict) and params["chapters"],
          f"{path}: a book profile needs a non-empty 'chapters' mapping")
    for name, ch in params["chapters"].items():
        check(isinstance(ch, dict), f"{path}: chapters.{name} must be a mapping")
        check((repo_root() / "book" / f"{name}.ipynb").is_file(), f"{path}: no notebook book/{name}.ipynb")
        variants = ch.get("variants")
        check(variants is None or (isinstance(variants, dict) and variants
                                   and all(isinstance(v, dict) for v in variants.values())),
              f"{path}: chapters.{name}.variants must map labels to parameter mappings")
    notes = params.get("notes")
    check(notes is None or (repo_root() / "book" / str(notes)).is_file(),
          f"{path}: notes must name a file in book/, got {notes!r}")
    params.setdefault("profile", path.stem)
    return params


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
