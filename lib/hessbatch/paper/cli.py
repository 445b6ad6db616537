"""The ``hessbatch`` command: the toolkit's commands (``hessbatch.cli``) plus what the paper
layer's ``book``, ``compute`` and ``plan`` do (their parser: ``parser.py``)."""

from __future__ import annotations

import sys

from .. import cli
from .parser import add_commands, build_parser  # noqa: F401 (the command line's API)


def _cmd_plan(a) -> int:
    from . import plans
    from .profiles import load_profile, parse_overrides
    from ..errors import check

    prof = load_profile(a.profile)
    if a.unpack:
        check(a.name is None, "give either a plan to run or --unpack DIR, not both")
        counts = plans.unpack(a.unpack, a.profile, a.results)
        print(", ".join(f"{n} {k}" for k, n in counts.items()) + " entries")
        return 0
    if a.name is None:
        for plan, missing in plans.status(prof, a.results):
            state = f"missing {', '.join(missing)}" if missing else "computed"
            print(f"{plan.name:<16} {plan.budget_s:>4} s  {plan.title}: {state}")
        return 0
    if a.earlier:
        check(not (a.train_only or a.dry_run or a.record_progress), "--adopt-from trains nothing: give it alone")
        plans.find(prof, a.name)
        for r in plans.adopt(a.profile, a.name, parse_overrides(a.earlier), a.results, parse_overrides(a.overrides)):
            what = f"epochs 1-{r['epochs']} carried from {r['from']}" if r["epochs"] else f"no checkpoint of {r['from']}"
            print(f"B={r['batch_size']:<5} {r['key']}: {what}")
        return 0
    if a.record_progress:
        check(not (a.train_only or a.dry_run), "--record-progress trains nothing: give it alone")
        plans.find(prof, a.name)
        record = plans.record_progress(a.profile, a.name, a.results, None, parse_overrides(a.overrides))
        for page, rows in record["pages"].items():
            print(f"{page} ({record['as_of']}, {record['cpu']}):")
            for r in rows:
                more = (f" epoch {r['epoch']}, running loss {r['running_loss']:.4g}, train loss {r['train_loss']:.4g}, "
                        f"{r['hours']:.1f} h" if "epoch" in r else
                        f" ({r['epochs']} epochs, train loss {r['train_loss']:.4g}, {r['hours']:.1f} h)" if "epochs" in r else "")
                print(f"  B={r['batch_size']:<5} {r['state']}{more}")
        return 0
    check(a.out or a.train_only, "running a plan needs --out DIR (where tidy.tgz and plan.json go)")
    plans.find(prof, a.name)
    from ..devices import resolve_device

    resolve_device(a.device)
    if a.train_only:
        check(not a.dry_run, "--train-only and --dry-run exclude each other")
        seconds = plans.train_only(a.profile, a.name, a.device, a.data_root, a.results, parse_overrides(a.overrides),
                                   not a.no_progress)
        print(f"plan {a.name}: its runs are trained ({seconds / 60:.1f} min)")
        return 0
    record = plans.run(a.profile, a.name, a.out, a.device, a.data_root, a.workers, a.results, a.dry_run,
                       a.budget, parse_overrides(a.overrides), not a.no_progress)
    print("| page | state | wall (min) | training | measurements |\n|---|---|---:|---:|---:|")
    for p in record["pages"]:
        times = [f"{p[k] / 60:.1f}" if k in p else "—" for k in ("seconds", "train_seconds", "measure_seconds")]
        print(f"| {p['name']} | {p['state']} | " + " | ".join(times) + " |")
    for name in record["committed"]:
        print(f"| {name} | already committed | — | — | — |")
    done, skipped = sum(p["state"] == "done" for p in record["pages"]), len(record["committed"])
    print(f"plan {a.name}: {done + skipped}/{len(record['pages']) + skipped} page(s) in {record['seconds'] / 60:.1f} min on "
          f"{record['hardware']}; results in {a.out}/tidy.tgz")
    return 0 if done == len(record["pages"]) else 1


def _cmd_book(a) -> int:
    from .profiles import parse_overrides
    from ..devices import resolve_device
    from .book import build

    resolve_device(a.device)
    index = build(a.profile, a.results, a.device, a.data_root, a.out, a.chapters or None, executor=a.executor,
                  scheduler=a.scheduler, workers=a.workers, download=a.download, progress=not a.no_progress,
                  overrides=parse_overrides(a.overrides))
    print(f"book built: {index}")
    return 0


def _cmd_compute(a) -> int:
    from .profiles import parse_overrides
    from .compute import compute

    timings = compute(a.profile, a.results, a.device, a.data_root, a.chapters or None, a.workers, a.download,
                      not a.no_progress, parse_overrides(a.overrides))
    call = timings["_calls"][-1]
    print(f"computed in {call['seconds'] / 60:.1f} min on {call['hardware']} (training {call['train_seconds'] / 60:.1f} min)")
    return 0


COMMANDS = {"book": _cmd_book, "compute": _cmd_compute, "plan": _cmd_plan}


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, [add_commands], COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
