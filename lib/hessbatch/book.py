"""Build the book: run every chapter notebook through papermill with a profile's
parameters, then assemble the executed copies with Jupyter Book.

A profile (``params/<name>.yaml``) has ``common`` parameters for every chapter and a
``chapters`` mapping from notebook name to its own parameters. A chapter may list
``variants`` (label → parameters, with an optional ``title``): its notebook is then
executed once per variant (another model or dataset), the first under the chapter's own
name, the others as ``<chapter>--<label>``. A profile's ``results`` names its result store
(relative to the checkout) when none is given. Executed notebooks, figures and the HTML go
to ``_build/<profile>/``; the sources in ``book/`` stay clean.

``compute`` runs a profile's chapters without notebooks (on a GPU machine, say): training
runs first, several at once, then each chapter's measurements; the book built later finds
everything in the store. Each chapter's wall time and device go to ``<results>/_timings.yml``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
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
    from .store import results_root

    if results:
        return str(Path(results).resolve())
    if profile.get("results"):
        return str((repo_root() / profile["results"]).resolve())
    return str(results_root(None).resolve())


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


def provenance_table(profile: str, timings: list[tuple[str, float, str]], computed: dict | None = None) -> str:
    """Markdown: the machine, each chapter's wall time when it was last executed (a chapter whose
    results were already in the store only reads them, and is fast), and where ``hessbatch compute``
    measured them, if it did."""
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
    if computed:
        lines += ["", *computed_summary(computed)]
    return "\n".join(lines) + "\n"


def computed_summary(computed: dict) -> list[str]:
    """Markdown lines from a store's ``_timings.yml``: the calls of ``hessbatch compute`` per machine
    (wall and training time), then each chapter's device and compute wall time."""
    calls = computed.get("_calls", [])
    lines = ["The results were computed by `hessbatch compute`:", ""]
    for hw in sorted({c["hardware"] for c in calls}):
        mine = [c for c in calls if c["hardware"] == hw]
        stopped = sum(bool(c.get("interrupted")) for c in mine)
        lines.append(f"- on {hw}: {len(mine)} call(s)" + (f" ({stopped} interrupted)" if stopped else "") +
                     f", {sum(c['seconds'] for c in mine) / 60:.1f} min of wall time, "
                     f"of which training {sum(c['train_seconds'] for c in mine) / 60:.1f} min, "
                     f"{max(c['workers'] for c in mine)} worker(s)")
    lines += ["", "| chapter | device | compute wall time |", "|---|---|---:|"]
    lines += [f"| [{n}]({n}) | {c['device']} | {c['seconds'] / 60:.1f} min |"
              for n, c in computed.items() if not n.startswith("_")]
    return lines


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
    return src


