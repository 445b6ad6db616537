"""Where a built book's time went, page by page: training, each kind of measurement, and the
rest (kernel start, reading the store, figures, notebook overhead).

    python benchmarks/book_profile.py --profile quick [--results results] [--build _build/quick]

Reads a store a cold build filled and the build's page timings (``_timings.yml`` beside the
executed notebooks). Every store entry records the time its computation took; each page is
replayed on the store read-only (nothing is computed) to see which entries it asks for, and an
entry's time counts for the first page that asks for it, as in the cold build. A measurement
computed inside another one (a landscape's eigenvector, say) counts within that one.
Prints a Markdown table in minutes."""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict
from pathlib import Path

from hessbatch.paper import registry
from hessbatch.paper.book import build_timings
from hessbatch.paper.profiles import executions, load_profile, profile_results, repo_root
from hessbatch.store import Store


def touched(chapter: str, params: dict, res: str) -> list[tuple[str, str]]:
    """The (kind, key) of every entry a page reads, in order."""
    seen = []
    original = Store.get

    def get(self, kind, config=None, key=None, verify=False):
        entry = original(self, kind, config, key, verify)
        if entry is not None:
            seen.append((kind, entry.key))
        return entry

    Store.get = get
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            registry.run_chapter(chapter, params, Store(res, read_only=True))
    finally:
        Store.get = original
    return seen


def profile(prof: dict, res: str, build: Path) -> list[dict]:
    walls = build_timings(build / "src" / "book" / "_timings.yml")
    claimed, rows = set(), []
    for name, chapter, params, _ in executions(prof):
        row = defaultdict(float, page=name, wall=walls.get(name, {}).get("seconds", float("nan")))
        for kind, key in touched(chapter, params, res):
            if (kind, key) in claimed:
                continue
            claimed.add((kind, key))
            result = Store(res).path(kind, key) / "result.json"
            row[kind] += json.loads(result.read_text()).get("time_s", 0.0) if result.is_file() else 0.0
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--results", default=None)
    ap.add_argument("--build", default=None)
    a = ap.parse_args()
    prof = load_profile(a.profile)
    res = a.results or profile_results(prof, None)
    build = Path(a.build or repo_root() / "_build" / prof["profile"])
    rows = profile(prof, res, build)
    kinds = sorted({k for r in rows for k in r if k not in ("page", "wall")}, key=lambda k: (k != "train", k))
    print("| page | wall | " + " | ".join(kinds) + " | rest |")
    print("|---|" + "---:|" * (len(kinds) + 2))
    total = defaultdict(float)
    for r in rows:
        rest = r["wall"] - sum(r[k] for k in kinds)
        for k in [*kinds, "wall"]:
            total[k] += r[k]
        total["rest"] += rest
        print(f"| {r['page']} | {r['wall'] / 60:.1f} | " + " | ".join(f"{r[k] / 60:.1f}" for k in kinds)
              + f" | {rest / 60:.1f} |")
    print(f"| **all pages** | **{total['wall'] / 60:.1f}** | " + " | ".join(f"{total[k] / 60:.1f}" for k in kinds)
          + f" | {total['rest'] / 60:.1f} |")


if __name__ == "__main__":
    main()
