"""Plans: named, ordered pieces of a profile (its ``plans:`` block), each computed within one
command of bounded wall time and handed back as tidy results. They exist for a GPU machine reached
through commands of bounded wall time (at most 10 minutes each): a plan computes page after page (training that page's
runs, then its measurements) into a fresh store and, as each page finishes, rewrites
``<out>/tidy.tgz`` (the store without weights) and ``<out>/plan.json`` (per page: wall time,
training and measurement time, device). A command stopped at its limit so loses only the page in
flight. ``unpack`` merges what came back into the profile's committed store.

``dry_run`` computes the same pages through the same code and the same export at toy size
(:func:`hessbatch.paper.dryrun.toy`): the test suite runs every plan so, on generated data, so a plan cannot fail on the
GPU for a Python error, a missing file or an export bug."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..data import check_present
from .. import schema
from ..errors import HessbatchError, check, describe
from ..config import run_key
from ..hessian import graph_memory_share
from ..store import MANIFEST, Store, atomic_write_bytes, results_root
from . import registry
from .dryrun import toy_page
from .compute import hardware, record_timing, stored_split, train_and_measure, train_profile
from .profiles import check_chapters, load_profile, only_batch_sizes, profile_results, selected


@dataclass(frozen=True)
class Plan:
    """A named piece of a profile: its pages, in order, and the wall time it must fit in."""

    name: str
    title: str
    pages: tuple[str, ...]
    budget_s: int = 540
    device: str = "cuda"    # where it is meant to run: "cuda" (one GPU command) or "cpu" (calls resumed for hours)

    def how(self, by_batch_size: bool) -> str:
        """How to compute its pages, as a placeholder page says it (``by_batch_size``: a batch-size
        sweep at the protocol, one batch size per call of ``scripts/cpu/protocol.sh``; another CPU
        plan is one call of it)."""
        intro = f"It is part of the plan `{self.name}` ({self.title}), "
        if self.device != "cpu":
            return (intro + f"which computes within one GPU command of {self.budget_s // 60} minutes:\n\n"
                    f"    PLAN={self.name} bash scripts/gpu/plan.sh              # on the GPU machine, data in .gpudata/\n"
                    f"    hessbatch plan --unpack FOLDER                         # here: merge FOLDER/tidy.tgz\n\n")
        if by_batch_size:
            return (intro + "computed on the CPU one batch size per call, each resumed from its last epoch's "
                    f"checkpoint and committed as it ends:\n\n    DATA=DATA bash scripts/cpu/protocol.sh {self.name}\n\n")
        return (intro + "computed on the CPU in one call, its runs trained, measured, merged and committed; a "
                "call cut off resumes each run from its last epoch's checkpoint:\n\n"
                f"    DATA=DATA bash scripts/cpu/protocol.sh {self.name}\n\n")


def plans(prof: dict) -> list[Plan]:
    """The profile's plans in priority order (the order of its ``plans:`` block), checked."""
    out = []
    for name, spec in (prof.get("plans") or {}).items():
        check(isinstance(spec, dict) and isinstance(spec.get("pages"), list) and spec["pages"],
              f"profile {prof['profile']!r}: plans.{name} needs a non-empty list of pages")
        unknown = sorted(set(spec) - {"title", "pages", "budget_s", "device"})
        check(not unknown, f"profile {prof['profile']!r}: plans.{name} has unknown key(s) {', '.join(unknown)}")
        check_chapters(prof, spec["pages"])
        budget = spec.get("budget_s", 540)
        check(isinstance(budget, int) and not isinstance(budget, bool) and budget > 0,
              f"profile {prof['profile']!r}: plans.{name}.budget_s must be a positive number of seconds, got {budget!r}")
        device = spec.get("device", "cuda")
        check(device in ("cuda", "cpu"), f"profile {prof['profile']!r}: plans.{name}.device must be cuda or cpu, "
                                         f"got {device!r}")
        out.append(Plan(str(name), str(spec.get("title", name)), tuple(spec["pages"]), budget, device))
    return out


def find(prof: dict, name: str) -> Plan:
    known = {p.name: p for p in plans(prof)}
    check(name in known, f"profile {prof['profile']!r} has no plan {name!r}; its plans are "
                         f"{', '.join(known) or '(none)'}")
    return known[name]


