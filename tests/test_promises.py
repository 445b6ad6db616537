"""What hessbatch promises, tried as a hostile-but-honest user would: every bad input is one line
on stderr and exit 2 before anything runs, with nothing written; a store is never destroyed by
an export; a publication killed at any stage leaves the whole entry or nothing; two processes
training the same configuration make one entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hessbatch.errors import HessbatchError
from hessbatch.paper.cli import main
from hessbatch.store import Store

LIB = Path(__file__).resolve().parents[1] / "lib"
TINY = ["--model", "MLP", "--dataset", "mnist5k", "--subset", "10", "--test-subset", "5", "--batch-size", "25",
        "--max-epochs", "2", "--no-progress"]
FILES = {
    "typo.yaml": "trian: {model: MLP, max_epochs: 1}\n",
    "empty.yaml": "{}\n",
    "milestones.yaml": "train: {model: MLP, lr_milestones: 5}\n",
    "seed.yaml": "train: {model: MLP, subset: 10, test_subset: 5, batch_size: 25, seed: 1.5}\n",
    "droplast.yaml": "train: {model: MLP, drop_last: maybe}\n",
    "grid.yaml": "grid: {batch_size: 5}\n",
    "init.yaml": "train: {model: MLP, init_from: ../../elsewhere/train/0123456789abcdef}\n",
    "guide.yaml": "train: {model: MLP, sample_smoothing: {guide: ../x, alpha: 0.1}}\n",
    "inject.yaml": "chapters:\n  04-saddle-free:\n    \"n_samples\\nimport os; os.system('touch PWNED')\\nx\": 1\n",
    "param.yaml": "chapters:\n  04-saddle-free: {n_sample: 3}\n",
    "topkey.yaml": "chapter: {}\nchapters:\n  04-saddle-free: {}\n",
    "afile": "not a folder\n",
    "boolint.yaml": "train: {model: MLP, save_every: true}\n",
    "boolmilestone.yaml": "train: {model: MLP, lr_milestones: [true]}\n",
}

BAD = [
    # train
    (["train", "--model", "VGG"], "unknown model 'VGG'"),
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be an integer in [1, 2147483647], got 0"),
    (["train", "--batch-size", "1e3"], "argument --batch-size: must be an integer in [1, 2147483647], got '1e3'"),
    (["train", "--batch-size", "4001"], "larger than the training set of mnist5k"),
    (["train", "--lr", "-0.1"], "argument --lr: must be a finite number in (0, 1e+06], got -0.1"),
    (["train", "--lr", "abc"], "argument --lr: must be a finite number in (0, 1e+06], got 'abc'"),
    (["train", "--momentum", "1.5"], "argument --momentum: must be a finite number in [0, 1), got 1.5"),
    (["train", "--max-epochs", "0"], "argument --max-epochs/--epochs: must be an integer in [1, "),
    (["train", "--target-loss", "-1"], "argument --target-loss: must be a finite number in [0, 1e+06] or null, got -1.0"),
    (["train", "--lr-milestones", "a,b"], "argument --lr-milestones: must be an integer in [1, 2147483647], got 'a'"),
    (["train", "--lr-milestones", "0"], "argument --lr-milestones: must be an integer in [1, 2147483647], got 0"),
    (["train", "--lr-scaling", "cubic"], "argument --lr-scaling: invalid choice"),
    (["train", "--warmup-epochs", "-1"], "argument --warmup-epochs: must be an integer in [0, 2147483647], got -1"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    (["train", "--subset", "0"], "argument --subset: must be an integer in [1, 2147483647] or null, got 0"),
    (["train", "--micro-batch", "0"], "argument --micro-batch: must be an integer in [1, 2147483647] or null, got 0"),
    (["train", "--label-smoothing", "1.5"], "argument --label-smoothing: must be a finite number in [0, 1) or null, got 1.5"),
    (["train", "--confidence-penalty", "-0.1"], "argument --confidence-penalty: must be a finite number in [0, 1) or null, got -0.1"),
    (["train", "--sample-smoothing", "nokey"], "expected KEY:ALPHA"),
    (["train", "--sample-smoothing", "zz:0.1"], "is not a store key"),
    (["train", "--save-every", "-1"], "argument --save-every: must be an integer in [0, 2147483647], got -1"),
    (["train", "--device", "tpu"], "argument --device: must be cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["train", "--device", "cuda:x"], "argument --device: must be cpu, cuda, cuda:N or auto, got 'cuda:x'"),
    (["train", "--reading", "nope"], "unknown reading of M1 'nope'"),
    (["train", "--results", ""], "--results must name a folder, got ''"),
    (["train", "--results", "{tmp}/afile"], "is not a folder"),
    (["train", "--results", "{tmp}/afile/store"], "afile is not a folder"),
    (["train", "--dataset", "mnist", "--data-root", "{tmp}/none"], "pass --download"),
    (["train", "--dataset", "imagefolder:{tmp}/nothing"], "imagefolder"),
    (["train", "--dataset", "cifar10-jpeg"], "no train/ and test/ class folders"),
    # robust-train
    (["robust-train", "--from", "", "--attack", "fgsm", "--eps", "0.1"], "must be a run's key or a unique prefix (1 to 16 hex digits), got ''"),
    (["robust-train", "--from", "zz", "--attack", "fgsm", "--eps", "0.1"], "must be a run's key or a unique prefix (1 to 16 hex digits), got 'zz'"),
    (["robust-train", "--from", "0000", "--attack", "fgsm", "--eps", "0.1"], "no training run in"),
    (["robust-train", "--from", "{run}", "--attack", "pgd", "--eps", "0.1"], "unknown attack 'pgd'"),
    (["robust-train", "--from", "{run}", "--attack", "fgsm", "--eps=-1"], "argument --eps: must be a finite number in [0, 1e+06], got -"),
    (["robust-train", "--from", "{run}", "--attack", "fgsm", "--eps", "inf"], "argument --eps: must be a finite number in [0, 1e+06], got inf"),
    (["robust-train", "--from", "{run}", "--attack", "fgsm", "--eps", "0.1", "--steps", "3"],
     "attack fgsm takes no option --steps"),
    (["robust-train", "--from", "{run}", "--attack", "fgsm", "--eps", "0.1", "--clean-fraction", "2"],
     "argument --clean-fraction: must be a finite number in [0, 1], got 2.0"),
    (["robust-train", "--from", "{run}", "--eps", "0.1"], "the following arguments are required: --attack"),
    # spectrum
    (["spectrum", "--run", ""], "must be a run's key or a unique prefix (1 to 16 hex digits), got ''"),
    (["spectrum", "--run", "../../x"], "must be a run's key or a unique prefix (1 to 16 hex digits), got '../../x'"),
    (["spectrum", "--run", "{run}", "--split", "val"], "argument --split: invalid choice"),
    (["spectrum", "--run", "{run}", "--subsample", "0"], "argument --subsample: must be an integer in [1, 2147483647], got "),
    (["spectrum", "--run", "{run}", "--subsample", "-5"], "argument --subsample: must be an integer in [1, 2147483647], got "),
    (["spectrum", "--run", "{run}", "--k", "0"], "argument --k: must be an integer in [1, 2147483647], got 0"),
    (["spectrum", "--run", "{run}", "--tol", "0"], "argument --tol: must be a finite number in (0, 1), got 0.0"),
    (["spectrum", "--run", "{run}", "--max-iter", "0"], "argument --max-iter: must be an integer in [1, 2147483647], got 0"),
    (["spectrum", "--run", "{run}", "--epoch", "3"], "has no snapshot for epoch 3"),
    (["spectrum", "--run", "{run}", "--method", "cg"], "argument --method: invalid choice"),
    # landscape
    (["landscape", "--run", "{run}", "--radius", "-1"], "argument --radius: must be a finite number in (0, 1e+06], got "),
    (["landscape", "--run", "{run}", "--radius", "inf"], "argument --radius: must be a finite number in (0, 1e+06], got "),
    (["spectrum", "--run", "{run}", "--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    (["attack", "--run", "{run}", "--attack", ",", "--eps", "0.1"], "argument --attack: must be a list of at least 1 (each a non-empty text), got ()"),
    (["attack", "--run", "{run}", "--eps", ""], "argument --eps: must be a list of at least 1 (each a finite number in [0, 1e+06]), got ()"),
    (["attack", "--run", "{run}", "--attack", "hess", "--eps", "0.1", "--cg-iters", "-1"],
     "argument --cg-iters: must be an integer in [1, 2147483647], got -1"),
    (["attack", "--run", "{run}", "--attack", "hess", "--eps", "0.1", "--damping", "-1"],
     "argument --damping: must be a finite number in [0, 1e+06], got -1.0"),
    (["attack", "--run", "{run}", "--attack", "fhsm", "--eps", "0.1", "--cg-tol", "nan"],
     "argument --cg-tol: must be a finite number in [0, 1e+06], got nan"),
    (["attack", "--run", "{run}", "--attack", "fgsm10", "--eps", "0.1", "--alpha", "0"],
     "argument --alpha: must be a finite number in (0, 1e+06], got 0.0"),
    (["compute", "--profile", "smoke", "--chapters", ""], "argument --chapters: names no chapter"),
    (["sweep", "{tmp}/boolint.yaml"], "boolint.yaml: run 1 of 1: save_every must be an integer in [0, 2147483647], got True"),
    (["sweep", "{tmp}/boolmilestone.yaml"], "boolmilestone.yaml: run 1 of 1: lr_milestones must be a list (each item an integer in [1, 2147483647]), got (True,)"),
    (["landscape", "--run", "{run}", "--points", "2"], "argument --points: must be an integer in [3, 10000], got 2"),
    (["landscape", "--run", "zz"], "must be a run's key or a unique prefix (1 to 16 hex digits), got 'zz'"),
    # attack
    (["attack", "--run", "{run}", "--attack", "pgd", "--eps", "0.1"], "unknown attack 'pgd'"),
    (["attack", "--run", "{run}", "--eps", "abc"], "argument --eps: must be a finite number in [0, 1e+06], got 'abc'"),
    (["attack", "--run", "{run}", "--eps=-0.1"], "argument --eps: must be a finite number in [0, 1e+06], got -"),
    (["attack", "--run", "{run}", "--eps", "inf"], "argument --eps: must be a finite number in [0, 1e+06], got inf"),
    (["attack", "--run", "{run}", "--eps", "0.1", "--limit", "-5"], "argument --limit: must be an integer in [1, 2147483647], got "),
    (["attack", "--run", "{run}", "--eps", "0.1", "--limit", "0"], "argument --limit: must be an integer in [1, 2147483647], got "),
    (["attack", "--run", "{run}", "--eps", "0.1", "--steps", "3"], "attack fgsm takes no option --steps"),
    (["attack", "--run", "{run}", "--eps", "0.1", "--source", "zz"], "must be a run's key or a unique prefix (1 to 16 hex digits), got 'zz'"),
    (["attack", "--run", "{run}", "--eps", "0.1", "--split", "val"], "argument --split: invalid choice"),
    # sweep
    (["sweep", "{tmp}/typo.yaml"], "unknown top-level key(s) trian"),
    (["sweep", "{tmp}/empty.yaml"], "needs a 'train' or a 'grid' block"),
    (["sweep", "{tmp}/binary.yaml"], "not a YAML text file"),
    (["sweep", "{tmp}/milestones.yaml"], "milestones.yaml: run 1 of 1: lr_milestones must be a list (each item an integer in [1, 2147483647]), got 5"),
    (["sweep", "{tmp}/seed.yaml"], "seed.yaml: run 1 of 1: seed must be an integer in [0, 4294967295], got 1.5"),
    (["sweep", "{tmp}/droplast.yaml"], "drop_last must be true or false, got 'maybe'"),
    (["sweep", "{tmp}/grid.yaml"], "grid.batch_size must be a non-empty list"),
    (["sweep", "{tmp}/init.yaml"], "init_from must name a training run by its key"),
    (["sweep", "{tmp}/guide.yaml"], "sample_smoothing must be"),
    (["sweep", "{tmp}/missing.yaml"], "does not exist"),
    (["sweep", "{tmp}/typo.yaml", "--executor", "ray"], "argument --executor: invalid choice"),
    # export, ls, verify
    (["export", "{results}"], "the two folders overlap"),
    (["export", "{results}/../{results_name}"], "the two folders overlap"),
    (["export", "{results}/tidy"], "the two folders overlap"),
    (["export", "{tmp}/link"], "the two folders overlap"),
    (["export", "{tmp}/afile"], "is not a folder"),
    (["ls", "--results", "{tmp}/afile"], "is not a folder"),
    (["verify", "--results", "{tmp}/none"], "no result store at"),
    # book, compute
    (["compute", "--profile", "huge"], "unknown profile 'huge'"),
    (["compute", "--profile", "smoke", "--chapters", "99-nope"], "profile 'smoke' has no chapter(s) 99-nope"),
    (["compute", "--profile", "smoke", "--workers", "0"], "argument --workers: must be an integer in [1, 1024], got 0"),
    (["book", "--profile", "{tmp}/inject.yaml"], "chapter 04-saddle-free has no parameter"),
    (["book", "--profile", "{tmp}/param.yaml"], "chapter 04-saddle-free has no parameter 'n_sample'"),
    (["compute", "--profile", "{tmp}/topkey.yaml"], "unknown top-level key(s) chapter"),
    # plan
    (["plan", "nope", "--out", "{tmp}/o"], "profile 'paper' has no plan 'nope'"),
    (["plan", "c1-table1"], "running a plan needs --out DIR"),
    (["plan", "c1-table1", "--out", "{tmp}/o", "--budget", "0"], "argument --budget: must be an integer in [1, 2147483647], got 0"),
    (["plan", "c1-table1", "--out", "{tmp}/o", "--workers", "0"], "argument --workers: must be an integer in [1, 1024], got 0"),
    (["plan", "c1-table1", "--out", "{tmp}/o", "--device", "tpu"], "argument --device: must be cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["plan", "c1-table1", "--out", "{tmp}/o", "--set", "n_sample=3"], "has no parameter 'n_sample'"),
    (["plan", "--unpack", "{tmp}/none"], "no tidy.tgz and plan.json of a plan here"),
    (["plan", "c1-table1", "--unpack", "{tmp}"], "give either a plan to run or --unpack DIR"),
    ([], "the following arguments are required: COMMAND"),
    (["fly"], "argument COMMAND: invalid choice: 'fly'"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with one tiny run, the files the cases name, and a link to the store."""
    tmp = tmp_path_factory.mktemp("world")
    results = tmp / "store"
    assert main(["train", *TINY, "--results", str(results)]) == 0
    for name, text in FILES.items():
        (tmp / name).write_text(text)
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "link").symlink_to(results)
    return tmp, results, Store(results).entries("train")[0].key


