import os
import subprocess
import sys

import pytest

from hessbatch.paper.cli import main
from hessbatch.store import Store

TINY = ["--model", "MLP", "--dataset", "mnist5k", "--subset", "10", "--test-subset", "5", "--batch-size", "25",
        "--max-epochs", "2", "--no-progress"]


def test_train_then_cached(tmp_path, capsys):
    assert main(["train", *TINY, "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "capped after 2 epochs" in out and f"stored at {tmp_path}" in out
    assert main(["train", *TINY, "--results", str(tmp_path)]) == 0
    assert "found in the store" in capsys.readouterr().out
    assert main(["ls", "--results", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "MLP" in listing and "capped" in listing
    key = Store(tmp_path).entries("train")[0].key
    assert main(["spectrum", "--run", key[:6], "--k", "2", "--results", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["ls", "--kind", "spectrum", "--results", str(tmp_path)]) == 0
    (row,) = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.split()[0] == "spectrum"]
    assert row[2:7] == ["MLP", "mnist5k", "25", "0", key[:8]] and row[7] == "train"   # the run it measured


def test_train_objective_flags(tmp_path, capsys):
    """--label-smoothing, --confidence-penalty, --micro-batch and --sample-smoothing KEY:ALPHA reach
    the stored configuration; the guide may be given by a key prefix."""
    r = ["--results", str(tmp_path)]
    assert main(["train", *TINY, *r, "--save-every", "1", "--max-epochs", "3"]) == 0
    guide = Store(tmp_path).entries("train")[0].key
    assert main(["train", *TINY, *r, "--sample-smoothing", f"{guide[:6]}:0.2", "--micro-batch", "5"]) == 0
    assert main(["train", *TINY, *r, "--label-smoothing", "0.1", "--confidence-penalty", "0.2"]) == 0
    configs = [e.config["config"] for e in Store(tmp_path).entries("train")]
    assert {"guide": guide, "alpha": 0.2} in [c.get("sample_smoothing") for c in configs]
    assert any(c.get("micro_batch") == 5 for c in configs)
    assert any(c.get("label_smoothing") == 0.1 and c.get("confidence_penalty") == 0.2 for c in configs)
    capsys.readouterr()
    assert main(["train", *TINY, *r, "--sample-smoothing", "0.2"]) == 2  # argparse's error, as one line
    assert "expected KEY:ALPHA" in capsys.readouterr().err


def test_results_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HESSBATCH_RESULTS", str(tmp_path / "env"))
    assert main(["train", *TINY]) == 0
    assert f"stored at {tmp_path / 'env'}" in capsys.readouterr().out


def test_sweep_runs_grid_and_skips_finished(tmp_path, capsys):
    p = tmp_path / "grid.yaml"
    p.write_text("train: {model: MLP, dataset: mnist5k, subset: 10, test_subset: 5, max_epochs: 1}\n"
                 "grid: {batch_size: [25, 50], seed: [0, 1]}\n")
    assert main(["sweep", str(p), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "4 done, 0 cached, 0 failed" in capsys.readouterr().out
    assert main(["sweep", str(p), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "0 done, 4 cached, 0 failed" in capsys.readouterr().out


BAD = [
    (["compute", "--profile", "smoke", "--chapters", "99-nope"], "profile 'smoke' has no chapter(s) 99-nope"),
    (["compute", "--profile", "smoke", "--workers", "0"], "argument --workers: must be an integer in [1, 1024], got 0"),
    (["compute", "--profile", "huge"], "unknown profile 'huge'"),
    (["export", "tidy"], "no result store at"),
    (["train", "--dataset", "cifar10-jpeg"], "no train/ and test/ class folders"),
    (["train", "--model", "VGG"], "unknown model 'VGG'"),
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be an integer in [1, 2147483647], got 0"),
    (["train", "--batch-size", "4001"], "larger than the training set of mnist5k (4000 samples)"),
    (["train", "--lr", "-0.1"], "argument --lr: must be a finite number in (0, 1e+06], got -0.1"),
    (["train", "--lr-plateau", "5:30:1"], "argument --lr-plateau: expected PATIENCE[:AFTER]"),
    (["train", "--lr-plateau", "0:30"], "lr_plateau.patience must be an integer in [1, 2147483647], got 0"),
    (["train", "--dataset", "mnist", "--data-root", "{tmp}/none"], "pass --download"),
    (["sweep", "{tmp}/bad.yaml"], "malformed YAML at line 3"),
    (["sweep", "{tmp}/missing.yaml"], "does not exist"),
    (["sweep", "{tmp}/unknown.yaml"], "unknown training option(s) colour"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, argv, msg):
    (tmp_path / "bad.yaml").write_text("train:\n  model: [M1\n")
    (tmp_path / "unknown.yaml").write_text("train: {colour: red}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "HESSBATCH_DATA"}  # no data found from the checkout's data/
    res = subprocess.run([sys.executable, "-m", "hessbatch.paper.cli", *argv, "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hessbatch: error: ") and msg in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["compute", "--profile", "smoke"],
                                     ["plan", "m1-table7", "--dry-run", "--out", "OUT"]])
def test_bad_graph_memory_share_is_one_line_before_compute(tmp_path, command):
    env = {**os.environ, "HESSBATCH_GRAPH_MEMORY": "2"}
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    res = subprocess.run([sys.executable, "-m", "hessbatch.paper.cli", *argv, "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == "hessbatch: error: HESSBATCH_GRAPH_MEMORY must be a finite number in [0, 1], got 2.0"
    assert not (tmp_path / "r").exists() and not (tmp_path / "out").exists()


def test_chapters_flag_comma_separated_or_repeated():
    from hessbatch.paper.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["compute", "--chapters", "01-batch-size,02-landscapes", "--chapters", "03-dynamics"]).chapters == [
        "01-batch-size", "02-landscapes", "03-dynamics"]
    assert parse(["book"]).chapters is None


def test_compute_no_progress_is_quiet(tmp_path, capsys):
    import yaml

    from hessbatch.paper.profiles import load_profile

    smoke = load_profile("smoke")
    prof = {"profile": "q", "common": smoke["common"], "chapters": {"04-saddle-free": smoke["chapters"]["04-saddle-free"]}}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(prof))
    assert main(["compute", "--profile", str(tmp_path / "q.yaml"), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "04-saddle-free:" in out and "sweep" not in err and "%|" not in err


def test_help_documents_every_option():
    res = subprocess.run([sys.executable, "-m", "hessbatch.cli", "train", "--help"], capture_output=True, text=True)
    for opt in ("--model", "--dataset", "--batch-size", "--lr", "--epochs", "--target-loss", "--seed", "--results"):
        assert opt in res.stdout


def test_robust_train_and_attack_commands(tmp_path, capsys):
    r = ["--results", str(tmp_path)]
    assert main(["train", *TINY, *r]) == 0
    key = Store(tmp_path).entries("train")[0].key
    assert main(["robust-train", "--from", key[:8], "--attack", "grad", "--eps", "1.0", "--max-epochs", "1",
                 "--no-progress", *r]) == 0
    assert "capped after 1 epochs" in capsys.readouterr().out
    assert main(["attack", "--run", key[:8], "--attack", "fgsm,grad", "--eps", "0,0.1", *r]) == 0
    out = capsys.readouterr().out
    assert out.count("fgsm") == 2 and out.count("grad") == 2


@pytest.mark.parametrize("argv,msg", [
    (["attack", "--attack", "pgd", "--eps", "0.1"], "unknown attack 'pgd'"),
    (["attack", "--attack", "fgsm", "--eps=-0.1"], "argument --eps: must be a finite number in [0, 1e+06], got -"),
    (["attack", "--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "attack fgsm takes no option --steps"),
    (["robust-train", "--attack", "fgsm", "--eps=-1"], "argument --eps: must be a finite number in [0, 1e+06], got -"),
])
def test_bad_attack_input(tmp_path, capsys, argv, msg):
    assert main(["train", *TINY, "--results", str(tmp_path)]) == 0
    key = Store(tmp_path).entries("train")[0].key
    before = sorted(p.name for p in tmp_path.rglob("*"))
    run = ["--run", key] if argv[0] == "attack" else ["--from", key]
    assert main([argv[0], *run, *argv[1:], "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_verify_lists_and_removes_corrupt_entries(tmp_path, capsys, monkeypatch):
    import hessbatch.store as store_mod

    monkeypatch.setattr(store_mod, "HASHED_ON_READ", 1000)  # the tiny run's weights count as large
    r = ["--results", str(tmp_path)]
    assert main(["train", *TINY, *r]) == 0
    assert main(["verify", *r]) == 0 and "1 entries checked, 0 corrupt" in capsys.readouterr().out
    weights = next(tmp_path.rglob("weights.pt"))
    blob = bytearray(weights.read_bytes())
    blob[-50] ^= 1
    weights.write_bytes(bytes(blob))
    assert main(["ls", *r]) == 0 and "MLP" in capsys.readouterr().out  # listing checks sizes only
    assert main(["verify", *r]) == 1 and "1 entries checked, 1 corrupt" in capsys.readouterr().out
    assert main(["verify", "--remove", *r]) == 0 and not weights.exists()
    assert main(["train", *TINY, *r]) == 0 and "found in the store" not in capsys.readouterr().out


def test_the_toolkit_command_line_has_no_paper_commands():
    import hessbatch.cli as toolkit

    with pytest.raises(SystemExit):
        toolkit.build_parser().parse_args(["book"])
    assert build_parser_paper().parse_args(["book"]).command == "book"


def build_parser_paper():
    from hessbatch.paper.cli import build_parser

    return build_parser()


def test_a_chapter_rejects_a_parameter_it_does_not_have():
    from hessbatch.errors import HessbatchError
    from hessbatch.paper.registry import chapter, run_chapter

    p = chapter("01-batch-size--C2").params({"model": "C2", "k": 3, "profile": "x", "results": None})
    assert (p.model, p.k, p.tol) == ("C2", 3, 1e-4)
    with pytest.raises(HessbatchError, match="chapter 01-batch-size has no parameter.*colour; it takes: model"):
        run_chapter("01-batch-size", {"colour": "red"})
    with pytest.raises(HessbatchError, match="no chapter '99-nope'"):
        chapter("99-nope")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["book", "--help"], ["compute", "--help"],
                                  ["train", "--batch-size", "x"], ["spectrum"], ["fly"]])
def test_help_and_argument_errors_answer_without_importing_torch(argv):
    """`hessbatch --help`, COMMAND --help and argument errors are instant: nothing imports torch."""
    code = ("import sys\nfrom hessbatch.paper.cli import main\nrc = main(%r)\n"
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'imported'\nsys.exit(rc)" % argv)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 2) and "imported" not in res.stderr, res.stderr


@pytest.mark.parametrize("argv", [["train", "--model", "NOPE"], ["train", "--dataset", "svhn"],
                                  ["train", "--model", "torchvision:Bad"], ["train", "--batch-size", "0"]])
def test_a_bad_training_name_or_value_is_answered_before_torch_is_imported(argv):
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "hessbatch.paper.cli", *argv],
                         capture_output=True, text=True, timeout=60)
    lines = res.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("hessbatch: error:")]
    imported = {ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")}
    assert res.returncode == 2 and len(errors) == 1 and "torch" not in imported, (errors, res.returncode)


def test_lr_plateau_flag_reaches_the_runs_configuration(tmp_path):
    assert main(["train", "--model", "MLP", "--subset", "5", "--test-subset", "2", "--batch-size", "10",
                 "--max-epochs", "1", "--lr-plateau", "3:7", "--results", str(tmp_path), "--no-progress"]) == 0
    (entry,) = Store(tmp_path).entries("train")
    assert entry.config["config"]["lr_plateau"] == {"patience": 3, "after": 7, "threshold": 1e-4}
