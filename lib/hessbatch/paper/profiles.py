"""Book profiles (``params/<name>.yaml``): ``common`` parameters for every chapter, a ``chapters``
mapping from notebook name to its own parameters, and optional ``variants`` per chapter (label →
parameters, with an optional ``title`` and ``optional``): the notebook is then executed once per
variant, the first under the chapter's own name, the others as ``<chapter>--<label>``. A
profile's ``results`` names its result store (relative to the checkout) when none is given."""

from __future__ import annotations

import ast
import itertools
import json
import keyword
import re
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
        sweep = ch.get("sweep")
        check(sweep is None or (isinstance(sweep, dict) and sweep and all(
            isinstance(v, list) and v and all(isinstance(x, (str, int, float, bool)) for x in v) for v in sweep.values())),
              f"{path}: chapters.{name}.sweep must map parameter names to non-empty lists of values")
        _check_names(path, name, [*params.get("common", {}), *(k for k in ch if k not in ("variants", "sweep")),
                                  *(sweep or {}),
                                  *(k for v in (variants or {}).values() for k in v if k not in _VARIANT_KEYS)])
    notes = params.get("notes")
    book = (repo_root() / "book").resolve()
    check(notes is None or (isinstance(notes, str) and book in (book / notes).resolve().parents
                            and (book / notes).is_file()),
          f"{path}: notes must name a file in book/, got {notes!r}")
    params.setdefault("profile", path.stem)
    return params


PROFILE_KEYS = ("profile", "results", "notes", "common", "chapters", "plans")


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
    ch = {k: v for k, v in profile["chapters"][chapter].items() if k not in ("variants", "sweep")}
    var = {k: v for k, v in (profile["chapters"][chapter].get("variants") or {}).get(variant, {}).items()
           if k not in _VARIANT_KEYS} if variant else {}
    return {**profile.get("common", {}), **ch, **var, "profile": profile["profile"]}


_VARIANT_KEYS = ("title", "optional")


def _label(values: dict) -> str:
    """``attack-fgsm10``: parameter values as part of a page name (and of its figure IDs)."""
    return "--".join(f"{k}-{re.sub(r'[^A-Za-z0-9_.]+', '_', str(v)).strip('_')}" for k, v in values.items())


def only_batch_sizes(params: dict, sizes: list) -> dict:
    """A page's parameters cut to some of its batch sizes: ``batch_sizes``, and every other list of
    batch sizes chosen among them (``whole_set_batch_sizes``, ``plane_batch_sizes``) kept to those."""
    full = params.get("batch_sizes") or []
    cut = {k: [b for b in v if b in sizes] for k, v in params.items()
           if k.endswith("_batch_sizes") and isinstance(v, list) and set(v) <= set(full)}
    return {**params, **cut, "batch_sizes": list(sizes)}


def _pages(profile: dict, chapter: str, overrides: dict) -> list[dict]:
    """Every page of a chapter: one per variant and per combination of its ``sweep`` values, with
    ``overrides`` (``--set``) applied. The first page of the first variant keeps the chapter's name."""
    ch = profile["chapters"][chapter]
    variants = list((ch.get("variants") or {None: {}}).items())
    sweep = ch.get("sweep") or {}
    combos = [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())]
    pages = []
    for i, (label, var) in enumerate(variants):
        base = chapter if i == 0 else f"{chapter}--{label}"
        for j, combo in enumerate(combos):
            changed = {**combo, **overrides}
            name = base if j == 0 and not overrides else f"{base}--{_label({**combo, **overrides})}"
            plain = base if j == 0 else f"{base}--{_label(combo)}"  # its name without the overrides
            aliases = [f"{chapter}--{label}"] if label and plain == chapter else []
            aliases += [plain] if plain != name else []
            title = ", ".join([*([var.get("title", label)] if label else []),
                               *(f"{k} = {v}" for k, v in changed.items())]) or None
            params = chapter_parameters(profile, chapter, label)
            if isinstance(changed.get("batch_sizes"), list):  # lists chosen among the batch sizes follow them
                params = only_batch_sizes(params, changed["batch_sizes"])
            params = {**params, **changed}
            params["variant"] = name[len(chapter) + 2:] or None
            pages.append({"name": name, "chapter": chapter, "params": params, "title": title, "aliases": aliases,
                          "optional": bool(var.get("optional"))})
    return pages


