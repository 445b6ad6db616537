import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hessbatch import HessbatchError
from hessbatch import measurements as analysis
from hessbatch.landscape import along_direction, interpolate, plane, second_difference
from hessbatch.store import Store
from hessbatch.evaluation import evaluate
from hessbatch.train import train


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)).eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return {"train": (torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)),
            "test": (torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g))}


def test_direction_origin_is_the_model_and_weights_are_restored(data):
    m = _model(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n = sum(p.numel() for p in m.parameters())
    d = torch.randn(n)
    curve = along_direction(m, d / d.norm(), [-1, 0, 1], data)
    assert set(curve["split"]) == {"train", "test"} and len(curve) == 6
    at0 = curve[(curve.alpha == 0) & (curve.split == "test")].iloc[0]
    assert at0["loss"] == pytest.approx(evaluate(m, *data["test"])[0])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(HessbatchError, match="direction has 3 entries"):
        along_direction(m, torch.ones(3), [0], data)


def test_plane_matches_direction_on_its_axis(data):
    m = _model(1)
    n = sum(p.numel() for p in m.parameters())
    d1, d2 = torch.randn(n), torch.randn(n)
    surf = plane(m, d1, d2, [0.0, 0.5], [0.0], data)
    line = along_direction(m, d1, [0.0, 0.5], data)
    assert np.allclose(surf.sort_values(["alpha", "split"])["loss"], line.sort_values(["alpha", "split"])["loss"])


def test_interpolation_endpoints_are_the_two_models(data):
    a, b = _model(2), _model(3)
    with torch.no_grad():
        b[2].running_mean.fill_(0.3)
    curve = interpolate(a, b, [0.0, 0.5, 1.0], data)
    tr = curve[curve.split == "train"].set_index("alpha")["loss"]
    assert tr[0.0] == pytest.approx(evaluate(a, *data["train"])[0])
    assert tr[1.0] == pytest.approx(evaluate(b, *data["train"])[0])


def test_second_difference_of_a_parabola():
    a = np.linspace(0, 1, 11)
    curve = pd.DataFrame({"alpha": a, "split": "train", "loss": 3 * a ** 2 + a})
    assert second_difference(curve, 0.0) == pytest.approx(6.0)
    assert second_difference(curve, 1.0) == pytest.approx(6.0)


def test_stored_spectrum_and_landscapes(tmp_path, tiny_cfg):
    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    spec = analysis.spectrum(run.key[:6], k=3, store=store)
    ev = spec.csv("eigenvalues.csv")
    assert list(ev["rank"]) == [1, 2, 3] and ev["eigenvalue"].is_monotonic_decreasing
    assert spec.torch("vectors.pt").shape == (2, 101_770)
    again = analysis.spectrum(run, k=3, store=store, chunk=17)  # speed-only settings share the entry
    assert again.key == spec.key
    curve = analysis.landscape_1d(run, radius=0.2, points=5, store=store).csv("curve.csv")
    assert len(curve) == 10 and curve["loss"].notna().all()
    # the loss rises both ways along the top eigenvector of a positive curvature
    tr = curve[curve.split == "train"].set_index("alpha")["loss"]
    assert tr[-0.2] > tr[0.0] and tr[0.2] > tr[0.0]
    surf = analysis.landscape_2d(run, radius=0.2, points=3, store=store).csv("surface.csv")
    assert len(surf) == 18
    ic = analysis.input_curvature(run, split="test", limit=20, store=store)
    assert ic.csv("samples.csv").shape == (20, 2) and ic.json()["lambda_max"] > 0
    # per-sample values in float32 (a 50,000-row split stays near 1.3 MB): exact to float32, means to 1e-6
    samples = ic.csv("samples.csv")
    assert len((ic.path / "samples.csv").read_text().splitlines()[1]) <= 2 * 16
    assert samples["lambda_max"].mean() == pytest.approx(ic.json()["lambda_max"], rel=1e-6)


def test_an_unconverged_spectrum_warns_when_computed_and_when_read(tmp_path, tiny_cfg):
    from hessbatch.errors import NotConvergedWarning

    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    with pytest.warns(NotConvergedWarning, match=r"Lanczos: only \d+ of 10 eigenpairs .* in 22 Hessian-vector products \(max_iter=12\)"):
        short = analysis.spectrum(run, k=10, max_iter=12, store=store)
    # 12 Lanczos steps, then one product per returned pair to measure its residual
    assert short.json()["converged"] is False and short.json()["n_hvp"] == 12 + 10
    ev = short.csv("eigenvalues.csv")
    n_ok = int((ev["residual"] <= 1e-4).sum())  # residuals are relative, measured
    assert n_ok < 10
    with pytest.warns(NotConvergedWarning, match=f"stored spectrum {short.key}.* {n_ok} of 10 eigenpairs"):
        assert analysis.spectrum(run, k=10, max_iter=12, store=store).key == short.key
    full = analysis.spectrum(run, k=10, store=store)  # the default cap: another entry, converged
    assert full.key != short.key and full.json()["converged"]
    assert full.key == analysis.spectrum(run, k=10, max_iter=None, store=store).key


def test_unknown_run_key(tmp_path):
    with pytest.raises(HessbatchError, match="no training run"):
        analysis.spectrum("feedbeef", store=Store(tmp_path))


def test_speed_only_settings_are_not_part_of_a_measurements_key(tmp_path, tiny_cfg):
    """The measurement decorator keys by every argument but the speed-only ones (device, chunk,
    HVP method, progress, data folder), and accepts a run as an object, a key or a prefix;
    the body runs only for a missing entry."""
    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    a = analysis.spectrum(run, k=2, store=store)
    b = analysis.spectrum(run.key[:6], k=2, store=store, chunk=7, hvp="func", device="cpu", progress=True)
    assert a.key == b.key and store.written == 2  # the run and one spectrum
    assert analysis.spectrum(run, k=3, store=store).key != a.key
    c = analysis.input_curvature(run, limit=5, store=store, chunk=2)      # method "auto": keyed as it chose
    assert c.config["config"] == {"run": run.key, "split": "train", "method": "exact", "tol": 1e-4,
                                  "max_iter": 100, "limit": 5}
    with pytest.raises(HessbatchError, match="unknown split 'val'"):
        analysis.spectrum(run, "val", store=store)


def test_filter_normalized_directions_have_each_filters_norm_of_the_weights():
    """Li et al.'s filter normalization: every row of every weight of the direction has the norm of
    the same row of the model's weights; biases get no direction; the seed fixes it."""
    from hessbatch.landscape import random_direction
    from hessbatch.models import build_model

    torch.manual_seed(0)
    model = build_model("M1", (1, 28, 28), 10, (0.1307,), (0.3081,))
    with torch.no_grad():  # a filter of another scale gets a direction of its own scale
        next(p for p in model.parameters() if p.dim() > 1)[0].mul_(7.0)
    d = random_direction(model, seed=3)
    assert torch.equal(d, random_direction(model, seed=3)) and not torch.equal(d, random_direction(model, seed=4))
    i = 0
    for p in [p for p in model.parameters() if p.requires_grad]:
        part = d[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
        if p.dim() == 1:
            assert torch.count_nonzero(part) == 0
        else:
            torch.testing.assert_close(part.reshape(len(p), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1))
    assert i == d.numel()
    unit = random_direction(model, seed=3, normalize=None)
    assert abs(unit.norm().item() - 1.0) < 1e-5 and torch.count_nonzero(unit) == unit.numel()


def test_random_landscape_is_stored_and_its_curvature_is_the_curves(tmp_path, tiny_cfg):
    from hessbatch.landscape import second_difference
    from hessbatch.measurements import random_landscape_1d
    from hessbatch.store import Store
    from hessbatch.train import train

    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    e = random_landscape_1d(run, radius=0.5, points=5, seed=1, store=store)
    curve = e.csv("curve.csv")
    assert sorted(curve["alpha"].unique()) == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert e.json()["curvature_train"] == pytest.approx(second_difference(curve, 0.0, "train"))
    assert random_landscape_1d(run.key, radius=0.5, points=5, seed=1, store=store).key == e.key
    assert random_landscape_1d(run, radius=0.5, points=5, seed=2, store=store).key != e.key


def test_a_surface_on_seeded_subsets(tmp_path, tiny_cfg):
    """``eval_samples`` (the tiny runs have 200 train, 100 test samples): each split's losses on its seeded subset (of which the Hessian's subsample
    of the same seed is a part); a split no larger is whole; stored apart from the whole-set surface."""
    from hessbatch.hessian import subsample

    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    whole = analysis.landscape_2d(run, radius=0.2, points=3, store=store)
    part = analysis.landscape_2d(run, radius=0.2, points=3, store=store, eval_samples=150)
    assert part.key != whole.key and part.json()["eval_samples"] == {"train": 150, "test": 100}
    ds = analysis.run_data(run)
    x, y = ds.split("train")
    xs, ys = subsample((x, y), 150)
    xh, _ = subsample((x, y), 50)
    assert all(any(torch.equal(h, s) for s in xs) for h in xh)
    at = lambda t, split: t[(t.alpha == 0) & (t.beta == 0) & (t.split == split)]["loss"].item()  # noqa: E731
    s, w = part.csv("surface.csv"), whole.csv("surface.csv")
    assert at(s, "train") == pytest.approx(evaluate(run.model(), xs, ys)[0], rel=1e-6)
    assert at(s, "train") != pytest.approx(at(w, "train"), rel=1e-6)
    assert at(s, "test") == pytest.approx(at(w, "test"), rel=1e-6)
    with pytest.raises(HessbatchError, match="eval_samples must be an integer >= 1"):
        analysis.landscape_2d(run, radius=0.2, points=3, store=store, eval_samples=0)
