"""The ``hessbatch`` command: the toolkit's commands (``hessbatch.cli``) plus the paper layer's
``book`` and ``compute``."""

from __future__ import annotations

import argparse
import sys

from .. import cli


def profile_flags(p: argparse.ArgumentParser) -> None:
    """--profile and --chapters, of `book` and `compute`."""
    p.add_argument("--profile", default="quick", help="smoke, quick (default), paper, or a path to a profile YAML")
    p.add_argument("--chapters", type=lambda v: [c for c in v.split(",") if c], action="extend", default=None,
                   help="chapters (all their variants) or single variants as chapter--label, comma-separated "
                        "or flag repeated (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="NAME=VALUE",
                   help="set a parameter of the chosen chapters (repeatable; VALUE is read as YAML, e.g. "
                        "attack=fgsm10 or batch_sizes=[16,64]); the pages' names and titles carry the value")



def add_commands(sub) -> None:
    """The subparsers of ``book`` and ``compute``."""
    from ..catalog import EXECUTORS

    bk = sub.add_parser("book", help="run every chapter with papermill and build the Jupyter Book",
                        description="Execute the book's notebooks with a profile's parameters (papermill; results "
                        "come from the store when they exist), then build the HTML with Jupyter Book. Executed "
                        "copies and the HTML go to _build/<profile>/; the sources in book/ stay clean.")
    profile_flags(bk)
    bk.add_argument("--out", default=None, metavar="DIR", help="build folder (default: _build/<profile>)")
    bk.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="processes or dask: train the profile's runs as a sweep first (default: local)")
    bk.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler (default: a LocalCluster)")
    bk.add_argument("--workers", type=int, default=None, help="worker processes (processes executor, or a Dask LocalCluster)")
    cli.common_flags(bk)

    co = sub.add_parser("compute", help="compute a book profile's results without notebooks (e.g. on a GPU)",
                        description="Train every run of a profile (several at once with --workers), then compute "
                        "each chapter's measurements into the profile's store; `hessbatch book` then only reads them. "
                        "Resumes from the store; each chapter's wall time goes to <results>/_timings.yml.")
    profile_flags(co)
    co.add_argument("--workers", type=int, default=1,
                    help="training runs, then chapters, computed at once, one process each (default: 1)")
    cli.common_flags(co)


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


COMMANDS = {"book": _cmd_book, "compute": _cmd_compute}


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser([add_commands])


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, [add_commands], COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
