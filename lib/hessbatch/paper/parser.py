"""The ``hessbatch`` command line's parser: the toolkit's commands (``hessbatch.cli``) plus the
paper layer's ``book``, ``compute`` and ``plan``, and the command reference generated from it."""

from __future__ import annotations

import argparse

from .. import cli, schema


def _names(value: str) -> list[str]:
    names = [c.strip() for c in value.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"names no chapter: {value!r}")
    return names


def profile_flags(p: argparse.ArgumentParser) -> None:
    """--profile and --chapters, of `book` and `compute`."""
    p.add_argument("--profile", default="quick", type=cli.typed(schema.text()), help="smoke, quick (default), paper, or a path to a profile YAML")
    p.add_argument("--chapters", type=_names, action="extend", default=None,
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
    bk.add_argument("--executor", choices=("auto", *EXECUTORS), default="auto",
                    help="processes: compute the pages' runs and their measurements (a page's as soon as its runs "
                         "are done), several at once before the notebooks; dask: train the runs as a sweep first; local: each notebook computes what it "
                         "shows (default: auto, processes on a CPU of several cores, else local)")
    bk.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler (default: a LocalCluster)")
    bk.add_argument("--workers", type=cli.typed(schema.integer(1, 1024)), help="worker processes (processes executor, or a Dask LocalCluster; default: one per core)")
    cli.common_flags(bk)

    co = sub.add_parser("compute", help="compute a book profile's results without notebooks (e.g. on a GPU)",
                        description="Train every run of a profile and compute each chapter's measurements into the "
                        "profile's store (with --workers, in that many processes, a chapter as soon as its runs are done); `hessbatch book` then only reads them. "
                        "Resumes from the store; each chapter's wall time goes to <results>/_timings.yml.")
    profile_flags(co)
    co.add_argument("--workers", type=cli.typed(schema.integer(1, 1024)), default=1,
                    help="processes sharing the training runs and then the chapters, a chapter starting as soon as "
                         "its runs are done (default: 1)")
    cli.common_flags(co)

    pl = sub.add_parser("plan", help="list a profile's plans, run one within its time budget, or merge one's results",
                        description="A plan is a named piece of a profile (its `plans:` block) that computes page by "
                        "page into a fresh store and writes OUT/tidy.tgz and OUT/plan.json after each page, so a "
                        "command stopped at its limit keeps every finished page. Without NAME: the plans in "
                        "priority order and what of each is still missing from the profile's store.")
    pl.add_argument("name", nargs="?", default=None, help="the plan to run (default: list the plans)")
    pl.add_argument("--profile", default="paper", type=cli.typed(schema.text()), help="the profile whose plans these are (default: paper)")
    pl.add_argument("--out", metavar="DIR", default=None, help="where tidy.tgz and plan.json go (needed to run one)")
    pl.add_argument("--dry-run", action="store_true",
                    help="the same pages through the same code and export at toy size (tiny data, 2 epochs)")
    pl.add_argument("--budget", type=cli.typed(schema.integer()), metavar="SECONDS",
                    help="start no page after this much wall time (default: the plan's budget_s; a dry run: none)")
    pl.add_argument("--workers", type=cli.typed(schema.integer(1, 1024)), default=1,
                    help="processes: a page's training runs this many at once, then its measurements in as many "
                         "parts (default: 1)")
    pl.add_argument("--train-only", action="store_true",
                    help="only train the plan's runs into --results (resuming from their checkpoints); measure "
                         "them later with a full call")
    pl.add_argument("--record-progress", action="store_true",
                    help="write where the plan's runs in --results stand (epoch and losses of the unfinished) into "
                         "the profile's committed store, for its pages to show; trains nothing")
    pl.add_argument("--adopt-from", dest="earlier", action="append", default=None, metavar="NAME=VALUE",
                    help="carry the checkpoints of the plan's unfinished runs in --results that these earlier "
                         "parameters gave (e.g. train_options without a schedule) to its runs now, where the two "
                         "differ only in the learning-rate schedule and agree through the epochs trained; trains "
                         "nothing")
    pl.add_argument("--unpack", metavar="DIR", default=None,
                    help="merge DIR/tidy.tgz (what a plan handed back) into the profile's store instead")
    pl.add_argument("--set", dest="overrides", action="append", default=None, metavar="NAME=VALUE",
                    help="set a parameter of the plan's pages (as for book and compute)")
    cli.common_flags(pl)


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser([add_commands])


def reference(width: int = 100) -> str:
    """The command reference as Markdown, from the parser itself: the book's ``cli-reference`` page,
    generated at each build so that it cannot drift from the code."""
    import os

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal's width
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        out = ["# Command reference", "",
               "Every command and option of `hessbatch`, generated from its own parser when the book is built; "
               "`hessbatch COMMAND --help` prints the same.", "",
               "```text", parser.format_help().rstrip(), "```", ""]
        for name, p in sub.choices.items():
            out += [f"## `hessbatch {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