def _tree(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1)
                  for p in folder.rglob("*")) if folder.exists() else []


def test_enough_bad_inputs_across_every_command():
    commands = {argv[0] for argv, _ in BAD if argv}
    assert len(BAD) >= 60 and commands >= {"train", "robust-train", "sweep", "spectrum", "landscape", "attack",
                                            "export", "ls", "verify", "book", "compute", "plan"}


@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a)[:60] or "(none)" for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(world, argv, msg, capsys, monkeypatch):
    tmp, results, key = world
    cwd = tmp / f"cwd-{abs(hash(tuple(argv)))}"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fill = {"{tmp}": str(tmp), "{run}": key, "{results}": str(results), "{results_name}": results.name}
    argv = [_fill(a, fill) for a in argv]
    uses_store = any(str(results) in a or key in a or a.endswith("/link") for a in argv) or argv[:1] == ["export"]
    if "--results" not in argv and argv[:1] not in (["compute"], ["book"], []) and argv != ["fly"]:
        argv += ["--results", str(results if uses_store else tmp / "r")]
    elif argv[:1] in (["compute"], ["book"]):
        argv += ["--results", str(tmp / "r")]
    before = _tree(results)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hessbatch: error: ") and msg in err[0], err
    assert _tree(results) == before and not (tmp / "r").exists() and not any(cwd.iterdir())
    assert not (tmp / "PWNED").exists()


