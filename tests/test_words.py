"""The project speaks of its hardware and its results, never of how the work on it was organised."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = re.compile(r"\bsessions?\b|\bworkplace\b|\blent\b|\blending\b|\ballott(ed|ing)\b|"
                   r"(?<!PyHessian )\bissues? #?\d+", re.IGNORECASE)
PUBLISHED = ("README.md", "CHANGELOG.md", "CITATION.cff", ".zenodo.json", "book/", "params/", "lib/", "scripts/",
             "benchmarks/", "paper-results/")


def _published() -> list[Path]:
    files = subprocess.run(["git", "ls-files", *PUBLISHED], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / f for f in files if Path(f).suffix in {".md", ".py", ".yaml", ".yml", ".cff", ".json", ".ipynb",
                                                          ".sh", ".csv", ".bib", ".txt", ""}]


def test_no_words_of_how_the_work_was_organised():
    found = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in _published() if p.is_file()
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for m in WORDS.finditer(line)]
    assert found == []


def test_the_check_can_fail():
    assert WORDS.search("computed in session 18") and WORDS.search("no GPU was lent") and WORDS.search("(issue 21)")
    assert not WORDS.search("PyHessian issue 5")


def test_the_command_reference_is_the_parsers_own_help(monkeypatch):
    from hessbatch.paper.parser import build_parser, reference

    text = reference()
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    for name in ("train", "spectrum", "export", "verify", "book", "compute", "plan"):
        assert f"## `hessbatch {name}`" in text
    assert parser.format_help().rstrip() in text and "--record-progress" in text
