"""What the book's introduction gathers from a build: the machine and each chapter's wall time,
where the results were computed, and the claim checks of every page."""

from __future__ import annotations

import os
from pathlib import Path

from .. import __version__
from .claims import UNCHECKED
from .figures import commit
from .notebook import CLAIMS_GLUE, executed, glued_markdown


def provenance_table(profile: str, timings: list[tuple[str, float, str]], computed: dict | None = None,
                     phases: dict | None = None) -> str:
    """Markdown: the machine, each chapter's wall time when it was last executed (a chapter whose
    results were already in the store only reads them, and is fast), and where ``hessbatch compute``
    measured them, if it did."""
    import datetime
    import platform

    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    lines = [f"Built {datetime.datetime.now():%Y-%m-%d %H:%M} with profile `{profile}` on {platform.machine()} "
             f"({os.cpu_count()} cores{gpu}), torch {torch.__version__}, hessbatch {__version__} "
             f"(commit `{commit()}`). Wall time of each chapter when it was last executed (a chapter whose "
             "results were already in the store only reads them):", "", "| chapter | device | wall time |",
             "|---|---|---:|"]
    lines += [f"| [{n}]({n}) | {d} | {t / 60:.1f} min |" for n, t, d in timings]
    if phases:
        whole = (f"; with their measurements, which began as each page's runs were done, "
                 f"{phases['_computing'] / 60:.1f} min in all" if "_computing" in phases else "")
        lines += ["", "Before the notebooks ran (they then only read the store), the pages' training runs took "
                  f"{phases.get('_training', 0) / 60:.1f} min{whole}, several processes at once."]
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


def claims_summary(folder: Path, pages: list[str]) -> str:
    """Markdown for the introduction: how many of the paper's claims hold on each page executed in
    ``folder``, then every claim that does not, with its statistic, page by page."""
    counts, failing = [], []
    for name in pages:
        path = folder / f"{name}.ipynb"
        lines = glued_markdown(path, CLAIMS_GLUE) if path.is_file() else None
        if lines is None:
            why = ("not computed" if not path.is_file() else "no claims checked" if executed(path)
                   else "not executed by this build")
            counts.append(f"| [{name}]({name}) | {why} | | |")
            continue
        marks = [line[2:3] for line in lines.splitlines() if line.startswith("- ")]
        counts.append(f"| [{name}]({name}) | {marks.count('✓')} | {marks.count('✗')} | {marks.count(UNCHECKED)} |")
        failing += [f"- [{name}]({name}): {line[4:]}" for line in lines.splitlines() if line.startswith("- ✗")]
    out = ["Each page checks the paper's claims that apply to it on its own numbers (— : too few points "
           "to check yet):", "", "| page | hold | do not hold | not checked |", "|---|---:|---:|---:|", *counts]
    if failing:
        out += ["", "The claims that do not hold here:", "", *failing]
    return "\n".join(out) + "\n"