def run(profile: str, name: str, out: str, device: str = "cpu", data_root: str | None = None,
        workers: int = 1, results: str | None = None, dry_run: bool = False, budget_s: int | None = None,
        overrides: dict | None = None, progress: bool = False) -> dict:
    """Compute a plan page by page into ``results`` (default: a fresh temporary store) and hand
    back ``<out>/tidy.tgz`` and ``<out>/plan.json`` after each page; return the record. A page not
    started before the budget runs out is recorded as such; a dry run has no budget unless given one
    (its toy pages on a slow CPU say nothing about the GPU's time). A page whose every result is already in
    the profile's committed store is not computed again. Every name and value is checked first."""
    prof = load_profile(profile)
    plan = find(prof, name)
    graph_memory_share()
    pages = selected(prof, list(plan.pages), overrides, optional=True)
    bases = [n for n, _, _, _ in selected(prof, list(plan.pages), None, optional=True)]
    check(len(pages) == len(bases), f"plan {name}: the overrides changed which pages it has")
    if dry_run:
        pages = [toy_page(page) for page in pages]
    budget = budget_s or (None if dry_run else plan.budget_s)
    for wave in registry.profile_train_configs({n: p for n, _, p, _ in pages}):
        for dataset in {c["dataset"] for c in wave}:
            check_present(dataset, data_root)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = results or tempfile.mkdtemp(prefix=f"hessbatch-plan-{name}-")
    from ..devices import resolve_device

    dev = resolve_device(device)
    record = {"plan": name, "title": plan.title, "profile": prof["profile"], "dry_run": dry_run,
              "device": str(dev), "hardware": hardware(dev), "workers": workers, "budget_s": budget,
              "started": time.strftime("%Y-%m-%d %H:%M"), "pages": [], "committed": []}
    t0 = time.perf_counter()
    if not dry_run:  # the pages whose every result is committed: listed, not computed
        committed = profile_results(prof, None)
        record["committed"] = [p[0] for p in stored_split(pages, committed)[0]]
        for n in record["committed"]:
            print(f"{n}: every result already in {committed}", flush=True)
    todo = [(p, b) for p, b in zip(pages, bases) if p[0] not in record["committed"]]
    record["graph_check"] = _graph_check([p for p, _ in todo], dev, data_root)
    export(res, out_dir / "tidy.tgz")
    _write_record(out_dir, record)
    for page, base in todo:
        if budget is not None and time.perf_counter() - t0 > budget:
            record["pages"].append({"name": page[0], "page": base, "state": "not started: out of time"})
            _write_record(out_dir, record)
            continue
        t1 = time.perf_counter()
        train_s, measure_s, error = _compute_page(page, res, dev, data_root, workers, progress)
        export(res, out_dir / "tidy.tgz")
        row = {"name": page[0], "page": base, "state": "failed" if error else "done", "seconds": round(time.perf_counter() - t1, 1),
               "train_seconds": round(train_s, 1), "measure_seconds": round(measure_s, 1), "error": error}
        record["pages"].append(row)
        _write_record(out_dir, record)
        print(f"{page[0]}: {row['state']} in {row['seconds'] / 60:.1f} min (training {train_s / 60:.1f}, "
              f"measurements {measure_s / 60:.1f})" + (f": {error}" if error else ""), flush=True)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    _write_record(out_dir, record)
    return record


def train_only(profile: str, name: str, device: str = "cpu", data_root: str | None = None,
               results: str | None = None, overrides: dict | None = None, progress: bool = False) -> float:
    """Train a plan's runs into ``results`` (default: ``$HESSBATCH_RESULTS`` or ``./results``), one after another, and
    measure nothing: for runs of many hours, each resumed from its checkpoint by the next call. Returns
    the wall time; a failed run raises. The pages whose every result is committed train nothing."""
    prof = load_profile(profile)
    pages = selected(prof, list(find(prof, name).pages), overrides, optional=True)
    pages = stored_split(pages, profile_results(prof, None))[1]
    from ..devices import resolve_device

    return train_profile(pages, str(results_root(results)), str(resolve_device(device)), data_root, "local",
                         progress=progress)[0]


