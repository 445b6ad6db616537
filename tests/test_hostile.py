"""Hostile input drawn from the declared schemas (``hessbatch.schema``): every typed flag of every
command, every training option in a sweep file, every environment variable, given wrong types,
out-of-range, non-finite, empty and huge values. Each must be one line on stderr and exit 2 in
under half a second, with nothing written. Then the cases no schema generates, grouped by the
mechanism that catches them: folders, YAML limits, checks before any write."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hessbatch import schema
from hessbatch.config import TrainConfig
from hessbatch.paper.parser import build_parser

HESSBATCH = [sys.executable, "-m", "hessbatch.paper.cli"]
# What each command needs besides the flag under test, so that the flag is what fails.
NEEDS = {"spectrum": ["--run", "0a"], "landscape": ["--run", "0a"], "attack": ["--run", "0a", "--eps", "0.1"],
         "robust-train": ["--attack", "fgsm", "--eps", "0.1"], "sweep": ["{tmp}/ok.yaml"], "export": ["{tmp}/dest"],
         "plan": ["c1-table1", "--out", "{tmp}/out"]}
POSITIONAL = {"sweep", "export", "plan"}


def _bad_texts(spec: schema.Spec) -> list[str]:
    """Command-line values the spec refuses: wrong type, out of range, non-finite, empty, huge."""
    out = ["", "abc", "nan", "inf", "-inf", "1e400", "9" * 40, "true", "[1]"]
    if spec.kind in ("int", "num"):
        out += [str(spec.lo - 1)] if spec.lo is not None else []
        out += [str(spec.lo)] if spec.lo is not None and spec.lo_open else []
        out += [repr(spec.hi * 10 + 1)] if spec.hi is not None else []
        out += ["1.5"] if spec.kind == "int" else []
    if spec.kind == "list":
        out += [",", "0,abc", "1,nan"]
    return [v for v in dict.fromkeys(out) if not _accepts(spec, v)]


def _accepts(spec: schema.Spec, text: str) -> bool:
    try:
        spec.parse(text)
        return True
    except Exception:  # noqa: BLE001
        return False


def _some(values: list, i: int, n: int) -> list:
    """``n`` of ``values``, starting at the ``i``-th: drawn in turn, so that every kind of bad value
    comes up across the fields, in a suite that stays short."""
    return [values[(i + j) % len(values)] for j in range(min(n, len(values)))]


def _flag_cases() -> list[tuple[list[str], str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for command, p in sub.choices.items():
        for action in p._actions:
            spec = getattr(action.type, "spec", None)
            if spec is None or not action.option_strings:
                continue
            flag = action.option_strings[0]
            for value in _some(_bad_texts(spec), len(cases), 2):
                rest = NEEDS.get(command, [])
                argv = [command, *rest[:1], f"{flag}={value}", *rest[1:]] if command in POSITIONAL \
                    else [command, f"{flag}={value}", *rest]
                cases.append((argv, f"argument {flag}"))
    return cases


_YAML_BAD = {"int": ["true", "1.5", "'3'", "[1]", "{a: 1}", ".nan", "1e400", "99999999999999999999", "-5"],
             "num": ["true", "'0.1'", "[1]", ".nan", ".inf", "-.inf", "1e400", "-5"],
             "bool": ["1", "'yes'", "[true]", "null"],
             "str": ["1", "true", "[a]", "''", "{a: 1}"],
             "list": ["5", "'1,2'", "{a: 1}", "[true]", "[.nan]"],
             "map": ["5", "[1]", "'a'", "{1: 2}"]}


def _sweep_cases() -> list[tuple[str, str]]:
    cases = []
    for name, spec in schema.specs(TrainConfig).items():
        values = [v for v in _YAML_BAD[spec.kind] + (["nope"] if spec.choices else []) if not (v == "null" and spec.null)]
        for value in _some(values, len(cases), 4):
            cases.append((f"train: {{model: MLP, {name}: {value}}}\n", name))
    return cases


def _env_cases() -> list[tuple[str, str]]:
    cases = []
    for name, spec in schema.ENVIRONMENT.items():
        values = ["~nosuchuser/x", "\x01" * 300] if spec == "folder" else \
            [v for v in ["abc", "nan", "-1", "2", "false", "off", "1e400"] if not _accepts(spec, v)]
        cases += [(name, v) for v in values]
    return cases


FLAGS, SWEEPS, ENVS = _flag_cases(), _sweep_cases(), _env_cases()


def test_at_least_300_hostile_inputs_are_drawn():
    assert len(FLAGS) + len(SWEEPS) + len(ENVS) >= 300
    commands = {argv[0] for argv, _ in FLAGS}
    assert commands >= {"train", "robust-train", "sweep", "spectrum", "landscape", "attack", "compute", "plan", "book"}


def _refused(tmp_path, argv, env=None) -> str:
    """Run the command in an empty folder; the one line it printed, after the promises are checked."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    (tmp_path / "ok.yaml").write_text("train: {model: MLP}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] not in ("compute", "book", "plan") and "--results" not in argv:
        argv += ["--results", str(tmp_path / "store")]
    before = sorted(tmp_path.rglob("*"))
    t0 = time.perf_counter()
    res = subprocess.run([*HESSBATCH, *argv], capture_output=True, text=True, timeout=60, cwd=cwd,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("HESSBATCH_")}, **(env or {})})
    seconds = time.perf_counter() - t0
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("hessbatch: error: "), (argv, res.stderr)
    assert sorted(tmp_path.rglob("*")) == before, argv   # nothing written, no lock
    assert seconds < 0.5, (argv, seconds)
    return lines[0]


