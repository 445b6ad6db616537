"""scripts/cpu/protocol.sh and queue.sh, in a scratch repository with a stand-in for `hessbatch`
that logs its calls: which calls of `hessbatch plan` a plan's lines make, what is committed, and how
the queue's workers share, finish, skip and retry lines."""

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE = r"""#!/usr/bin/env bash
# A stand-in for `hessbatch`: logs its arguments; `plan ... --out OUT` makes OUT, `plan --unpack OUT`
# adds a file to paper-results/; a batch size of 999 fails.
echo "$*" >> "$HB_LOG"
echo "$OMP_NUM_THREADS" >> "$HB_LOG.threads"
echo "${HESSBATCH_EVENTS:-}" >> "$HB_LOG.events"
case "$*" in *"batch_sizes=[999]"*) exit 1 ;; esac
[ "${SLOW:-}" ] && sleep "$SLOW"
if [ "$1 $2" = "plan --unpack" ]; then mkdir -p paper-results; basename "$3" > "paper-results/$(basename "$3")"; fi
args=("$@")
for i in "${!args[@]}"; do [ "${args[$i]}" = --out ] && mkdir -p "${args[$((i + 1))]}"; done
exit 0
"""


@pytest.fixture
def repo(tmp_path):
    """A git repository holding the scripts, a stand-in `hessbatch`, and DATA with CIFAR-10's archives."""
    repo = tmp_path / "repo"
    (repo / "scripts" / "cpu").mkdir(parents=True)
    for name in ("protocol.sh", "queue.sh", "priority.sh"):
        shutil.copy2(ROOT / "scripts" / "cpu" / name, repo / "scripts" / "cpu" / name)
    (repo / "fake-hessbatch").write_text(FAKE)
    (repo / ".gitignore").write_text("/data/\n/results/\n/hb.log\n")
    data = tmp_path / "data" / "cifar10-jpeg"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.tar.gz").write_bytes(b"archive")
        (data / f"{split}.tar.gz").chmod(0o444)  # as on a read-only share
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "config", "user.email", "t@example.org"], check=True)
    subprocess.run([*git, "config", "user.name", "t"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    return repo


def _env(repo, **extra):
    return {**os.environ, "DATA": str(repo.parent / "data"), "HESSBATCH": f"bash {repo / 'fake-hessbatch'}",
            "HB_LOG": str(repo / "hb.log"), "STORE": str(repo.parent / "store"), **extra}


def _run(repo, *args, **env):
    return subprocess.run(["bash", *args], cwd=repo, env=_env(repo, **env), capture_output=True, text=True, timeout=120)


def _calls(repo):
    log = repo / "hb.log"
    return log.read_text().splitlines() if log.exists() else []


def _commits(repo):
    out = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[:-1][::-1]


def test_a_sweep_plan_computes_and_commits_one_batch_size_per_call(repo):
    proc = _run(repo, "scripts/cpu/protocol.sh", "c1-table1-cpu", "32", "64")
    assert proc.returncode == 0, proc.stderr
    calls = _calls(repo)
    computed = [c for c in calls if c.startswith("plan c1-table1-cpu --set")]
    assert [c.split()[3] for c in computed] == ["batch_sizes=[32]", "batch_sizes=[64]"]
    assert all("--out" in c and "--data-root data" in c for c in computed)
    assert sum(c.startswith("plan --unpack") for c in calls) == 2
    assert calls[-1].startswith("plan c1-table1-cpu --record-progress")
    assert _commits(repo) == ["paper-results: c1-table1-cpu at the protocol on 2 CPU cores, B = 32",
                              "paper-results: c1-table1-cpu at the protocol on 2 CPU cores, B = 64"]
    assert (repo / "data" / "cifar10-jpeg" / "train.tar.gz").is_file()


def test_another_cpu_plan_is_one_call(repo):
    proc = _run(repo, "scripts/cpu/protocol.sh", "c3-table4-cpu")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[:2] for c in _calls(repo) if "--out" in c] == [["plan", "c3-table4-cpu"]]
    assert "--set" not in " ".join(_calls(repo))
    assert _commits(repo) == ["paper-results: c3-table4-cpu on 2 CPU cores"]
    proc = _run(repo, "scripts/cpu/protocol.sh", "table8-cpu", TRAIN_ONLY="1")
    assert proc.returncode == 0 and "plan table8-cpu --train-only" in _calls(repo)[-2]
    assert len(_commits(repo)) == 1


def test_measure_threads_trains_first_then_measures_on_more_threads(repo):
    proc = _run(repo, "scripts/cpu/protocol.sh", "c1-table1-cpu", "32", MEASURE_THREADS="2")
    assert proc.returncode == 0, proc.stderr
    calls = [c.split()[:3] for c in _calls(repo)[:2]]
    assert calls == [["plan", "c1-table1-cpu", "--train-only"], ["plan", "c1-table1-cpu", "--set"]]
    assert (repo / "hb.log.threads").read_text().split()[:2] == ["1", "2"]


def test_two_calls_started_together_both_copy_the_data(repo):
    """Each copies to a name of its own and renames it, so neither meets the other's half-made file
    (cp's check-then-create can: "cannot create regular file ...: File exists")."""
    procs = [subprocess.Popen(["bash", "scripts/cpu/protocol.sh", "c1-table1-cpu", b], cwd=repo, env=_env(repo),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for b in ("32", "64")]
    assert [(p.wait(timeout=120), p.stderr.read()) for p in procs] == [(0, ""), (0, "")]
    assert sorted(p.name for p in (repo / "data" / "cifar10-jpeg").iterdir()) == ["test.tar.gz", "train.tar.gz"]
    assert (repo / "data" / "cifar10-jpeg" / "train.tar.gz").read_bytes() == b"archive"


@pytest.mark.parametrize("args, message, env", [
    (["c3-table4-cpu", "128"], "c3-table4-cpu is not a batch-size sweep", {}),
    (["c1-table1-cpu", "12x"], "a batch size is a positive integer, got '12x'", {}),
    (["c9-cpu"], "unknown plan c9-cpu", {}),
    (["c1-table1-cpu", "32"], "NICE must be an integer, got 'low'", {"NICE": "low"}),
    (["c1-table1-cpu", "32"], "MEASURE_THREADS must be a positive integer, got '0'", {"MEASURE_THREADS": "0"}),
])
def test_bad_arguments_are_one_line_and_exit_2_before_anything(repo, args, message, env):
    proc = _run(repo, "scripts/cpu/protocol.sh", *args, **env)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _calls(repo) == [] and not (repo / "data").exists()


def test_the_queue_shares_lines_between_workers_and_resumes(repo):
    (repo / "list.txt").write_text("# C1\nc1-table1-cpu 32   # small\n\nc1-table1-cpu 999\nc1-table1-cpu 64\n"
                                   "c3-table4-cpu\n")
    proc = _run(repo, "scripts/cpu/queue.sh", "list.txt", SLOW="0.3")
    assert proc.returncode == 0, proc.stderr
    state = repo / "results" / "queue"
    assert sorted(p.name for p in state.glob("*.done")) == ["c1-table1-cpu-32.done", "c1-table1-cpu-64.done",
                                                             "c3-table4-cpu.done"]
    assert "c1-table1-cpu 999 failed (exit 1)" in proc.stdout
    assert {line.split()[3] for line in proc.stdout.splitlines() if line.endswith(" done")} == {"1:", "2:"}
    assert len(_commits(repo)) == 3
    # each line's progress bars go beside its log, whichever worker computes it
    assert set((repo / "hb.log.events").read_text().split()) == {
        f"results/queue/{i}.events.jsonl" for i in ("c1-table1-cpu-32", "c1-table1-cpu-999", "c1-table1-cpu-64",
                                                    "c3-table4-cpu")}
    status = _run(repo, "scripts/cpu/queue.sh", "--status", "list.txt").stdout.splitlines()
    assert [line.split("  ")[0] for line in status] == ["c1-table1-cpu 32", "c1-table1-cpu 999", "c1-table1-cpu 64",
                                                        "c3-table4-cpu"]
    assert [line.split()[-1] for line in status] == ["done", "results/queue/c1-table1-cpu-999.log)", "done", "done"]
    assert "stopped (failed or cut off" in status[1]
    # started again: only the failed line runs, and fails again
    before = len(_calls(repo))
    proc = _run(repo, "scripts/cpu/queue.sh", "list.txt")
    assert proc.returncode == 0
    assert [c.split()[:3] for c in _calls(repo)[before:] if "--out" in c] == [["plan", "c1-table1-cpu", "--set"]]
    assert "batch_sizes=[999]" in _calls(repo)[before]


def test_the_queue_skips_a_line_another_process_computes(repo):
    (repo / "list.txt").write_text("c1-table1-cpu 32\nc1-table1-cpu 64\n")
    state = repo / "results" / "queue"
    state.mkdir(parents=True)
    with open(state / "c1-table1-cpu-32.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status = _run(repo, "scripts/cpu/queue.sh", "--status", "list.txt").stdout.split()
        assert status == ["c1-table1-cpu", "32", "running", "c1-table1-cpu", "64", "to", "do"]
        proc = _run(repo, "scripts/cpu/queue.sh", "list.txt", WORKERS="1")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in state.glob("*.done")] == ["c1-table1-cpu-64.done"]
    assert "batch_sizes=[32]" not in " ".join(_calls(repo))


def test_a_bad_list_is_one_line_and_exit_2_before_anything(repo):
    (repo / "list.txt").write_text("c1-table1-cpu 32\nc1-table1-cpu 64; rm -rf ~\n")
    proc = _run(repo, "scripts/cpu/queue.sh", "list.txt")
    assert proc.returncode == 2 and "list.txt, line 2: only a plan's name and batch sizes" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _calls(repo) == [] and not (repo / "results").exists()
    proc = _run(repo, "scripts/cpu/queue.sh", "list.txt", WORKERS="two")
    assert proc.returncode == 2 and "WORKERS must be a positive integer" in proc.stderr
    (repo / "list.txt").write_text("c1-table1-cpu 32\n")
    env = {k: v for k, v in _env(repo).items() if k != "DATA"}
    proc = subprocess.run(["bash", "scripts/cpu/queue.sh", "list.txt"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "set DATA" in proc.stderr and not (repo / "results").exists()