def adopt(profile: str, name: str, earlier: dict, results: str | None = None,
          overrides: dict | None = None) -> list[dict]:
    """Carry the checkpoints of a plan's unfinished runs trained under ``earlier`` parameters (``--set``
    pairs, e.g. the ``train_options`` the runs started with) to the plan's runs now, where the two
    differ only in the learning-rate schedule and agree through the epochs trained
    (``hessbatch.train.adopt``). One row per run: batch size, both keys, the epochs carried."""
    from ..train import adopt as adopt_run

    prof = load_profile(profile)
    pages = list(find(prof, name).pages)
    now = selected(prof, pages, overrides, optional=True)
    before = selected(prof, pages, {**(overrides or {}), **earlier}, optional=True)
    store = Store(results_root(results))
    rows = {}
    for (_, chapter, params, _), (_, _, old_params, _) in zip(now, before):
        train_configs = registry.chapter(chapter).train_configs
        for new, old in zip(train_configs(params), train_configs(old_params)):
            if (key := run_key(new)) not in rows and run_key(old) != key:
                rows[key] = {"batch_size": new["batch_size"], "from": run_key(old), "key": key,
                             "epochs": adopt_run(old, new, store)}
    return list(rows.values())


PROGRESS = "_progress.yml"


def read_progress(results: str | Path) -> dict:
    """The progress of plans' unfinished runs recorded in a committed store (:func:`record_progress`),
    by page; empty if none is recorded."""
    import yaml

    path = Path(results) / PROGRESS
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def record_progress(profile: str, name: str, work: str | None = None, results: str | None = None,
                    overrides: dict | None = None) -> dict:
    """Where a plan's training runs stand, per page and batch size, written atomically as
    ``_progress.yml`` into the profile's committed store, so that its pages can name the runs not
    in yet: ``measured`` (the page's results for it are committed), ``diverged`` (committed; or
    ``diverged, not yet committed``), ``trained, not yet measured`` (committed or in ``work`` without
    the page's results; these three with its epochs, final training loss and hours), ``training`` or ``paused`` (a process trains it now, or
    none does; with the epoch, losses and hours of its last checkpoint in ``work``, the store the
    runs train in) or ``not started``. Returns the record."""
    from ..devices import cpu_model
    from ..train import in_progress
    from .presentation import run_label

    prof = load_profile(profile)
    plan = find(prof, name)
    committed = Store(profile_results(prof, results), read_only=True)
    working = Store(results_root(work), read_only=True)
    pages = {}
    for page, chapter, params, _ in selected(prof, list(plan.pages), overrides, optional=True):
        rows = []
        for cfg in registry.chapter(chapter).train_configs(params):
            key, b = run_key(cfg), cfg["batch_size"]
            row = {"batch_size": b, "run": run_label(cfg), "key": key, "state": "not started"}
            here = committed.get("train", key=key)
            if (done := here or working.get("train", key=key)) is not None:
                r = done.json()
                if r["status"] == "diverged":
                    row["state"] = "diverged" if here else "diverged, not yet committed"
                elif here and stored_split([(page, chapter, only_batch_sizes(params, [b]), None)], committed.root)[0]:
                    row["state"] = "measured"
                else:
                    row["state"] = "trained, not yet measured"
                if row["state"] != "measured":
                    loss = float("nan") if r["train_loss"] is None else r["train_loss"]
                    row.update(epochs=r["epochs"], train_loss=round(loss, 6), hours=round(r["time_s"] / 3600, 2))
            elif (now := in_progress(working, key)) is not None:
                row.update(state="training" if working.busy("train", key) else "paused", epoch=now["epoch"], max_epochs=cfg.get("max_epochs"),
                           running_loss=round(float(now.get("running_loss", float("nan"))), 5),
                           train_loss=round(float(now.get("train_loss", float("nan"))), 5),
                           test_acc=round(float(now.get("test_acc", float("nan"))), 4),
                           hours=round(now["elapsed"] / 3600, 2))
            rows.append(row)
        pages[page] = rows
    record = {"plan": name, "as_of": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "pages": pages}
    import yaml

    every = {k: v for k, v in read_progress(committed.root).items() if k not in pages}
    every.update({page: {k: v for k, v in record.items() if k != "pages"} | {"runs": rows}
                  for page, rows in pages.items()})
    atomic_write_bytes(committed.root / PROGRESS, yaml.safe_dump(every, sort_keys=False).encode())
    return record