@pytest.mark.parametrize("argv,flag", FLAGS, ids=[" ".join(a)[:70] for a, _ in FLAGS])
def test_a_bad_flag_value(tmp_path, argv, flag):
    assert flag in _refused(tmp_path, argv)


@pytest.mark.parametrize("text,name", SWEEPS, ids=[t.strip()[22:70] for t, _ in SWEEPS])
def test_a_bad_option_in_a_sweep_file(tmp_path, text, name):
    (tmp_path / "bad.yaml").write_text(text)
    line = _refused(tmp_path, ["sweep", "{tmp}/bad.yaml"])
    assert name in line or "YAML" in line


@pytest.mark.parametrize("name,value", ENVS, ids=[f"{n}={v[:12]!r}" for n, v in ENVS])
def test_a_bad_environment_variable(tmp_path, name, value):
    args = ["train", "--model", "MLP", "--max-epochs", "1"]
    assert name in _refused(tmp_path, args, {name: value})


# -- cases no schema draws, by mechanism ------------------------------------------------------------

TINY = ["--model", "MLP", "--dataset", "mnist5k", "--subset", "10", "--test-subset", "5", "--batch-size", "25",
        "--max-epochs", "2", "--no-progress"]


@pytest.mark.parametrize("argv,msg", [
    (["train", *TINY, "--seed", str(2**64)], "argument --seed: must be an integer in [0, 4294967295]"),
    (["train", *TINY, "--device", "xpu"], "argument --device: must be cpu, cuda, cuda:N or auto"),
    (["sweep", "{tmp}/ok.yaml", "--threads", "-1"], "argument --threads"),
    (["robust-train", *TINY, "--attack", "fgsm10", "--eps", "0.1", "--steps", "0"], "argument --steps"),
])
def test_values_checked_when_parsed(tmp_path, argv, msg):
    assert msg in _refused(tmp_path, argv)


@pytest.mark.parametrize("where,msg", [
    ("~nosuchuser/x", "no such user's home folder"),
    ("{tmp}/dangling", "is a symbolic link to nothing"),
    ("{tmp}/loop", "Too many levels of symbolic links"),
    ("{tmp}/" + "x/" * 3000, "the name is too long"),
    ("{tmp}/" + "y" * 300, "the name is too long"),
    ("{tmp}/afile", "is not a folder"),
    ("{tmp}/afile/below", "is not a folder"),
])
@pytest.mark.parametrize("flag", ["--results", "--data-root", "HESSBATCH_RESULTS", "HESSBATCH_DATA",
                                  "HESSBATCH_CACHE"])