def _fill(a: str, fill: dict) -> str:
    for k, v in fill.items():
        a = a.replace(k, v)
    return a


def test_export_never_deletes_the_stores_weights(tmp_path, monkeypatch):
    """The same folder spelled four ways, a folder inside the store and one that holds it are refused."""
    results = tmp_path / "results"
    assert main(["train", *TINY, "--results", str(results)]) == 0
    (tmp_path / "link").symlink_to(results)
    monkeypatch.chdir(tmp_path)
    for dest in ("results", str(results), f"{results}/../results", "link", "results/train", ".", str(tmp_path)):
        with pytest.raises(HessbatchError, match="the two folders overlap"):
            Store("results").export(dest)
    assert len(list(results.rglob("weights.pt"))) == 1
    assert Store("results").export(tmp_path / "tidy")[0] == 1 and len(list(results.rglob("weights.pt"))) == 1


CHILD = """
import os, sys
import hessbatch.store as st
root, stage = sys.argv[1], sys.argv[2]
if stage == "rename":
    os.rename = lambda *a: os._exit(9)
if stage == "manifest":
    st.file_sha256 = lambda p: os._exit(9)
with st.Store(root).writer("demo", {"a": 1}) as tmp:
    (tmp / "out.txt").write_text("hello")
    if stage == "files":
        os._exit(9)
os._exit(9 if stage == "after" else 0)
"""


