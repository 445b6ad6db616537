"""Pages whose Hessians are on subsamples (the CPU-scale CIFAR-10 pages): the landscapes' directions
come from the subsample's Hessian, the batch-size page checks the subsample against the whole
training set for chosen batch sizes, and a page cut to some batch sizes keeps its other lists of
batch sizes consistent."""

from __future__ import annotations

import pytest

from hessbatch.errors import HessbatchError
from hessbatch.paper import registry
from hessbatch.paper.profiles import only_batch_sizes
from hessbatch.paper.presentation import paper_style, provenance, whole_set_note
from hessbatch.paper.profiles import load_profile, selected
from hessbatch.store import Store

SMOKE = load_profile("smoke")


def _params(chapter, **over):
    (_, _, params, _), = [r for r in selected(SMOKE, [chapter]) if r[0] in (chapter, f"{chapter}--attack-fgsm")]
    return {**params, "batch_sizes": [10, 50], **over}


def test_the_batch_size_page_compares_the_subsample_with_the_whole_set(tmp_path):
    store = Store(tmp_path)
    res = registry.run_chapter("01-batch-size", _params("01-batch-size", hessian_samples=12,
                                                        whole_set_batch_sizes=[50]), store)
    t = res["table"].set_index("batch_size")
    assert t["lambda_theta_train_whole"].isna().tolist() == [True, False]
    whole = [e for e in store.entries("spectrum") if e.config["config"]["k"] == 1]
    n_train = store.get("train", key=t.loc[50, "run"]).json()["n_train"]
    assert len(whole) == 1 and whole[0].json()["n_samples"] == n_train > 12
    assert whole[0].json()["lambda_max"] == pytest.approx(t.loc[50, "lambda_theta_train_whole"])
    assert t.loc[50, "lambda_theta_train"] != t.loc[50, "lambda_theta_train_whole"]
    note = whole_set_note(res["table"], 12)
    assert note.startswith("\n\n**λθ_max of the training set, whole against subsample:** B = 50: ")
    assert "on 12 samples (" in note and "B = 10" not in note
    assert "*Hessians on* seeded subsets of 12 samples" in provenance({"hessian_samples": 12, "model": "MLP"})
    shown = paper_style(res["table"]).set_index("B")["train loss"]      # runs end at different losses
    assert shown[50] == f"{store.get('train', key=t.loc[50, 'run']).json()['train_loss']:.2g}"
    with pytest.raises(HessbatchError, match="whole_set_batch_sizes must be among batch_sizes; not: 7"):
        registry.run_chapter("01-batch-size", _params("01-batch-size", whole_set_batch_sizes=[7]), store)


def test_the_landscapes_take_their_directions_from_the_subsample(tmp_path):
    store = Store(tmp_path)
    res = registry.run_chapter("02-landscapes", _params("02-landscapes", hessian_samples=12, plane_batch_sizes=[50]),
                               store)
    assert set(res["curves"]["batch_size"]) == {10, 50} and set(res["surfaces"]["batch_size"]) == {50}
    directions = {e.json()["n_samples"] for e in store.entries("spectrum")}
    assert directions == {12}
    cut = registry.run_chapter("02-landscapes", _params("02-landscapes", hessian_samples=12, plane_batch_sizes=[]),
                               store)                 # a page cut to batch sizes without a plane: no surface
    assert cut["plane_batch_sizes"] == [] and cut["surfaces"].empty and len(store.entries("landscape-2d")) == 1


def test_pages_whose_runs_diverged_measure_nothing_and_say_so(tmp_path):
    """A batch size that diverged (C1 at B = 16) has a row without measurements, no curve and no plane;
    a page of it alone (one batch size per call of a CPU plan) still computes."""
    store = Store(tmp_path)
    p = _params("02-landscapes", hessian_samples=12, plane_batch_sizes=[10, 50])
    gone = {**p, "batch_sizes": [10], "plane_batch_sizes": [10],
            "train_options": {**(p.get("train_options") or {}), "lr": 1e6, "momentum": 0.9}}
    alone = registry.run_chapter("02-landscapes", gone, store)
    assert alone["curves"].empty and alone["surfaces"].empty and alone["plane_batch_sizes"] == []
    assert alone["claims"]["holds"].tolist() == ["—", "—"] and alone["claims"]["value"].isna().all()
    t = registry.run_chapter("01-batch-size", {**_params("01-batch-size"), "batch_sizes": [10],
                                                "train_options": gone["train_options"]}, store)["table"]
    assert t["status"].tolist() == ["diverged"] and "lambda_theta_train" not in t
    assert not store.entries("spectrum") and not store.entries("landscape-1d")


