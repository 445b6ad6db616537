"""The stated accuracy against an independent float64 reference: a small conv net trained in float32,
its top eigenvalues by ``top_eigen`` (float32 products summed in float64) against curvlinops' Hessian
in float64 with SciPy's ``eigsh``; its stored residuals against residuals measured in float64."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessbatch.data import load_dataset
from hessbatch.eigensolvers import top_eigen
from hessbatch.hessian import HessianOperator, product_rounding

curvlinops = pytest.importorskip("curvlinops")
eigsh = pytest.importorskip("scipy.sparse.linalg").eigsh


@pytest.fixture(scope="module")
def trained():
    """A ReLU conv net (4,258 parameters) trained 300 SGD steps in float32 on 500 MNIST digits."""
    torch.manual_seed(0)
    ds = load_dataset("mnist5k")
    x, y = ds.x_train[:500], ds.y_train[:500]
    net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval(), x, y


def float64_hessian(net, x, y):
    """curvlinops' Hessian of the mean cross-entropy, on a float64 copy: a SciPy operator and its matvec."""
    from scipy.sparse.linalg import LinearOperator

    n64 = copy.deepcopy(net).double()
    params = list(n64.parameters())
    H = curvlinops.HessianLinearOperator(n64, nn.CrossEntropyLoss(), params,
                                         [(x[i:i + 250].double(), y[i:i + 250]) for i in range(0, len(y), 250)],
                                         check_deterministic=False)
    dim = sum(p.numel() for p in params)
    mv = lambda v: (H @ torch.as_tensor(np.ravel(v), dtype=torch.float64)).numpy()  # noqa: E731
    return LinearOperator((dim, dim), matvec=mv, dtype=np.float64), mv


def test_float32_eigenvalues_within_the_stated_tolerance_of_float64(trained):
    net, x, y = trained
    e = top_eigen(net, (x, y), k=5, tol=1e-4, rounding=True)
    op, mv = float64_hessian(net, x, y)
    ref = np.sort(eigsh(op, k=5, which="LA", tol=1e-8, ncv=40)[0])[::-1]
    err = np.abs(e.eigenvalues - ref) / ref
    assert e.converged and np.all(err <= 1e-4)
    assert np.all(err <= e.error_bounds())          # the bound a page states holds
    measured = np.array([np.linalg.norm(mv(v.double().numpy()) - t * v.double().numpy()) / abs(t)
                         for t, v in zip(e.eigenvalues, e.eigenvectors)])
    assert np.all(e.residuals <= 2 * measured) and np.all(measured <= 2 * e.residuals)


def test_product_rounding_is_measured_against_float64(trained):
    net, x, y = trained
    op = HessianOperator(net, (x, y))
    v = top_eigen(net, (x, y), k=1).eigenvectors[0]
    r = product_rounding(op, v)
    _, mv = float64_hessian(net, x, y)
    ref = mv(v.numpy())
    assert r == pytest.approx(np.linalg.norm(op.matvec(v).numpy() - ref) / np.linalg.norm(ref), rel=1e-6)
    assert 0 < r < 3e-5                              # at the top eigenvector: float32 round-off (1.1e-5 on one thread)
    assert product_rounding(HessianOperator(copy.deepcopy(net).double(), (x.double(), y)), v) == 0.0


def test_product_rounding_on_large_data_takes_chunks_spread_over_it(trained):
    """Above ``max_samples`` both products are taken on evenly spread chunks (here 0, 3, 6, 9 of ten
    chunks of 50): the float64 reference is curvlinops' on those 200 samples, not on all 500."""
    net, x, y = trained
    v = top_eigen(net, (x, y), k=1).eigenvectors[0]
    r = product_rounding(HessianOperator(net, (x, y), chunk=50), v, max_samples=200)
    idx = torch.cat([torch.arange(i * 50, i * 50 + 50) for i in (0, 3, 6, 9)])
    sub = HessianOperator(net, (x[idx], y[idx]), chunk=50, cache_graph=False)
    ref = float64_hessian(net, x[idx], y[idx])[1](v.numpy())
    assert r == pytest.approx(np.linalg.norm(sub.matvec(v).numpy() - ref) / np.linalg.norm(ref), rel=1e-6)
    assert r != pytest.approx(product_rounding(HessianOperator(net, (x, y), chunk=50), v), rel=1e-3)
    assert 0 < r < 3e-5


def test_a_page_names_the_spectra_that_predate_measured_residuals(tmp_path, tiny_cfg):
    import json

    from hessbatch import measurements
    from hessbatch.paper.presentation import estimated_spectra, provenance, spectra_note
    from hessbatch.store import Store
    from hessbatch.train import train

    store = Store(tmp_path)
    run = train(tiny_cfg, store, progress=False)
    kw = dict(k=2, tol=1e-3, keep_vectors=0, store=store)
    with measurements.recorded() as record:
        for split in ("train", "test"):
            measurements.spectrum(run, split, **kw)
    assert [kind for kind, _, _ in record] == ["spectrum", "spectrum"]
    assert estimated_spectra(record) == [] and spectra_note([]) == ""
    test = record[1][1]                                   # stored again as before measured residuals
    config, files = test.config["config"], {n: (test.path / n).read_bytes() for n in ("eigenvalues.csv",)}
    meta = {k: v for k, v in test.json().items() if k != "residuals"}
    store.remove(test)
    with store.writer("spectrum", config) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / "result.json").write_text(json.dumps(meta))
    with measurements.recorded() as record:
        for split in ("train", "test"):
            measurements.spectrum(run, split, **kw)
    assert estimated_spectra(record) == ["MLP, B = 50 (test)"]
    assert "**Spectra stored before measured residuals:** MLP, B = 50 (test)." in provenance(
        {"profile": "quick"}, [run], estimated_spectra(record))
