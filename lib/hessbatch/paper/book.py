"""Build the book: run every chapter notebook through papermill with a profile's parameters
(``hessbatch.paper.profiles``), then assemble the executed copies with Jupyter Book. Executed
notebooks, figures and the HTML go to ``_build/<profile>/``; the sources in ``book/`` stay clean.
A profile with committed results (``results:``) renders what was computed and a placeholder page
for the rest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..errors import HessbatchError
from ..store import Store
from . import registry
from .compute import fetch_data, overlapped, stored_split, train_profile
from ..config import run_key
from ..progress import EVENTS_ENV
from .following import Follower
from .intro import claims_summary, provenance_table
from .notebook import PROJECT_ENV
from .plans import read_progress
from .profiles import executions, load_profile, profile_results, repo_root, selected

ROOT_FILES = ("_config.yml", "_toc.yml", "references.bib")


def _stage(root: Path, out: Path, runs: list | None = None) -> Path:
    """Copy the book's non-notebook sources into ``out/src``; executed notebooks already there stay,
    so a build of some chapters keeps the others' last executed copies."""
    src = out / "src"
    (src / "book").mkdir(parents=True, exist_ok=True)
    for f in ROOT_FILES:
        if (root / f).is_file():
            shutil.copy2(root / f, src / f)
    if runs:
        toc = yaml.safe_load((root / "_toc.yml").read_text())
        entries = []
        for e in toc["chapters"]:
            chapter = e.get("file", "").removeprefix("book/")
            extra = [n for n, c, _, _ in runs if c == chapter and n != chapter]
            entries += [e] + [{"file": f"book/{n}"} for n in extra]
        toc["chapters"] = entries
        (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    for f in (root / "book").iterdir():
        if f.is_file() and f.suffix in (".md", ".bib", ".png", ".svg"):
            shutil.copy2(f, src / "book" / f.name)
    from .parser import reference

    (src / "book" / "cli-reference.md").write_text(reference())
    return src


def build(profile: str = "quick", results: str | None = None, device: str = "cpu", data_root: str | None = None,
          out: str | None = None, chapters: list[str] | None = None, html: bool = True, executor: str = "auto",
          scheduler: str | None = None, workers: int | None = None, download: bool = False,
          progress: bool = True, overrides: dict | None = None) -> Path:
    """Execute the chapters with papermill and build the HTML; return the path of ``index.html``.

    With ``executor="processes"`` the chosen pages are first computed without notebooks, as
    ``hessbatch compute`` does: in ``workers`` processes (the cores split between them), their
    training runs, and each page's measurements as soon as its runs are done (see
    :func:`hessbatch.paper.compute.overlapped`); the notebooks then only read the store. ``"auto"`` (the default) is that on a CPU of several cores, where
    small models gain from processes more than from threads, and ``"local"`` (each notebook
    computes what it shows) elsewhere. With ``"dask"`` only the training runs are computed first,
    as a sweep (see ``hessbatch.sweep``). With ``download``, missing datasets are fetched first.
    """
    prof = load_profile(profile)
    root = repo_root()
    runs = selected(prof, chapters, overrides)
    every = executions(prof)
    every += [r for r in runs if r[0] not in {e[0] for e in every}]
    out_dir = Path(out or root / "_build" / prof["profile"]).resolve()
    src = _stage(root, out_dir, every)
    res = profile_results(prof, results)
    if download:
        fetch_data(runs, data_root)
    stored = bool(prof.get("results") and not results)
    executor, workers = choose_executor(executor, workers, device)
    phases = []
    if executor != "local" and not stored:
        phases = _precompute(runs, res, device, data_root, executor, scheduler, workers, progress, src)
    notes = {}
    if stored:
        asked = {r[0]: r[2].get("batch_sizes") for r in runs}
        runs, absent = stored_split(runs, res, partial=True)
        progress = read_progress(res)
        for name, chapter, params, title in absent:
            print(f"[-] {name}: not computed in {res}; a placeholder page says how to compute it", flush=True)
            variants = list(prof["chapters"][chapter].get("variants") or {})
            only = f"{chapter}--{variants[0]}" if name == chapter and variants else name
            sweep = registry.chapter(chapter).shows_any_batch_sizes and isinstance(asked[name], list)
            _placeholder(src / "book", name, chapter, title, prof, only, progress, list(asked[name]) if sweep else [])
        for name, _, params, _ in runs:
            missing = [b for b in asked[name] or [] if b not in params.get("batch_sizes", [])]
            if isinstance(asked[name], list) and missing:
                print(f"[~] {name}: B = {', '.join(map(str, missing))} not computed in {res}; the page says so", flush=True)
                notes[name] = progress_note(progress, name, params["batch_sizes"], missing)
    with _portable_paths(root, res, data_root) as (res_shown, data_shown):
        timings = _execute(runs, root, src, {"results": res_shown, "device": device, "data_root": data_shown},
                           progress, Store(res), notes)
    for name, chapter, _, _ in every:
        if not (src / "book" / f"{name}.ipynb").exists() and not (src / "book" / f"{name}.md").exists():
            shutil.copy2(root / "book" / f"{chapter}.ipynb", src / "book" / f"{name}.ipynb")
    _write_provenance(src, prof, every, timings + phases, device, res)
    (src / "book" / "_claims.md").write_text(claims_summary(src / "book", [n for n, _, _, _ in every]))
    notes = prof.get("notes")
    (src / "book" / "_profile-notes.md").write_text((root / "book" / notes).read_text() if notes else "")
    return _render(src, out_dir) if html else src


@contextlib.contextmanager
def _portable_paths(root: Path, results: str, data_root: str | None):
    """The store and data folders as the pages show them: relative to the project, or (outside it)
    not at all, the kernels finding them through ``$HESSBATCH_RESULTS`` / ``$HESSBATCH_DATA``
    instead. So no page carries the builder's absolute paths. The environment is restored after."""
    env, shown = {PROJECT_ENV: str(root)}, []
    for path, name in ((results, "HESSBATCH_RESULTS"), (data_root, "HESSBATCH_DATA")):
        p = Path(path).resolve() if path else None
        if p is not None and (p == root or root in p.parents):
            shown.append(str(p.relative_to(root)))
        else:
            shown.append(None)
            if p is not None:
                env[name] = str(p)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield tuple(shown)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(runs, root: Path, src: Path, runtime: dict, progress: bool, store: Store,
             notes: dict | None = None) -> list[tuple[str, float]]:
    """Execute each notebook with papermill into ``src/book``, following it (``following``) unless
    ``progress`` is off, and put ``notes[name]`` under its heading; its wall time."""
    timings, known = [], build_timings(src / "book" / "_timings.yml")
    for i, (name, chapter, params, title) in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {name}"
        print(label, flush=True)
        t0 = time.perf_counter()
        keys = [run_key(c) for c in registry.chapter(chapter).train_configs(params)]
        follower = Follower(label, src / "book" / f".{name}.events", store, keys,
                            known.get(name, {}).get("seconds")) if progress else None
        _run_notebook(root, src, name, chapter, {**params, **runtime}, follower)
        _finish(src / "book" / f"{name}.ipynb", chapter, title, (notes or {}).get(name, ""))
        timings.append((name, time.perf_counter() - t0))
        print(f"      done in {timings[-1][1] / 60:.1f} min", flush=True)
    return timings


def _run_notebook(root: Path, src: Path, name: str, chapter: str, parameters: dict, follower) -> None:
    """One papermill execution, its kernel's bars reported to the follower's events file."""
    import papermill as pm

    target = src / "book" / f"{name}.ipynb"
    (src / "book" / f"{name}.md").unlink(missing_ok=True)
    log = src.parent / "kernels.log"
    with _following(follower):
        try:
            pm.execute_notebook(str(root / "book" / f"{chapter}.ipynb"), str(target), parameters=parameters,
                                cwd=str(src / "book"), kernel_name="python3", progress_bar=False,
                                **_kernel_options(log), report_mode=False)
        except pm.PapermillExecutionError as e:
            raise HessbatchError(f"chapter {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                 f"(executed copy: {target}; kernel log: {log})") from None


@contextlib.contextmanager
def _following(follower):
    """Within the block, every bar of this process and of the processes it starts reports to
    the follower's events file, and the follower prints; nothing happens without one."""
    if follower is None:
        yield
        return
    saved = os.environ.get(EVENTS_ENV)
    follower.events.unlink(missing_ok=True)
    os.environ[EVENTS_ENV] = str(follower.events)
    follower.start()
    try:
        yield
    finally:
        follower.stop()
        follower.events.unlink(missing_ok=True)
        if saved is None:
            os.environ.pop(EVENTS_ENV, None)
        else:
            os.environ[EVENTS_ENV] = saved


def choose_executor(executor: str, workers: int | None, device: str) -> tuple[str, int | None]:
    """``auto``: processes, one per core, on a CPU of several cores; in one process elsewhere."""
    if executor != "auto":
        return executor, workers
    from ..devices import resolve_device

    cores = os.cpu_count() or 1
    if resolve_device(device).type == "cpu" and cores >= 2 and (workers is None or workers > 1):
        return "processes", workers or cores
    return "local", workers


def _precompute(runs, res, device, data_root, executor, scheduler, workers, progress,
                src: Path) -> list[tuple[str, float]]:
    """The pages' training runs and (with processes) their measurements, before any notebook; the
    wall time until the last run ended (``_training``) and of the whole (``_computing``), which
    the next build's progress line takes as its estimate."""
    known = build_timings(src / "book" / "_timings.yml")
    configs = registry.profile_train_configs({n: p for n, _, p, _ in runs})
    keys = [run_key(c) for wave in configs for c in wave]
    events = src.parent / ".precompute.events"
    t0 = time.perf_counter()
    if executor != "processes" or (workers or 1) < 2:
        label = f"[training] {executor}, {workers or 'one per core'} at once"
        with _following(Follower(label, events, Store(res), keys, known.get("_training", {}).get("seconds"))
                        if progress else None):
            train_profile(runs, res, device, data_root, executor, scheduler, workers, progress=False)
        return [("_training", time.perf_counter() - t0)]
    # a chapter's first page first: its other pages (variants, sweeps) reuse much of what it measures
    ordered = sorted(runs, key=lambda r: r[0] != r[1])
    label = f"[computing] pages 0/{len(ordered)} measured, {workers} processes"
    follower = Follower(label, events, Store(res), keys, known.get("_computing", {}).get("seconds")) \
        if progress else None
    failed, finished = [], []

    def done(name, seconds, error=None, written=0):
        finished.append(name)
        if follower is not None:
            follower.label = f"[computing] pages {len(finished)}/{len(ordered)} measured, {workers} processes"
        if error:
            failed.append(f"{name}: {error}")

    with _following(follower):
        trained_at, errors = overlapped(ordered, res, device, data_root, workers, done)
    if errors or failed:
        raise HessbatchError(f"{len(errors)} training run(s) and {len(failed)} page(s) failed while computing: "
                             f"{(errors or failed)[0]}")
    return [("_training", trained_at), ("_computing", time.perf_counter() - t0)]


def _write_provenance(src: Path, prof: dict, every, timings, device, res) -> None:
    """The build's timing record and the provenance page of the introduction."""
    record = src / "book" / "_timings.yml"
    known = {**build_timings(record), **{n: {"seconds": round(t, 1), "device": str(device)} for n, t in timings}}
    record.write_text(yaml.safe_dump(known))
    ordered = [(n, known[n]["seconds"], known[n]["device"]) for n, _, _, _ in every if n in known]
    computed = Path(res) / "_timings.yml"
    computed = yaml.safe_load(computed.read_text()) if computed.is_file() else None
    phases = {n: t for n, t in timings if n.startswith("_")}
    (src / "book" / "_provenance.md").write_text(provenance_table(prof["profile"], ordered, computed, phases))


def _render(src: Path, out_dir: Path) -> Path:
    """Jupyter Book's HTML of the staged sources; the path of ``index.html``."""
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


def _placeholder(folder: Path, name: str, chapter: str, title: str | None, prof: dict, only: str,
                 progress: dict, sizes: list) -> None:
    """A page standing in for a chapter whose results are not in the profile's committed store;
    ``only`` is what ``--chapters`` takes to compute just this page. It names the plan that computes
    it, if one does."""
    from .plans import plans

    stale = folder / f"{name}.ipynb"
    if stale.exists():
        stale.unlink()
    nb = json.loads((repo_root() / "book" / f"{chapter}.ipynb").read_text())
    heading = next(("".join(c["source"]).lstrip().splitlines()[0] for c in nb["cells"]
                    if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("# ")), f"# {name}")
    profile = prof["profile"]
    plan = next((p for p in plans(prof) if {name, only} & set(p.pages)), None)
    how = plan.how(bool(sizes)) if plan else (
        f"On a GPU machine with the data, run\n\n"
        f"    hessbatch compute --profile {profile} --chapters {only} --device cuda --data-root DATA --workers 6\n"
        f"    hessbatch export --results RESULTS paper-results\n\n")
    (folder / f"{name}.md").write_text(
        f"{heading}{f' — {markdown_text(title)}' if title else ''}\n\n"
        f"```{{note}}\nThis chapter has not been computed at the scale of the `{profile}` profile yet: its results "
        f"are not among the committed ones. {how}"
        f"then build the book again. The `quick` profile's book has this chapter on the embedded MNIST digits.\n```\n"
        + progress_note(progress, name, [], sizes or None))


def progress_state(r: dict) -> str:
    """One run's row of ``_progress.yml`` in words."""
    if "epochs" in r:
        return f"{r['state']}: {r['epochs']} epochs, training loss {r['train_loss']:.4g}, {r['hours']:.1f} h of training"
    if r.get("state") not in ("training", "paused"):
        return str(r.get("state", "not computed"))
    return (f"{r['state']}: epoch {r['epoch']} of at most {r['max_epochs']}, running loss {r['running_loss']:.4g}, "
            f"training loss {r['train_loss']:.4g}, test accuracy {100 * r['test_acc']:.2f} %, {r['hours']:.1f} h so far")


def progress_note(progress: dict, name: str, shown: list, missing: list | None) -> str:
    """A page's note on its batch sizes ``missing`` from the committed results, with where each run
    stood when its plan last recorded it (``_progress.yml``); empty if none is missing. ``missing``
    None: a page that is not a batch-size sweep, with every run its plan recorded and what sets it
    apart (empty if none was recorded)."""
    page = progress.get(name) or {}
    when = (f"as recorded by the plan `{page['plan']}` on {page['as_of']} ({markdown_text(page.get('cpu', ''))})"
            if page else "no plan has recorded their progress")
    if missing is None:
        labels = [r.get("run") or "B = " + str(r.get("batch_size")) for r in page.get("runs", [])]
        rows = "\n".join(f"| {markdown_text(label)} | `{r['key']}` | {progress_state(r)} |"
                         for label, r in zip(labels, page.get("runs", [])))
        return (f"\n```{{note}}\nWhere its runs stand, {when}:\n\n| run | key | state |\n|---|---|---|\n{rows}\n```\n"
                if rows else "")
    if not missing:
        return ""
    known = {r.get("batch_size"): r for r in page.get("runs", [])}
    keys = {b: f"`{r['key']}`" for b, r in known.items()}
    rows = "\n".join(f"| {b} | {keys.get(b, '—')} | {progress_state(known.get(b, {}))} |" for b in missing)
    head = (f"This page shows B = {', '.join(map(str, shown))} only. These batch sizes are not in the committed "
            "results yet" if shown else "Where its runs stand")
    return f"\n```{{note}}\n{head}; {when}:\n\n| B | run | state |\n|---:|---|---|\n{rows}\n```\n"


def _kernel_options(log: Path) -> dict:
    """The kernel manager of the book's executions: the kernel's own stderr (ipykernel's log
    lines, such as "KeyboardInterrupt caught in kernel" at shutdown) appended to ``log`` instead
    of the terminal, since a cell's errors reach the executed notebook and the build's error
    anyway; and encrypted transport where jupyter_client offers it (which also silences
    ipykernel's warning about plain TCP on every chapter)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    encrypted = "transport_encryption" in AsyncKernelManager.class_trait_names()

    class BookKernelManager(AsyncKernelManager):
        if encrypted:
            @default("transport_encryption")
            def _auto(self):
                return "auto"

        async def start_kernel(self, **kw):
            with open(log, "a") as f:  # Popen keeps its own copy of the descriptor
                return await super().start_kernel(**{"stderr": f, **kw})

    return {"kernel_manager_class": BookKernelManager}


def build_timings(record: Path) -> dict:
    """The chapters' wall times of earlier builds into the same folder; entries written by older
    versions (bare seconds, no device) are read with the device unknown."""
    try:
        known = yaml.safe_load(record.read_text()) if record.is_file() else {}
    except yaml.YAMLError:
        return {}
    if not isinstance(known, dict):
        return {}
    out = {}
    for name, v in known.items():
        if isinstance(v, dict) and "seconds" in v:
            out[str(name)] = v
        elif isinstance(v, (int, float)):
            out[str(name)] = {"seconds": v, "device": "unknown"}
    return out


def markdown_text(text: str) -> str:
    """A profile's string as literal text in MyST Markdown: raw HTML, links, code and roles backslash-escaped."""
    import re

    return re.sub(r"([\\`<>&\[\]{}*_])", r"\\\1", str(text))


def _finish(path: Path, chapter: str, title: str | None, note: str = "") -> None:
    """An executed notebook as it is published: `` — title`` appended to its first heading, ``note``
    (Markdown) under it, and papermill's record of the paths it ran from made relative (no page
    carries local paths)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells if title or note else []:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            first, _, rest = cell.source.lstrip().partition("\n")
            first += f" — {markdown_text(title)}" if title else ""
            cell.source = first + (f"\n{note}" if note else "") + (f"\n{rest}" if rest else "")
            break
    record = nb.metadata.get("papermill", {})
    record.update(input_path=f"book/{chapter}.ipynb", output_path=path.name)
    nbformat.write(nb, path)