"""A page of a long CPU plan while its runs are still training: the batch sizes in the committed
results are shown, and the others are named with where they stand (``_progress.yml``)."""

from __future__ import annotations

import torch
import yaml

from hessbatch.config import run_key
from hessbatch.paper import plans, registry
from hessbatch.paper.book import progress_note
from hessbatch.paper.compute import compute, stored_split
from hessbatch.paper.profiles import load_profile, selected
from hessbatch.store import Store, atomic_torch_save

SMOKE = load_profile("smoke")


def _profile(tmp_path):
    prof = {"profile": "long", "common": SMOKE["common"],
            "chapters": {"01-batch-size": {**SMOKE["chapters"]["01-batch-size"], "sweep": None}},
            "plans": {"long": {"title": "three batch sizes on the CPU", "device": "cpu", "budget_s": 3600,
                               "pages": ["01-batch-size"]}}}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(prof))
    return str(path)


def test_a_page_shows_the_batch_sizes_in_and_names_the_one_still_training(tmp_path):
    profile = _profile(tmp_path)
    committed, work = tmp_path / "committed", tmp_path / "work"
    compute(profile, str(committed), overrides={"batch_sizes": [10, 50]}, progress=False)
    (page, chapter, params, _), = selected(load_profile(profile), ["01-batch-size"])
    assert params["batch_sizes"] == [10, 50, 200]
    (shown,), absent = stored_split([(page, chapter, params, None)], str(committed), partial=True)
    assert absent == [] and shown[2]["batch_sizes"] == [10, 50]
    assert stored_split([(page, chapter, params, None)], str(committed))[1]  # whole pages only: absent

    cfg = registry.chapter(chapter).train_configs(params)[2]
    key = run_key(cfg)
    atomic_torch_save({"model": {}, "optimizer": {}, "epoch": 3, "elapsed": 5400.0, "resumed": [],
                       "history": [{"epoch": 3, "running_loss": 0.25, "train_loss": 0.2, "test_acc": 0.5}]},
                      Store(work).work_dir("train", key) / "checkpoint.pt")
    with Store(work).lock("train", key):   # a process trains it now
        assert plans.record_progress(profile, "long", str(work), str(committed))["pages"][page][2]["state"] == "training"
    record = plans.record_progress(profile, "long", str(work), str(committed))
    rows = record["pages"][page]
    assert [r["state"] for r in rows] == ["measured", "measured", "paused"]
    assert rows[2] | {"key": key} == {"batch_size": 200, "run": "B = 200", "key": key, "state": "paused", "epoch": 3,
                                      "max_epochs": 15, "running_loss": 0.25, "train_loss": 0.2, "test_acc": 0.5,
                                      "hours": 1.5}
    note = progress_note(plans.read_progress(committed), page, [10, 50], [200])
    assert "This page shows B = 10, 50 only" in note
    assert f"| 200 | `{key}` | paused: epoch 3 of at most 15, running loss 0.25, training loss 0.2" in note
    assert "1.5 h so far" in note and f"as recorded by the plan `long` on {record['as_of']}" in note
    assert progress_note({}, page, [10, 50], [200]).count("| 200 | — | not computed |") == 1
    assert progress_note({}, page, [10, 50, 200], []) == ""
    assert torch.load(Store(work).work_dir("train", key) / "checkpoint.pt", weights_only=True)["epoch"] == 3

    empty = tmp_path / "empty"   # runs trained where they train, none committed (measured) yet
    empty.mkdir()
    fresh = plans.record_progress(profile, "long", str(committed), str(empty))["pages"][page]
    done = Store(committed).get("train", key=fresh[0]["key"]).json()
    assert [r["state"] for r in fresh[:2]] == ["trained, not yet measured"] * 2
    assert (fresh[0]["epochs"], fresh[0]["train_loss"]) == (done["epochs"], round(done["train_loss"], 6))
    assert (f"| 10 | `{fresh[0]['key']}` | trained, not yet measured: {done['epochs']} epochs, training loss "
            in progress_note(plans.read_progress(empty), page, [], [10]))