def _compute_page(page, res, dev, data_root, workers: int, progress: bool) -> tuple[float, float, str | None]:
    """Train a page's runs and measure it as ``hessbatch compute`` does (:func:`train_and_measure`:
    with several workers, one pool, the measurements in parts); return the training and measurement
    seconds and the first error."""
    errors, ended = [], {}

    def done(name, seconds, error=None, written=0):
        ended.update(seconds=seconds, error=error)

    train_s = train_and_measure([page], res, dev, data_root, workers, done, errors, progress)
    return train_s, ended.get("seconds", 0.0), errors[0] if errors else ended.get("error")


def _graph_check(pages, dev, data_root) -> dict:
    """Before a plan on a GPU: its first run's model trained a few steps from a CUDA graph and
    eagerly, and how far apart they end (logged and recorded). Runs train with graphs only where
    this is on (``hessbatch.captured.enabled``); a failed check is recorded, never fatal."""
    from .. import captured
    from ..train import check_capture

    if not captured.enabled(dev):
        return {"graphs": False, "why": f"{dev.type} device" if dev.type != "cuda" else f"{captured.ENV}=0"}
    first = next((c for wave in registry.profile_train_configs({n: p for n, _, p, _ in pages}) for c in wave), None)
    if first is None:
        return {"graphs": True, "why": "the plan trains nothing"}
    try:
        report = {"graphs": True, **check_capture(first, dev, data_root)}
    except Exception as e:  # noqa: BLE001 -- the check informs; each run falls back on its own
        report = {"graphs": True, "error": describe(e)}
    print(f"CUDA graph check: {report}", flush=True)
    return report


def _write_record(out_dir: Path, record: dict) -> None:
    atomic_write_bytes(out_dir / "plan.json", json.dumps(record, indent=2).encode())


def export(res: str, target: Path) -> None:
    """The store at ``res`` without weights, as one gzipped tar written atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        Store(res).export(Path(tmp) / "tidy")
        (Path(tmp) / "tidy").mkdir(exist_ok=True)  # an empty store: an empty tidy.tgz
        (Path(tmp) / "tidy" / "_timings.yml").unlink(missing_ok=True)
        part = target.with_name(f".{target.name}.part")
        with tarfile.open(part, "w:gz") as tar:
            tar.add(Path(tmp) / "tidy", arcname=".")
        os.replace(part, target)


def unpack(folder: str, profile: str = "paper", results: str | None = None) -> dict:
    """Merge a plan's ``tidy.tgz`` into the profile's store and record its pages' timings in the
    store's ``_timings.yml``. An entry already there with the same files is kept; one whose files
    differ is replaced, and every stored entry computed from it (whose configuration names its
    key) is removed, so no measurement outlives the run it measured. Returns counts."""
    import yaml

    src = Path(folder)
    check((src / "tidy.tgz").is_file() and (src / "plan.json").is_file(),
          f"{folder}: no tidy.tgz and plan.json of a plan here")
    record = read_record(src / "plan.json")
    check(not record["dry_run"], f"{folder}: a dry run's results are not merged into a profile's store")
    dest = Store(profile_results(load_profile(profile), results))
    counts = {"added": 0, "kept": 0, "replaced": 0, "removed": 0}
    dest.clean()
    with dest.scratch("unpack") as tmp:  # inside the store: a killed unpack's is cleaned by the next
        _extract(src / "tidy.tgz", tmp)
        n, bad = Store(tmp).verify()
        check(not bad, f"{folder}: tidy.tgz holds {len(bad)} of {n} entries that are not whole (files missing, "
                       f"damaged, or named outside their folder: {', '.join(f'{e.kind}/{e.key}' for e in bad[:5])}); "
                       "nothing merged")
        incoming = Store(tmp).entries()
        keys = {e.key for e in incoming}
        for e in incoming:
            there = dest.get(e.kind, key=e.key)
            if there is not None and _same(there.path, e.path):
                counts["kept"] += 1
                continue
            if there is not None:
                counts["replaced"] += 1
                counts["removed"] += _remove_dependents(dest, e.key, keys)
            else:
                counts["added"] += 1
            with dest.building(e.kind, e.key, replace=True) as tmp:
                for f in (*e.files(), MANIFEST):
                    shutil.copy2(e.path / f, tmp / f)
    if record["pages"]:
        _record_timings(dest.root / "_timings.yml", record, yaml)
    return counts


_RECORD = {"plan": schema.text(), "started": schema.text(), "hardware": schema.text(), "device": schema.text(),
           "workers": schema.integer(1, 1024), "dry_run": schema.FLAG, "pages": schema.items(schema.MAPPING),
           "seconds": schema.number(0, 1e9, null=True)}
_PAGE = {"name": schema.text(), "state": schema.text(), "page": schema.text(null=True)}
_DONE = {"seconds": schema.number(0, 1e9), "train_seconds": schema.number(0, 1e9)}
TAR_BYTES, TAR_MEMBERS = 8 << 30, 200_000


def read_record(path: Path) -> dict:
    """A plan's ``plan.json``, every field that merging reads checked: one line if it is not one."""
    check(path.stat().st_size <= 16 << 20, f"{path}: larger than 16 MiB, not a plan's record")
    try:
        record = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HessbatchError(f"{path}: not a plan's record ({type(e).__name__})") from None
    schema.check_record(record, _RECORD, str(path))
    for i, page in enumerate(record["pages"]):
        schema.check_record(page, {**_PAGE, **(_DONE if page.get("state") == "done" else {})},
                            f"{path}: pages[{i}]")
    return record


