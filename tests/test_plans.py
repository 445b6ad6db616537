"""GPU plans: each plan's CPU dry run (the same pages, code path and export as on the GPU, at toy
size, on generated MNIST and CIFAR-10 JPEG files), and the merge of what a plan hands back."""

import json
import tarfile

import pytest
import yaml
from conftest import make_cifar_jpeg_root, make_mnist_root
from hessbatch.errors import HessbatchError
from hessbatch.paper import plans
from hessbatch.paper.compute import stored_split
from hessbatch.paper.dryrun import toy, toy_page
from hessbatch.paper.profiles import load_profile, profile_results, selected
from hessbatch.store import Store

PAPER = load_profile("paper")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_mnist_root(root, n_train=200, n_test=100)
    make_cifar_jpeg_root(root, n=(10, 5))
    return root


def test_the_paper_profile_has_the_plans_of_the_issue_in_priority_order():
    names = [p.name for p in plans.plans(PAPER)]
    assert names[:6] == ["c1-table1", "m1-table7", "c2-table1", "c3-table4", "table8", "c1-fig4"]
    assert all(p.budget_s <= 540 for p in plans.plans(PAPER)[:6])
    pages = {p.name: selected(PAPER, list(p.pages)) for p in plans.plans(PAPER)}
    c1 = pages["c1-table1"][0][2]
    assert c1["batch_sizes"] == [16, 32, 64, 128, 256, 512, 1024, 2048] and c1["hessian_samples"] is None
    assert c1["train_options"]["target_loss"] == 0.001 and not c1["train_options"].get("lr_milestones")
    m1 = pages["m1-table7"][0][2]
    assert m1["batch_sizes"] == [64, 128, 256, 512, 1024, 2048] and m1["curvature_samples"] is None
    assert pages["c2-table1"][0][2]["batch_sizes"] == [256, 512, 1024, 2048]
    # whole-set input curvature by the exact c x c method; the committed CPU page keeps the paper's power iteration
    assert {pages[n][0][2]["curvature_method"] for n in ("c1-table1", "m1-table7", "c2-table1")} == {"exact"}
    assert selected(PAPER, ["01-batch-size--M1-cpu"])[0][2].get("curvature_method", "power") == "power"


def test_toy_shrinks_what_costs_and_keeps_whole_sets_whole():
    p = toy({"batch_sizes": [16, 32, 64, 128, 256], "hessian_samples": None, "curvature_samples": 5000,
                   "k": 20, "train_options": {"lr": 0.02, "max_epochs": 200, "target_loss": 0.001},
                   "t8_train": {"lr": 0.02, "max_epochs": 20, "micro_batch": 5000}, "eps": [0.02, 0.01],
                   "subsample_sizes": [1, 128], "plane_batch_sizes": [16]})
    assert p["batch_sizes"] == [8, 32] and p["hessian_samples"] is None and p["curvature_samples"] == 16
    assert p["subsample_sizes"] == [1, 8] and p["plane_batch_sizes"] == [8]
    assert p["k"] == 2 and p["eps"] == [0.02, 0.01]
    assert p["train_options"] == {"lr": 0.02, "max_epochs": 2, "target_loss": 0.001, "subset": 4, "test_subset": 2}
    assert p["t8_train"]["micro_batch"] == 8
    # a tolerance the page leaves at its chapter's default is loosened too (chapter 9 declares tol = 1e-3)
    page = toy_page(selected(PAPER, ["09-lr-scaling"])[0])
    assert "tol" not in selected(PAPER, ["09-lr-scaling"])[0][2] and page[2]["tol"] == 0.2