def test_a_page_that_is_not_a_sweep_names_each_run_by_what_sets_it_apart(tmp_path):
    """Table 4's runs share a batch size: the placeholder lists M_ORI and each robust model by its attack."""
    prof = {"profile": "robust", "common": SMOKE["common"],
            "chapters": {"05-adversarial-training": SMOKE["chapters"]["05-adversarial-training"]},
            "plans": {"robust": {"title": "Table 4 on the CPU", "device": "cpu", "budget_s": 3600,
                                 "pages": ["05-adversarial-training"]}}}
    path = tmp_path / "robust.yaml"
    path.write_text(yaml.safe_dump(prof))
    committed = tmp_path / "committed"
    committed.mkdir()
    (page, chapter, params, _), = selected(load_profile(str(path)), ["05-adversarial-training"])
    configs = registry.chapter(chapter).train_configs(params)
    rows = plans.record_progress(str(path), "robust", str(tmp_path / "work"), str(committed))["pages"][page]
    assert len({r["batch_size"] for r in rows}) == 1 < len(rows) == len(configs)
    origin = configs[0]
    assert rows[0]["run"] == f"B = {origin['batch_size']}"
    eps = configs[1]["adversarial"]["eps"]
    assert rows[1]["run"] == f"B = {origin['batch_size']}, robust (fgsm, ε = {eps:g}), from run {run_key(origin)[:8]}"
    note = progress_note(plans.read_progress(committed), page, [], None)
    assert "| run | key | state |" in note and note.count("| not started |") == len(rows)
    assert f"| {rows[1]['run']} | `{rows[1]['key']}` | not started |" in note
    assert progress_note({}, page, [], None) == ""


def test_a_run_that_diverged_or_is_not_measured_is_named_so(tmp_path):
    from hessbatch.train import train

    profile, work, empty = _profile(tmp_path), tmp_path / "work", tmp_path / "empty"
    empty.mkdir()
    over = {"batch_sizes": [10], "train_options": {"subset": 20, "test_subset": 10, "lr": 1e6, "momentum": 0.9,
                                                   "max_epochs": 15, "target_loss": 0.001}}
    (page, chapter, params, _), = selected(load_profile(profile), ["01-batch-size"], over)
    run = train(registry.chapter(chapter).train_configs(params)[0], Store(work), progress=False)
    assert run.status == "diverged"
    row, = plans.record_progress(profile, "long", str(work), str(empty), overrides=over)["pages"][page]
    assert row["state"] == "diverged, not yet committed" and row["epochs"] == run.result["epochs"]
    assert f"| 10 | `{run.key}` | diverged, not yet committed: {run.result['epochs']} epochs, training loss nan" \
        in progress_note(plans.read_progress(empty), page, [], [10])
    row, = plans.record_progress(profile, "long", str(empty), str(work), overrides=over)["pages"][page]
    assert row["state"] == "diverged"   # committed
    fine = {**over, "train_options": {**over["train_options"], "lr": 0.05}}   # committed, its page not computed
    (page, chapter, params, _), = selected(load_profile(profile), ["01-batch-size"], fine)
    run = train(registry.chapter(chapter).train_configs(params)[0], Store(work), progress=False)
    row, = plans.record_progress(profile, "long", str(empty), str(work), overrides=fine)["pages"][page]
    assert row["state"] == "trained, not yet measured" and row["epochs"] == run.result["epochs"]


def test_plan_adopt_from_carries_a_checkpoint_to_the_plans_schedule_now(tmp_path, capsys):
    """``plan --adopt-from``: the checkpoint of a run started at a constant rate moves to the run of
    the plan's options now (a plateau rule from epoch 5), and one whose rate differs is refused."""
    from hessbatch import checkpoints
    from hessbatch.paper.cli import main

    profile, work = _profile(tmp_path), tmp_path / "work"
    constant = {"subset": 20, "test_subset": 10, "lr": 0.05, "momentum": 0.9, "max_epochs": 15, "target_loss": 0.001}
    plateau = {**constant, "lr_plateau": {"patience": 1, "after": 5}}
    (_, chapter, params, _), = selected(load_profile(profile), ["01-batch-size"], {"train_options": constant})
    cfg = registry.chapter(chapter).train_configs(params)[1]
    old, new = run_key(cfg), run_key({**cfg, **plateau})
    history = [{"epoch": e, "lr": 0.05, "train_loss": 1.0} for e in range(1, 6)]   # flat: the rule acts when allowed
    checkpoints.save({"model": {}, "optimizer": {}, "epoch": 5, "key": old, "elapsed": 9.0, "resumed": [],
                      "history": history}, Store(work).work_dir("train", old) / "checkpoint.pt")

    def flow(d: dict) -> str:
        return yaml.safe_dump(d, default_flow_style=True).strip()

    def plan(options: dict) -> int:
        return main(["plan", "long", "--profile", profile, "--results", str(work), "--set",
                     f"batch_sizes=[{cfg['batch_size']}]", "--set", f"train_options={flow(options)}",
                     "--adopt-from", f"train_options={flow(constant)}"])

    assert plan({**plateau, "lr_plateau": {"patience": 1, "after": 2}}) == 2
    assert f"the schedules differ from epoch 4, which run {old} has trained" in capsys.readouterr().err
    assert plan(plateau) == 0
    assert capsys.readouterr().out.strip() == f"B={cfg['batch_size']:<5} {new}: epochs 1-5 carried from {old}"
    assert checkpoints.load(Store(work).work_dir("train", new) / "checkpoint.pt")["key"] == new
    assert not Store(work).work_dir("train", old).exists()