@pytest.mark.parametrize("stage", ["files", "manifest", "rename", "after", "none"])
def test_a_publication_killed_at_any_stage_leaves_all_or_nothing(tmp_path, stage):
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), stage], env=env, timeout=120)
    assert res.returncode == (0 if stage == "none" else 9)
    store = Store(tmp_path)
    entry = store.get("demo", {"a": 1}, verify=True)
    if stage in ("after", "none"):
        assert entry is not None and (entry.path / "out.txt").read_text() == "hello"
    else:
        assert entry is None and store.entries() == [] and list((tmp_path / "demo").glob(".*.tmp"))
    with store.writer("demo", {"a": 2}) as tmp:
        (tmp / "out.txt").write_text("next")
    assert not list((tmp_path / "demo").glob(".*.tmp")), "the next write removes a dead publication's leftovers"
    assert store.get("demo", {"a": 2}) is not None


def test_an_empty_manifest_is_not_an_entry(tmp_path):
    store = Store(tmp_path)
    with store.writer("demo", {"a": 1}) as tmp:
        (tmp / "out.txt").write_text("hello")
    e = store.get("demo", {"a": 1})
    (e.path / "MANIFEST.json").write_text('{"key": "%s", "files": {}}' % e.key)
    assert store.get("demo", {"a": 1}) is None and store.invalid() == [e.path]