def test_folders_are_checked_before_anything_runs(tmp_path, flag, where, msg):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "afile").write_text("a file\n")
    where = where.replace("{tmp}", str(tmp_path))
    argv = ["train", *TINY]
    if flag.startswith("--"):
        line = _refused(tmp_path, [*argv, flag, where] if flag != "--results" else ["ls", flag, where])
    else:
        line = _refused(tmp_path, argv, {flag: where})
    assert msg in line


@pytest.mark.parametrize("text,msg", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghijklmn", "bcdefghijklmno")),
     "YAML aliases"),
    ("train: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("grid: {seed: [" + ", ".join(map(str, range(1000))) + "], batch_size: [" + ", ".join(map(str, range(1, 1001)))
     + "]}\n", "the grid asks for more than 10000 runs"),
    ("train: {1: 2}\n", "a key must be a text"),
    ("train: {model: MLP}\ngrid: {null: [1]}\n", "a key must be a text"),
    ("train: {batch_size: abc}\n", "batch_size must be an integer"),
    ("# " + "x" * (2 << 20) + "\n", "larger than 1 MiB"),
])
def test_yaml_is_read_with_limits(tmp_path, text, msg):
    (tmp_path / "s.yaml").write_text(text)
    assert msg in _refused(tmp_path, ["sweep", "{tmp}/s.yaml"])