def executions(profile: dict, chapters: list[str] | None = None, optional: bool = True,
               overrides: dict | None = None) -> list[tuple[str, str, dict, str | None]]:
    """``(executed name, chapter, parameters, title)`` of every notebook execution of a profile.

    A chapter runs once per variant (another model or dataset) and per value of each parameter
    its ``sweep`` lists; ``chapters`` names chapters (all their pages) or single pages by their
    executed name (``01-batch-size--C2``, ``01-batch-size--attack-fgsm10``); the first variant's
    first page is the chapter's own name, also reachable as ``chapter--label``. A variant marked
    ``optional: true`` (it needs data a user may not have) is left out when ``optional`` is
    false, unless named. ``overrides`` set parameters of the chosen pages (``--set``); their
    names and titles carry the values."""
    out = []
    for chapter in profile["chapters"]:
        for page in _pages(profile, chapter, overrides or {}):
            named = bool(chapters) and bool({page["name"], *page["aliases"]} & set(chapters))
            if chapters and not named and chapter not in chapters:
                continue
            if page["optional"] and not optional and not named:
                continue
            out.append((page["name"], chapter, page["params"], page["title"]))
    return out


def page_names(profile: dict) -> list[str]:
    """Every name ``--chapters`` takes: the chapters, their pages, and ``chapter--label`` aliases."""
    pages = [p for c in profile["chapters"] for p in _pages(profile, c, {})]
    return list(dict.fromkeys([*profile["chapters"], *(n for p in pages for n in [p["name"], *p["aliases"]])]))


def selected(prof: dict, chapters: list[str] | None = None, overrides: dict | None = None,
             optional: bool = True) -> list[tuple[str, str, dict, str | None]]:
    """The executions ``hessbatch book`` or ``compute`` runs, every name and value checked before
    anything runs: the pages named, the ``--set`` names (parameters of each chosen chapter's
    notebook), and every page's parameters (an unknown attack, say)."""
    from .registry import chapter as find, profile_train_configs

    check_chapters(prof, chapters)
    runs = executions(prof, chapters, optional, overrides)
    for c in dict.fromkeys(chapter for _, chapter, _, _ in runs):
        _check_names(Path(f"--set of {prof['profile']}"), c, overrides or {})
    for _, c, params, _ in runs:
        find(c).params(params)
    profile_train_configs({n: p for n, _, p, _ in runs})   # every run's options, as training will check them
    return runs


def parse_overrides(items: list[str] | None) -> dict:
    """``NAME=VALUE`` pairs (``--set``) as parameters; a value is read as YAML (``[16, 64]`` is a
    list, ``0.1`` a number), and kept as text where it is not YAML."""
    import yaml

    from ..schema import load_yaml

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        check(sep and name.strip(), f"--set takes NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = load_yaml(value, f"--set {name.strip()}")
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def profile_results(profile: dict, results: str | None) -> str:
    """The result store of a build: the argument, else the profile's ``results``, else the default."""
    if results:
        return str(Path(results).resolve())
    if profile.get("results"):
        return str((repo_root() / profile["results"]).resolve())
    return str(results_root(None).resolve())


def check_chapters(prof: dict, chapters: list[str] | None) -> None:
    """One error line for a chapter or page name the profile does not have."""
    if chapters:
        known = page_names(prof)
        unknown = sorted(set(chapters) - set(known))
        check(not unknown, f"profile {prof['profile']!r} has no chapter(s) {', '.join(unknown)}; "
                           f"it has {', '.join(known)}")