def test_ls_says_how_many_entries_it_skipped(tmp_path, capsys):
    r = ["--results", str(tmp_path)]
    assert main(["train", *TINY, *r]) == 0
    (next(tmp_path.rglob("history.csv"))).write_text("tampered")
    capsys.readouterr()
    assert main(["ls", *r]) == 0
    assert "is empty; 1 entry skipped: incomplete, or files that do not match their manifest" in capsys.readouterr().out


def test_two_processes_training_one_configuration_make_one_entry(tmp_path):
    """The per-configuration lock is flock across processes, not threads in one."""
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    cmd = [sys.executable, "-m", "hessbatch.cli", "train", *TINY, "--max-epochs", "6", "--results", str(tmp_path)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(Store(tmp_path).entries("train")) == 1
    assert sum("found in the store" in o for o in outs) == 1


def test_two_processes_measuring_one_thing_compute_it_once(tmp_path):
    """A measurement asked for by two processes at once (two chapters of a book computed side by
    side) is computed by one; the other waits for it and reads it."""
    script = ("import sys, time\nfrom hessbatch.store import Store\n"
              "def compute():\n    open(sys.argv[2], 'a').write('computed\\n'); time.sleep(2)\n"
              "    return {'v.json': {'v': 1}}, {}\n"
              "e = Store(sys.argv[1]).cached('spectrum', {'run': 'abc', 'k': 2}, compute)\n"
              "print(e.json('v.json')['v'])\n")
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store"), str(log)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in procs] == ["1", "1"]
    assert log.read_text() == "computed\n"