@pytest.mark.parametrize("name", [p.name for p in plans.plans(PAPER)])
def test_each_plan_runs_dry_and_hands_back_what_its_pages_render_from(name, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HESSBATCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    record = plans.run("paper", name, str(out), "cpu", str(data_root), results=str(tmp_path / "store"),
                       dry_run=True)
    assert [p["state"] for p in record["pages"]] == ["done"] * len(plans.find(PAPER, name).pages), record
    saved = json.loads((out / "plan.json").read_text())
    assert saved["plan"] == name and saved["dry_run"] and all(p["measure_seconds"] >= 0 for p in saved["pages"])
    assert saved["graph_check"] == {"graphs": False, "why": "cpu device"}
    # what came back, without weights, is all a page needs: run read-only, nothing is missing
    with tarfile.open(out / "tidy.tgz") as tar:
        assert not [m.name for m in tar.getmembers() if m.name.endswith(".pt")]
        tar.extractall(tmp_path / "back", filter="data")
    pages = [toy_page(page) for page in selected(PAPER, list(plans.find(PAPER, name).pages))]
    have, absent = stored_split(pages, str(tmp_path / "back"))
    assert not absent and len(have) == len(pages)
    with pytest.raises(HessbatchError, match="dry run"):
        plans.unpack(str(out), "paper", str(tmp_path / "merged"))


def test_a_plan_out_of_time_records_the_pages_it_did_not_start(data_root, tmp_path, monkeypatch):
    """Also, with CUDA graphs 'enabled' on the CPU: the plan's check first trains its first run's
    model (C1) a few steps by the graph's body and eagerly and records how far apart they end; each
    run's capture then fails (no CUDA device) and the run trains eagerly, saying so in its result."""
    from hessbatch import captured

    monkeypatch.setenv("HESSBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(captured, "enabled", lambda dev: True)
    clock = iter([0.0, 0.0, 0.0, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4])
    monkeypatch.setattr(plans.time, "perf_counter", lambda: next(clock, 1e4))
    with pytest.warns(RuntimeWarning, match="capture failed"):
        record = plans.run("paper", "c1-table1", str(tmp_path / "out"), "cpu", str(data_root),
                           results=str(tmp_path / "store"), dry_run=True, budget_s=60)
    assert [p["state"] for p in record["pages"]] == ["done", "not started: out of time"]
    assert tarfile.is_tarfile(tmp_path / "out" / "tidy.tgz")
    check = record["graph_check"]
    assert check["graphs"] and check["captured"] is False and check["steps"] == 5, check
    assert check["relative_param_diff"] < 1e-6 and check["eager_loss"] == pytest.approx(check["captured_loss"])
    runs = Store(tmp_path / "store").entries("train")
    assert runs and all(e.json()["step"].startswith("eager (capture failed: CaptureUnavailable") for e in runs)


def test_a_batch_size_whose_results_are_committed_is_not_computed_again(tmp_path):
    """C1's B = 64 is measured in paper-results/: its calls train and measure nothing (no data is
    read: the folders are empty), hands back an empty tidy.tgz and succeeds; merging it adds no entry
    and no timing. A batch size not trained there is not taken for committed."""
    data = tmp_path / "data"
    for split in ("train", "test"):
        (data / "cifar10-jpeg" / split).mkdir(parents=True)
    record = plans.run("paper", "c1-table1-cpu", str(tmp_path / "out"), "cpu", str(data),
                       results=str(tmp_path / "store"), overrides={"batch_sizes": [64]})
    assert record["pages"] == [] and len(record["committed"]) == 3, record
    plans.train_only("paper", "c1-table1-cpu", "cpu", str(data), str(tmp_path / "store"), {"batch_sizes": [64]})
    assert not Store(tmp_path / "store").entries()
    with tarfile.open(tmp_path / "out" / "tidy.tgz") as tar:
        assert all(m.isdir() for m in tar.getmembers())
    counts = plans.unpack(str(tmp_path / "out"), "paper", str(tmp_path / "dest"))
    assert counts == {"added": 0, "kept": 0, "replaced": 0, "removed": 0}
    assert not (tmp_path / "dest" / "_timings.yml").exists()
    plan = plans.find(PAPER, "c1-table1-cpu")
    page = selected(PAPER, list(plan.pages), {"batch_sizes": [48]}, optional=True)[0]
    assert stored_split([page], profile_results(PAPER, None)) == ([], [page])


def _entry(store, kind, config, text):
    with store.writer(kind, config) as tmp:
        (tmp / "result.json").write_text(json.dumps({"v": text}))
    return store.key(kind, config)


def test_unpack_keeps_equal_entries_replaces_changed_ones_and_drops_their_dependents(tmp_path):
    plan_store, dest = Store(tmp_path / "plan"), Store(tmp_path / "dest")
    run = _entry(plan_store, "train", {"model": "M1", "batch_size": 64}, "gpu")
    same = _entry(plan_store, "train", {"model": "M1", "batch_size": 128}, "same")
    _entry(plan_store, "spectrum", {"run": run, "split": "train"}, "gpu spectrum")
    assert _entry(dest, "train", {"model": "M1", "batch_size": 64}, "cpu") == run
    _entry(dest, "train", {"model": "M1", "batch_size": 128}, "same")
    _entry(dest, "attack", {"run": run, "eps": 0.1}, "measured on the cpu run")
    _entry(dest, "attack", {"run": same, "eps": 0.1}, "kept")
    out = tmp_path / "out"
    out.mkdir()
    plans.export(str(plan_store.root), out / "tidy.tgz")
    (out / "plan.json").write_text(json.dumps({
        "plan": "m1-table7", "dry_run": False, "device": "cuda", "hardware": "H200", "workers": 6,
        "started": "2026-12-02 10:00", "seconds": 500.0,
        "pages": [{"name": "01-batch-size--M1", "page": "01-batch-size--M1", "state": "done", "seconds": 400.0,
                   "train_seconds": 300.0, "measure_seconds": 100.0, "error": None},
                  {"name": "02-landscapes--M1", "page": "02-landscapes--M1", "state": "not started: out of time"}]}))
    counts = plans.unpack(str(out), "paper", str(dest.root))
    assert counts == {"added": 1, "kept": 1, "replaced": 1, "removed": 1}
    assert dest.get("train", key=run).json()["v"] == "gpu"
    assert [e.json()["v"] for e in dest.entries("attack")] == ["kept"]
    timings = yaml.safe_load((dest.root / "_timings.yml").read_text())
    assert timings["01-batch-size--M1"] == {"seconds": 400.0, "device": "cuda", "hardware": "H200"}
    assert timings["_calls"][-1]["plan"] == "m1-table7"
    assert timings["_calls"][-1]["failed"] == ["02-landscapes--M1: not started: out of time"]


def test_the_gpu_script_runs_a_plan_dry_from_packed_data(tmp_path):
    """scripts/gpu/plan.sh as the GPU machine runs it, from data packed as prepare.sh packs it
    (gzipped MNIST, CIFAR-10 JPEG archives), at toy size on the CPU, in two worker processes: it
    hands back exactly the entries that one process computes."""
    import gzip
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    packed = tmp_path / "gpudata"
    make_mnist_root(tmp_path / "m", n_train=200, n_test=100)
    (packed / "mnistgz").mkdir(parents=True)
    for f in (tmp_path / "m" / "MNIST" / "raw").iterdir():
        with open(f, "rb") as src, gzip.open(packed / "mnistgz" / f"{f.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PLAN": "m1-table7", "DEVICE": "cpu", "WORKERS": "2", "DRY": "1", "OUT": str(out),
           "SET": "batch_sizes=[64, 128]; seed=0",  # a plan split by its parameters, as a long one is
           "GPUDATA": str(packed), "HESSBATCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "scripts/gpu/plan.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((out / "plan.json").read_text())
    assert [p["state"] for p in record["pages"]] == ["done"] * 3
    assert {p.name for p in out.iterdir()} == {"plan.json", "tidy.tgz", "plan.log"}
    assert "plan m1-table7: 3/3 page(s)" in (out / "plan.log").read_text()
    assert all("batch_sizes-64_128" in p["name"] and "seed-0" in p["name"] for p in record["pages"]), record["pages"]
    assert not any("batch_sizes" in p["page"] for p in record["pages"])  # each part names its whole page
    one = plans.run("paper", "m1-table7", str(tmp_path / "one"), "cpu", str(packed), results=str(tmp_path / "store"),
                    dry_run=True, overrides={"batch_sizes": [64, 128], "seed": 0})
    assert [p["state"] for p in one["pages"]] == ["done"] * 3

    def entries(tgz):
        with tarfile.open(tgz) as tar:
            return sorted(m.name.split("/")[1:3] for m in tar.getmembers() if m.name.endswith("/result.json"))

    assert entries(out / "tidy.tgz") == entries(tmp_path / "one" / "tidy.tgz")
    assert len(entries(out / "tidy.tgz")) > 10