def test_training_options_for_some_batch_sizes(tmp_path):
    """``batch_train_options`` changes the options of its batch sizes only: the others keep their runs
    (and store keys), and the page names the difference."""
    store = Store(tmp_path)
    base = _params("01-batch-size")
    plain = registry.run_chapter("01-batch-size", base, store)["table"].set_index("batch_size")
    per = [{"batch_size": 10, "lr": 0.2, "momentum": 0.5}]
    res = registry.run_chapter("01-batch-size", {**base, "batch_train_options": per}, store)
    t = res["table"].set_index("batch_size")
    assert t.loc[50, "run"] == plain.loc[50, "run"] and t.loc[10, "run"] != plain.loc[10, "run"]
    cfg = store.get("train", key=t.loc[10, "run"]).config["config"]
    assert (cfg["lr"], cfg["momentum"], cfg["batch_size"]) == (0.2, 0.5, 10)
    assert "**Training options that differ by batch size:** B = 10: lr 0.2, momentum 0.5." in provenance(
        {**base, "batch_train_options": per})
    assert "differ by batch size" not in provenance({**base, "batch_sizes": [50], "batch_train_options": per})
    with pytest.raises(HessbatchError, match=r"batch_train_options must be a list of mappings, each a batch_size"):
        registry.run_chapter("01-batch-size", {**base, "batch_train_options": {10: {"lr": 0.2}}}, store)
    with pytest.raises(HessbatchError, match="has no parameter"):   # chapters without a batch-size sweep
        registry.run_chapter("04-saddle-free", {**_params("04-saddle-free"), "batch_train_options": per}, store)


def test_a_page_cut_to_some_batch_sizes_cuts_its_other_lists_too():
    p = {"batch_sizes": [16, 32, 64], "whole_set_batch_sizes": [16, 64], "plane_batch_sizes": [16, 64], "k": 20}
    assert only_batch_sizes(p, [32, 64]) == {"batch_sizes": [32, 64], "whole_set_batch_sizes": [64],
                                             "plane_batch_sizes": [64], "k": 20}
    t8 = {"batch_sizes": [16, 32], "t8_batch_sizes": [8192, 16384]}  # not chosen among batch_sizes: kept
    assert only_batch_sizes(t8, [32]) == {"batch_sizes": [32], "t8_batch_sizes": [8192, 16384]}


def test_setting_batch_sizes_cuts_the_lists_chosen_among_them():
    paper = load_profile("paper")
    (_, _, p, _), = [r for r in selected(paper, ["01-batch-size--C1-cpu"], {"batch_sizes": [64]})
                     if "fgsm10" not in r[0]]
    assert p["batch_sizes"] == [64] and p["whole_set_batch_sizes"] == []
    (_, _, p, _), = [r for r in selected(paper, ["01-batch-size--C1-cpu"], {"batch_sizes": [16]})
                     if "fgsm10" not in r[0]]
    assert p["whole_set_batch_sizes"] == [16]


def test_the_batch_size_page_shows_each_layers_curvature(tmp_path):
    from hessbatch.paper import figures

    res = registry.run_chapter("01-batch-size", _params("01-batch-size", hessian_samples=12, layer_k=1), Store(tmp_path))
    layers = res["layers"]
    assert layers["layer"].tolist() == ["1.2", "1.4"] * 2 and layers["module"].tolist() == ["Linear"] * 4
    assert sorted(layers["batch_size"].unique()) == [10, 50] and (layers["n_params"] > 0).all()
    assert "the largest batch is sharper in most layers" in " ".join(res["claims"]["claim"])
    labels = [t.get_text() for t in figures.layer_spectra(layers).axes[0].get_yticklabels()]
    assert labels == ["1.2 (Linear)", "1.4 (Linear)"]
    none = registry.run_chapter("01-batch-size", _params("01-batch-size", hessian_samples=12, layer_k=0), Store(tmp_path))
    assert none["layers"].empty
