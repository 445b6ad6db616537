"""Build the book: run every chapter notebook through papermill with a profile's
parameters, then assemble the executed copies with Jupyter Book.

A profile (``params/<name>.yaml``) has ``common`` parameters for every chapter and a
``chapters`` mapping from notebook name to its own parameters. Executed notebooks,
figures and the HTML go to ``_build/<profile>/``; the sources in ``book/`` stay clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .errors import HessbatchError, check
from .params import load_params

ROOT_FILES = ("_config.yml", "_toc.yml", "references.bib")


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
    params.setdefault("profile", path.stem)
    return params


def chapter_parameters(profile: dict, chapter: str) -> dict:
    return {**profile.get("common", {}), **profile["chapters"][chapter], "profile": profile["profile"]}


def coerce(value):
    """A papermill ``-p`` value as an object: ``'[32, 4096]'`` becomes a list, ``'{a: 1}'`` a dict."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise HessbatchError(f"cannot read parameter value {value!r}: {e}") from None
    return value


def setup(namespace: dict, names: list[str]) -> dict:
    """Coerce a notebook's parameters in place, set the plotting style, return them as a dict."""
    params = {}
    for n in names:
        namespace[n] = coerce(namespace[n])
        params[n] = namespace[n]
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


def provenance_table(profile: str, timings: list[tuple[str, float, str]]) -> str:
    """Markdown: the machine, and each chapter's wall time when it was last executed (a chapter whose
    results were already in the store only reads them, and is fast)."""
    import datetime
    import platform

    import torch

    from . import __version__
    from .figures import commit

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    lines = [f"Built {datetime.datetime.now():%Y-%m-%d %H:%M} with profile `{profile}` on {platform.machine()} "
             f"({os.cpu_count()} cores{gpu}), torch {torch.__version__}, hessbatch {__version__} "
             f"(commit `{commit()}`). Wall time of each chapter when it was last executed (a chapter whose "
             "results were already in the store only reads them):", "", "| chapter | device | wall time |",
             "|---|---|---:|"]
    lines += [f"| [{n}]({n}) | {d} | {t / 60:.1f} min |" for n, t, d in timings]
    return "\n".join(lines) + "\n"


def _stage(root: Path, out: Path) -> Path:
    """Copy the book's non-notebook sources into ``out/src``; executed notebooks already there stay,
    so a build of some chapters keeps the others' last executed copies."""
    src = out / "src"
    (src / "book").mkdir(parents=True, exist_ok=True)
    for f in ROOT_FILES:
        if (root / f).is_file():
            shutil.copy2(root / f, src / f)
    for f in (root / "book").iterdir():
        if f.is_file() and f.suffix in (".md", ".bib", ".png", ".svg"):
            shutil.copy2(f, src / "book" / f.name)
    return src


def build(profile: str = "quick", results: str | None = None, device: str = "cpu", data_root: str | None = None,
          out: str | None = None, chapters: list[str] | None = None, html: bool = True, executor: str = "local",
          scheduler: str | None = None, workers: int | None = None) -> Path:
    """Execute the chapters with papermill and build the HTML; return the path of ``index.html``.

    With ``executor="dask"`` the profile's training runs are first computed as a sweep on a
    Dask cluster (see ``hessbatch.sweep``); the notebooks then find them in the store.
    """
    import papermill as pm

    from .store import Store, results_root

    prof = load_profile(profile)
    root = repo_root()
    names = list(prof["chapters"])
    if chapters:
        unknown = sorted(set(chapters) - set(names))
        check(not unknown, f"profile {prof['profile']!r} has no chapter(s) {', '.join(unknown)}")
        names = [n for n in names if n in chapters]
    out_dir = Path(out or root / "_build" / prof["profile"]).resolve()
    src = _stage(root, out_dir)
    res = str(Path(results).resolve()) if results else str(results_root(None).resolve())
    if executor != "local":
        from .experiments import profile_train_configs
        from .sweep import run_sweep

        for wave in profile_train_configs({n: chapter_parameters(prof, n) for n in names}):
            table = run_sweep(wave, Store(res), device=device, data_root=data_root, executor=executor,
                              scheduler=scheduler, workers=workers)
            failed = table[table["state"] == "failed"]
            check(failed.empty, f"{len(failed)} training run(s) failed on {executor}: {failed['error'].iloc[0] if len(failed) else ''}")
    timings = []
    for i, name in enumerate(names, 1):
        params = {**chapter_parameters(prof, name), "results": res, "device": device, "data_root": data_root}
        print(f"[{i}/{len(names)}] {name}", flush=True)
        t0 = time.perf_counter()
        target = src / "book" / f"{name}.ipynb"
        try:
            pm.execute_notebook(str(root / "book" / f"{name}.ipynb"), str(target), parameters=params,
                                cwd=str(src / "book"), kernel_name="python3", progress_bar=sys.stderr.isatty(),
                                report_mode=False)
        except pm.PapermillExecutionError as e:
            raise HessbatchError(f"chapter {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                 f"(executed copy: {target})") from None
        timings.append((name, time.perf_counter() - t0))
        print(f"      done in {timings[-1][1] / 60:.1f} min", flush=True)
    for name in prof["chapters"]:
        if name not in names and not (src / "book" / f"{name}.ipynb").exists():
            shutil.copy2(root / "book" / f"{name}.ipynb", src / "book" / f"{name}.ipynb")
    record = src / "book" / "_timings.yml"
    known = yaml.safe_load(record.read_text()) if record.is_file() else {}
    known = {**(known or {}), **{n: {"seconds": round(t, 1), "device": str(device)} for n, t in timings}}
    record.write_text(yaml.safe_dump(known))
    ordered = [(n, known[n]["seconds"], known[n]["device"]) for n in prof["chapters"] if n in known]
    (src / "book" / "_provenance.md").write_text(provenance_table(prof["profile"], ordered))
    if not html:
        return src
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src),
           "--path-output", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = out_dir / "jupyter-book.log"
    log.write_text(proc.stdout + proc.stderr)
    index = out_dir / "_build" / "html" / "index.html"
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise HessbatchError(f"jupyter-book build failed (log: {log}):\n{tail}")
    figs = src / "book" / "figures"
    if figs.is_dir():
        shutil.copytree(figs, out_dir / "_build" / "html" / "book" / "figures", dirs_exist_ok=True)
    return index