@pytest.mark.parametrize("argv,msg", [
    (["compute", "--profile", "smoke", "--chapters", "01-batch-size", "--set", "model=VGG"], "unknown model 'VGG'"),
    (["compute", "--profile", "smoke", "--chapters", "01-batch-size", "--set", "k=0"], "k must be an integer in [1,"),
    (["compute", "--profile", "smoke", "--set", "seed=-1"], "seed must be an integer in [0, 4294967295]"),
    (["compute", "--profile", "smoke", "--set", "batch_sizes=[]"], "batch_sizes must be a list of at least 1"),
    (["compute", "--profile", "smoke", "--set", "train_options={lr: .nan}"], "lr must be a finite number"),
    (["plan", "c1-table1", "--dry-run", "--data-root", "{tmp}/empty", "--out", "{tmp}/out"], "no train/ and test/"),
    (["book", "--profile", "smoke", "--out", "{tmp}/afile"], "is not a folder"),
])
def test_the_paper_layer_checks_before_it_writes(tmp_path, argv, msg):
    """A page's parameters and its runs' options are checked before ``_timings.yml``, a lock or
    ``plan.json`` is written (these import torch, so the half second does not apply)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("a file\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "compute":
        argv += ["--results", str(tmp_path / "store")]
    before = sorted(tmp_path.rglob("*"))
    res = subprocess.run([*HESSBATCH, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and msg in lines[0], res.stderr
    assert sorted(tmp_path.rglob("*")) == before


def _images(root: Path, odd=None) -> Path:
    """A two-class image folder of 8x8 grey images; ``odd`` (file name → image) adds one."""
    from PIL import Image

    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.new("L", (8, 8), 40 * i).save(root / split / c / f"{i}.png")
    for name, make in (odd or {}).items():
        make(root / "train" / "a" / name)
    return root


@pytest.mark.parametrize("name,make,msg", [
    ("big.png", lambda p: __import__("PIL.Image").Image.new("L", (9, 8)).save(p), "an image folder's images are all one size"),
    ("bomb.png", lambda p: __import__("PIL.Image").Image.new("1", (5000, 5000)).save(p), "more than one image"),
    ("text.png", lambda p: p.write_text("not an image\n"), "not a readable image"),
])
def test_an_image_folder_with_a_bad_image_is_one_line(tmp_path, name, make, msg):
    data = _images(tmp_path / "data", {name: make})
    before = sorted(data.rglob("*"))
    res = subprocess.run([*HESSBATCH, "train", "--model", "MLP", "--dataset", f"imagefolder:{data}", "--batch-size",
                          "2", "--results", str(tmp_path / "store"), "--no-progress"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**os.environ, "HESSBATCH_CACHE": str(tmp_path / "cache")})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and msg in lines[0], res.stderr
    assert sorted(data.rglob("*")) == before and not (tmp_path / "cache").exists() and not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def plan_out(tmp_path_factory):
    """What a plan hands back (``tidy.tgz``, ``plan.json``) for a store holding one tiny run."""
    from hessbatch.paper.cli import main
    from hessbatch.paper.plans import export

    tmp = tmp_path_factory.mktemp("plan")
    assert main(["train", *TINY, "--results", str(tmp / "store")]) == 0
    export(str(tmp / "store"), tmp / "tidy.tgz")
    record = {"plan": "p", "title": "p", "profile": "paper", "dry_run": False, "device": "cpu", "hardware": "cpu",
              "workers": 1, "budget_s": None, "started": "2026-01-01 00:00", "seconds": 1.0,
              "pages": [{"name": "01-batch-size", "state": "done", "seconds": 1.0, "train_seconds": 0.5}]}
    return tmp, record


def _retar(src: Path, dest: Path, change) -> None:
    """``src`` (a gzipped tar) rewritten into ``dest`` with ``change(folder)`` applied to its files."""
    import tarfile

    with tempfile.TemporaryDirectory() as t:
        with tarfile.open(src) as tar:
            tar.extractall(t, filter="data")
        entry = next(Path(t).glob("train/*"))
        change(entry)
        with tarfile.open(dest, "w:gz") as tar:
            for p in sorted(Path(t).rglob("*")):
                tar.add(p, arcname=str(p.relative_to(t)), recursive=False)


def _manifest(entry: Path, edit) -> None:
    m = json.loads((entry / "MANIFEST.json").read_text())
    edit(m["files"])
    (entry / "MANIFEST.json").write_text(json.dumps(m))


def _big(entry: Path) -> None:
    (entry / "big.csv").write_bytes(b"x" * (2 << 20))
    _manifest(entry, lambda f: f.update({"big.csv": {"size": 2 << 20, "sha256": "0" * 64}}))


UNPACK = {
    "a wrong size": (lambda e: _manifest(e, lambda f: f["history.csv"].update(size=f["history.csv"]["size"] + 1)),
                     None, "entries that are not whole"),
    "a wrong hash over 1 MiB": (_big, None, "entries that are not whole"),
    "a link": (lambda e: os.symlink("/etc/passwd", e / "link.txt"), None, "holds links or special files"),
    "no JSON": (None, "{not json", "not a plan's record"),
    "a list": (None, "[1, 2]", "expected a mapping, got list"),
    "pages as text": (None, {"pages": "x"}, "pages must be a list"),
    "a page without seconds": (None, {"pages": [{"name": "x", "state": "done"}]}, "no 'seconds'"),
    "not a tar": ("not a tar", None, "not a readable gzipped tar"),
    "a cut tar": ("cut", None, "not a readable gzipped tar"),
}


@pytest.mark.parametrize("case", list(UNPACK))
def test_a_malformed_plan_is_refused_before_anything_is_merged(plan_out, tmp_path, case):
    src, record = plan_out
    change, plan, msg = UNPACK[case]
    out = tmp_path / "out"
    out.mkdir()
    if change == "not a tar":
        (out / "tidy.tgz").write_bytes(b"not a tar at all")
    elif change == "cut":
        (out / "tidy.tgz").write_bytes((src / "tidy.tgz").read_bytes()[:200])
    elif change is not None:
        _retar(src / "tidy.tgz", out / "tidy.tgz", change)
    else:
        (out / "tidy.tgz").write_bytes((src / "tidy.tgz").read_bytes())
    (out / "plan.json").write_text(plan if isinstance(plan, str) else json.dumps({**record, **(plan or {})}))
    dest = tmp_path / "dest"
    res = subprocess.run([*HESSBATCH, "plan", "--unpack", str(out), "--results", str(dest)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and msg in lines[0], res.stderr
    assert not dest.exists() or not any(dest.rglob("*"))


def test_a_whole_plan_is_merged(plan_out, tmp_path):
    src, record = plan_out
    (src / "plan.json").write_text(json.dumps(record))
    res = subprocess.run([*HESSBATCH, "plan", "--unpack", str(src), "--results", str(tmp_path / "dest")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and "1 added" in res.stdout, res.stderr