def build(profile: str = "quick", results: str | None = None, device: str = "cpu", data_root: str | None = None,
          out: str | None = None, chapters: list[str] | None = None, html: bool = True, executor: str = "local",
          scheduler: str | None = None, workers: int | None = None, download: bool = False,
          progress: bool = True) -> Path:
    """Execute the chapters with papermill and build the HTML; return the path of ``index.html``.

    With ``executor="dask"`` (or ``"processes"``) the profile's training runs are first computed
    as a sweep (see ``hessbatch.sweep``); the notebooks then find them in the store. With
    ``download``, missing datasets are fetched first.
    """
    import papermill as pm

    prof = load_profile(profile)
    root = repo_root()
    _check_chapters(prof, chapters)
    runs = executions(prof, chapters)
    every = executions(prof)
    out_dir = Path(out or root / "_build" / prof["profile"]).resolve()
    src = _stage(root, out_dir, every)
    res = profile_results(prof, results)
    if download:
        fetch_data(runs, data_root)
    if executor != "local":
        _train_profile(runs, res, device, data_root, executor, scheduler, workers, progress=progress)
    timings, kernel = [], _kernel_options()
    if prof.get("results") and not results:
        runs, absent = _stored_only(runs, res)
        for name, chapter, _, title in absent:
            print(f"[-] {name}: not computed in {res}; a placeholder page says how to compute it", flush=True)
            variants = list(prof["chapters"][chapter].get("variants") or {})
            only = f"{chapter}--{variants[0]}" if name == chapter and variants else name
            _placeholder(src / "book", name, chapter, title, prof["profile"], only)
    for i, (name, chapter, params, title) in enumerate(runs, 1):
        params = {**params, "results": res, "device": device, "data_root": data_root}
        print(f"[{i}/{len(runs)}] {name}", flush=True)
        t0 = time.perf_counter()
        target = src / "book" / f"{name}.ipynb"
        (src / "book" / f"{name}.md").unlink(missing_ok=True)
        try:
            pm.execute_notebook(str(root / "book" / f"{chapter}.ipynb"), str(target), parameters=params,
                                cwd=str(src / "book"), kernel_name="python3",
                                progress_bar=progress and sys.stderr.isatty(), **kernel,
                                report_mode=False)
        except pm.PapermillExecutionError as e:
            raise HessbatchError(f"chapter {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                 f"(executed copy: {target})") from None
        if title:
            _retitle(target, title)
        timings.append((name, time.perf_counter() - t0))
        print(f"      done in {timings[-1][1] / 60:.1f} min", flush=True)
    for name, chapter, _, _ in every:
        if not (src / "book" / f"{name}.ipynb").exists() and not (src / "book" / f"{name}.md").exists():
            shutil.copy2(root / "book" / f"{chapter}.ipynb", src / "book" / f"{name}.ipynb")
    record = src / "book" / "_timings.yml"
    known = {**_build_timings(record), **{n: {"seconds": round(t, 1), "device": str(device)} for n, t in timings}}
    record.write_text(yaml.safe_dump(known))
    ordered = [(n, known[n]["seconds"], known[n]["device"]) for n, _, _, _ in every if n in known]
    computed = Path(res) / "_timings.yml"
    computed = yaml.safe_load(computed.read_text()) if computed.is_file() else None
    (src / "book" / "_provenance.md").write_text(provenance_table(prof["profile"], ordered, computed))
    notes = prof.get("notes")
    (src / "book" / "_profile-notes.md").write_text((root / "book" / notes).read_text() if notes else "")
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


def _stored_only(runs, res):
    """Split executions into those whose training runs are all in the store at ``res`` and the rest
    (a profile with committed results renders what was computed, on any machine)."""
    from .experiments import profile_train_configs
    from .store import Store
    from .train import TrainConfig

    store, have, absent = Store(res), [], []
    for run in runs:
        waves = profile_train_configs({run[0]: run[2]})
        ok = all(store.get("train", TrainConfig.from_dict(c).resolved().to_dict()) is not None
                 for wave in waves for c in wave)
        (have if ok else absent).append(run)
    return have, absent


def _placeholder(folder: Path, name: str, chapter: str, title: str | None, profile: str, only: str) -> None:
    """A page standing in for a chapter whose results are not in the profile's committed store;
    ``only`` is what ``--chapters`` takes to compute just this page."""
    stale = folder / f"{name}.ipynb"
    if stale.exists():
        stale.unlink()
    nb = json.loads((repo_root() / "book" / f"{chapter}.ipynb").read_text())
    heading = next(("".join(c["source"]).lstrip().splitlines()[0] for c in nb["cells"]
                    if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("# ")), f"# {name}")
    (folder / f"{name}.md").write_text(
        f"{heading}{f' — {title}' if title else ''}\n\n"
        f"```{{note}}\nThis chapter has not been computed at the scale of the `{profile}` profile yet: its results "
        f"are not among the committed ones. On a GPU machine with the data, run\n\n"
        f"    hessbatch compute --profile {profile} --chapters {only} --device cuda --data-root DATA --workers 6\n"
        f"    hessbatch export --results RESULTS paper-results\n\n"
        f"then build the book again. The `quick` profile's book has this chapter on the embedded MNIST digits.\n```\n")


def _kernel_options() -> dict:
    """Encrypted kernel transport where jupyter_client offers it (this also silences ipykernel's
    warning about plain TCP on every chapter)."""
    from jupyter_client.manager import AsyncKernelManager

    if "transport_encryption" not in AsyncKernelManager.class_trait_names():
        return {}
    from traitlets import default

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _auto(self):
            return "auto"

    return {"kernel_manager_class": EncryptedKernelManager}


def _build_timings(record: Path) -> dict:
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


def fetch_data(runs, data_root) -> list[str]:
    """Download the datasets these executions read that are missing under ``data_root``, before any
    compute; return their names."""
    from .data import load_dataset
    from .experiments import profile_train_configs

    names = {c["dataset"] for wave in profile_train_configs({n: p for n, _, p, _ in runs}) for c in wave}
    names |= {p["pga_training"].get("dataset", "mnist5k") for _, _, p, _ in runs if p.get("pga_training")}
    fetched = []
    for name in sorted(names):
        try:
            load_dataset(name, data_root)
        except HessbatchError:
            load_dataset(name, data_root, download=True)
            fetched.append(name)
    return fetched


def _check_chapters(prof: dict, chapters: list[str] | None) -> None:
    if chapters:
        known = [*prof["chapters"], *(f"{c}--{label}" for c, ch in prof["chapters"].items()
                                      for label in (ch.get("variants") or {}))]
        unknown = sorted(set(chapters) - set(known))
        check(not unknown, f"profile {prof['profile']!r} has no chapter(s) {', '.join(unknown)}; "
                           f"it has {', '.join(known)}")


def _train_profile(runs, res, device, data_root, executor, scheduler=None, workers=None,
                   keep_going: bool = False, progress: bool = True) -> tuple[float, list[str]]:
    """Train every run the chosen chapters need, wave after wave; return the wall time and
    the errors of failed runs (raised at once unless ``keep_going``)."""
    from .experiments import profile_train_configs
    from .store import Store
    from .sweep import run_sweep

    t0, errors = time.perf_counter(), []
    for wave in profile_train_configs({n: p for n, _, p, _ in runs}):
        table = run_sweep(wave, Store(res), device=device, data_root=data_root, executor=executor,
                          scheduler=scheduler, workers=workers, progress=progress)
        failed = table[table["state"] == "failed"]
        errors += [f"training run {k}: {e}" for k, e in zip(failed["key"], failed["error"])]
        check(keep_going or failed.empty, f"{len(failed)} training run(s) failed on {executor}: "
                                          f"{failed['error'].iloc[0] if len(failed) else ''}")
    return time.perf_counter() - t0, errors


def _retitle(path: Path, title: str) -> None:
    """Append `` — title`` to the first heading of an executed notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            first, _, rest = cell.source.lstrip().partition("\n")
            cell.source = f"{first} — {title}" + (f"\n{rest}" if rest else "")
            break
    nbformat.write(nb, path)


def _compute_one(name: str, chapter: str, params: dict, res: str, device: str, data_root,
                 threads: int | None = None, progress: bool = False,
                 processes: int = 1) -> tuple[str, float, str | None, int]:
    """Compute one chapter's results; never raises (the error comes back as text). Returns the
    name, wall time, error and the number of store entries written. ``progress``: bars of the
    chapter's runs and of each spectrum's HVPs (for one chapter at a time). ``processes``: how
    many run at once (they split the memory for cached gradient graphs)."""
    import torch

    from .experiments import run_chapter
    from .store import Store

    if threads:
        torch.set_num_threads(threads)
    if processes > 1:
        from .hessian import split_graph_memory

        split_graph_memory(processes)
    t0 = time.perf_counter()
    store = Store(res)
    try:
        run_chapter(chapter, params, store, device=device, data_root=data_root, progress=progress)
        error = None
    except Exception as e:  # noqa: BLE001 — reported per chapter; the others go on
        error = f"{type(e).__name__}: {e}".splitlines()[0]
    return name, time.perf_counter() - t0, error, store.published


def compute(profile: str, results: str | None = None, device: str = "cpu", data_root: str | None = None,
            chapters: list[str] | None = None, workers: int = 1, download: bool = False,
            progress: bool = True) -> dict:
    """Compute every chapter of a profile into its store, without notebooks; return the timings.

    Training runs go first (``workers`` at a time, each in its own process), then the
    chapters' measurements (``workers`` chapters at a time). Everything resumes from the store.
    A failed training run or chapter is reported (in the timings too) and the others go on;
    the call then raises, naming what failed. A chapter found complete in the store keeps the
    timing of the call that computed it; one that was missing some results, on the same hardware,
    adds this call's time to it (``calls`` counts them). A call stopped by Ctrl-C or SIGTERM (a
    ``timeout``) still records its wall time, marked ``interrupted``.
    """
    import platform

    import torch

    from .hessian import graph_memory_share
    from .store import atomic_write_bytes
    from .train import resolve_device

    prof = load_profile(profile)
    _check_chapters(prof, chapters)
    check(workers >= 1, f"workers must be >= 1, got {workers}")
    graph_memory_share()
    dev = resolve_device(device)
    runs = executions(prof, chapters, optional=False)
    res = profile_results(prof, results)
    if download:
        fetch_data(runs, data_root)
    hardware = (f"{torch.cuda.get_device_name(dev)}, " if dev.type == "cuda" else "") + \
        f"{os.cpu_count()} CPU cores ({platform.machine()})"
    t0 = time.perf_counter()
    record = Path(res) / "_timings.yml"
    timings = (yaml.safe_load(record.read_text()) if record.is_file() else None) or {}
    call = {"started": time.strftime("%Y-%m-%d %H:%M"), "chapters": [n for n, _, _, _ in runs], "workers": workers,
            "hardware": hardware, "seconds": 0.0, "train_seconds": 0.0}
    timings.setdefault("_calls", []).append(call)

    def save():
        call["seconds"] = round(time.perf_counter() - t0, 1)
        Path(res).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, yaml.safe_dump(timings, sort_keys=False).encode())

    training = [True]

    def interrupted():
        call["interrupted"] = True
        if training[0]:
            call["train_seconds"] = round(time.perf_counter() - t0, 1)
        save()

    with _on_sigterm(interrupted):
        try:
            save()
            seconds, errors = _train_profile(runs, res, str(dev), data_root, "processes" if workers > 1 else "local",
                                             workers=workers, keep_going=True, progress=progress)
            call["train_seconds"], training[0] = round(seconds, 1), False
            _compute_chapters(runs, res, dev, data_root, workers, timings, hardware, call, errors, save, progress)
        except KeyboardInterrupt:
            interrupted()
            raise
    if errors:
        raise HessbatchError(f"{len(errors)} failure(s) in this call (the rest is stored): {errors[0]}")
    return timings


def _compute_chapters(runs, res, dev, data_root, workers, timings, hardware, call, errors, save,
                      progress=False) -> None:
    """The measurement part of :func:`compute`: each chapter's results, its timing recorded as it ends."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing as mp

    for e in errors:
        print(f"failed: {e}", flush=True)
    save()

    def done(name, seconds, error=None, written=1):
        if error:
            errors.append(f"chapter {name}: {error}")
            print(f"{name}: failed after {seconds / 60:.1f} min: {error}", flush=True)
        elif not written and name in timings:
            print(f"{name}: already in the store (read in {seconds / 60:.1f} min; its timing is kept)", flush=True)
        elif name in timings and timings[name].get("hardware") == hardware:
            before = timings[name]
            timings[name] = {**before, "seconds": round(before["seconds"] + seconds, 1),
                             "calls": before.get("calls", 1) + 1}
            print(f"{name}: {seconds / 60:.1f} min for what was missing, added to its earlier timing", flush=True)
        else:
            timings[name] = {"seconds": round(seconds, 1), "device": str(dev), "hardware": hardware}
            print(f"{name}: {seconds / 60:.1f} min", flush=True)
        call["failed"] = errors
        save()

    if workers == 1:
        for name, chapter, params, _ in runs:
            done(*_compute_one(name, chapter, params, res, str(dev), data_root, progress=progress))
    else:
        at_once = min(workers, len(runs))
        with ProcessPoolExecutor(max_workers=at_once, mp_context=mp.get_context("spawn")) as pool:
            threads = max(1, (os.cpu_count() or 1) // at_once)
            futures = {pool.submit(_compute_one, n, c, p, res, str(dev), data_root, threads, processes=at_once): n
                       for n, c, p, _ in runs}
            for fut in as_completed(futures):
                try:
                    done(*fut.result())
                except Exception as e:  # noqa: BLE001 — the worker process died
                    done(futures[fut], 0.0, f"{type(e).__name__}: {e}".splitlines()[0])
    save()


@contextmanager
def _on_sigterm(record):
    """Within the block, SIGTERM (what ``timeout`` sends) first calls ``record()``, then kills the
    process as before; outside the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        record()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