def _extract(tgz: Path, folder: str) -> None:
    """A plan's ``tidy.tgz`` into ``folder``: regular files and folders only (tarfile's ``data``
    filter refuses links, devices and names outside), within a size and count; one line if not."""
    try:
        with tarfile.open(tgz) as tar:
            members = tar.getmembers()
            check(len(members) <= TAR_MEMBERS and sum(m.size for m in members) <= TAR_BYTES,
                  f"{tgz}: more than {TAR_MEMBERS} files or {TAR_BYTES >> 30} GiB, not a plan's results")
            check(all(m.isfile() or m.isdir() for m in members),
                  f"{tgz}: holds links or special files, not only a plan's results")
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise HessbatchError(f"{tgz}: not a readable gzipped tar ({describe(e)})") from None


def _same(a: Path, b: Path) -> bool:
    return json.loads((a / MANIFEST).read_text())["files"] == json.loads((b / MANIFEST).read_text())["files"]


def _remove_dependents(store: Store, key: str, incoming: set[str]) -> int:
    n = 0
    for e in store.entries():
        if e.key not in incoming and e.kind != "train" and key in (e.path / "config.json").read_text():
            store.remove(e)
            n += 1
    return n


def _record_timings(path: Path, record: dict, yaml) -> None:
    """The plan as one call of ``_timings.yml``, and each finished page's time under its name
    (added to an earlier timing of the same page on the same hardware)."""
    timings = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    done = [p for p in record["pages"] if p.get("state") == "done"]
    timings.setdefault("_calls", []).append(
        {"started": record["started"], "chapters": [p["name"] for p in done], "workers": record["workers"],
         "hardware": record["hardware"], "seconds": record.get("seconds", sum(p["seconds"] for p in done)),
         "train_seconds": round(sum(p["train_seconds"] for p in done), 1), "plan": record["plan"],
         "failed": [f"{p['name']}: {p.get('error') or p['state']}" for p in record["pages"]
                    if p not in done]})
    for p in done:
        record_timing(timings, p.get("page", p["name"]), p["seconds"], record["device"], record["hardware"])
    atomic_write_bytes(path, yaml.safe_dump(timings, sort_keys=False).encode())


def status(prof: dict, results: str | None = None) -> list[tuple[Plan, list[str]]]:
    """Each plan with the pages of it not yet in the profile's store."""
    res = profile_results(prof, results)
    out = []
    for plan in plans(prof):
        _, absent = stored_split(selected(prof, list(plan.pages)), res)
        out.append((plan, [a[0] for a in absent]))
    return out
