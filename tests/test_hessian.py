"""The curvature engine against independent references: explicit Hessians, PyHessian, analytic facts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hessbatch.errors import HessbatchError
from hessbatch.eigensolvers import lanczos, spectral_density, top_eigen, trace
from hessbatch.hessian import HessianOperator, free_memory
from hessbatch.input_curvature import input_curvature, input_hessian


def tiny_mlp(act=nn.ReLU):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), act(), nn.Linear(7, 4)).double().eval()


def tiny_cnn():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(2 * 2 * 2, 3)).double()
    with torch.no_grad():  # non-trivial running statistics, as after training
        m[2].running_mean.uniform_(-0.5, 0.5)
        m[2].running_var.uniform_(0.5, 2.0)
    return m.eval()


def data_for(model, n=30, seed=2):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 5) if isinstance(model[0], nn.Linear) else (n, 1, 6, 6)
    classes = model[-1].out_features
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def explicit_hessian(model, x, y):
    """∇²θ of the mean cross-entropy by torch.autograd.functional.hessian, independent of HessianOperator."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    return torch.autograd.functional.hessian(loss, theta)


@pytest.fixture(params=["mlp", "cnn-bn"])
def problem(request):
    model = tiny_mlp() if request.param == "mlp" else tiny_cnn()
    x, y = data_for(model)
    H = explicit_hessian(model, x, y)
    return model, (x, y), H, torch.linalg.eigvalsh(H).numpy()


@pytest.mark.parametrize("hvp,cache", [("backward", False), ("backward", True), ("func", False)])
def test_hvp_matches_explicit_hessian(problem, hvp, cache):
    model, data, H, _ = problem
    op = HessianOperator(model, data, chunk=7, hvp=hvp, cache_graph=cache)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)


def test_graphs_are_cached_within_the_memory_budget(problem):
    model, data, H, _ = problem
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    every = HessianOperator(model, data, chunk=7, cache_graph=True)
    none = HessianOperator(model, data, chunk=7, cache_graph=False)
    assert torch.equal(every.matvec(v), none.matvec(v))  # results do not depend on the memory free
    assert every.cached_chunks == 5 and every.graph_bytes > 0 and none.cached_chunks == 0
    for budget, cached in [(0, 0), (every.graph_bytes // 2, None), (every.graph_bytes, 5)]:
        op = HessianOperator(model, data, chunk=7, memory_budget=budget)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
        assert op.graph_bytes <= budget
        if cached is None:
            assert 0 < op.cached_chunks < 5
        else:
            assert op.cached_chunks == cached
    default = HessianOperator(model, data, chunk=7)  # budget: half the free memory, plenty here
    default.matvec(v)
    assert default.cached_chunks == (5 if free_memory(default.device) is not None else 0)


@pytest.mark.parametrize("method,cap", [("lanczos", 6), ("power", 3)])
def test_eigenpairs_short_of_the_tolerance_warn(problem, method, cap):
    from hessbatch.errors import NotConvergedWarning

    model, data, _, _ = problem
    kw = dict(k=4, tol=1e-10, method=method, which="magnitude", chunk=8)
    with pytest.warns(NotConvergedWarning, match=r"only [0-3] of 4 eigenpairs reached the relative tolerance 1e-10"):
        e = top_eigen(model, data, max_iter=cap, **kw)
    assert not e.converged
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        assert top_eigen(model, data, max_iter=5000, **kw).converged


def test_processes_at_once_split_the_graph_memory(problem, monkeypatch):
    import hessbatch.hessian as hh

    model, data, H, _ = problem
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    every = HessianOperator(model, data, chunk=7, cache_graph=True)
    every.matvec(v)
    per_chunk = every.graph_bytes / 5
    monkeypatch.setattr(hh, "free_memory", lambda device: int(10 * per_chunk))
    counts = {}
    for share in ["0.5", "0.25", "0"]:
        monkeypatch.setenv("HESSBATCH_GRAPH_MEMORY", share)
        op = HessianOperator(model, data, chunk=7)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
        counts[share] = op.cached_chunks
        assert op.graph_bytes <= 10 * per_chunk * float(share)
    assert counts == {"0.5": 5, "0.25": 2, "0": 0}
    monkeypatch.setenv("HESSBATCH_GRAPH_MEMORY", "0.5")
    hh.split_graph_memory(4)  # one of 4 worker processes, under a parent's share of 0.5
    assert hh.graph_memory_share() == 0.125
    op = HessianOperator(model, data, chunk=7)
    op.matvec(v)
    assert op.cached_chunks == 1
    for bad in ["half", "2", "-0.1"]:
        monkeypatch.setenv("HESSBATCH_GRAPH_MEMORY", bad)
        with pytest.raises(HessbatchError, match=r"HESSBATCH_GRAPH_MEMORY must be a finite number in \[0, 1\]"):
            HessianOperator(model, data, chunk=7).matvec(v)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_progress_bar_leaves_the_result_alone(problem, method, capsys):
    model, data, _, _ = problem
    kw = dict(k=3, tol=1e-8, method=method, which="magnitude", max_iter=500, chunk=8)
    quiet = top_eigen(model, data, **kw)
    assert capsys.readouterr().err == ""
    shown = top_eigen(model, data, progress=True, **kw)
    err = capsys.readouterr().err
    assert ("Lanczos top-3" if method == "lanczos" else "power iteration") in err
    assert ("HVP" if method == "lanczos" else "eigenvalue") in err
    np.testing.assert_array_equal(shown.eigenvalues, quiet.eigenvalues)
    assert shown.n_hvp == quiet.n_hvp


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_match_eigvalsh(problem, method):
    model, data, H, ev = problem
    k = 5
    e = top_eigen(model, data, k=k, tol=1e-10, method=method, which="magnitude" if method == "power" else "largest",
                  max_iter=5000, chunk=8)
    ref = ev[::-1][:k] if method == "lanczos" else ev[np.argsort(-np.abs(ev))][:k]
    ref = np.sort(ref)[::-1]
    assert np.allclose(e.eigenvalues, ref, rtol=1e-5, atol=1e-12), (e.eigenvalues, ref)
    assert e.converged and list(e.eigenvalues) == sorted(e.eigenvalues, reverse=True)
    for lam, v in zip(e.eigenvalues, e.eigenvectors):
        assert abs(v.norm().item() - 1) < 1e-8
        assert (H @ v - lam * v).norm().item() <= 1e-4 * abs(lam)


def test_lanczos_at_the_papers_tolerance_bounds_the_relative_error(problem):
    model, data, H, ev = problem
    e = top_eigen(model, data, k=5, tol=1e-4)
    assert np.all(np.abs(e.eigenvalues - ev[::-1][:5]) <= 1e-4 * np.abs(ev[::-1][:5]))
    explicit = [(H @ v - lam * v).norm().item() / abs(lam) for lam, v in zip(e.eigenvalues, e.eigenvectors)]
    assert max(explicit) <= 1e-4
    assert e.n_hvp < len(ev)  # a Krylov method needs fewer products than the dimension


def test_smallest_and_both_ends_find_negative_curvature():
    model = tiny_mlp()
    x, y = data_for(model, n=4)  # a tiny sample: an indefinite Hessian
    ev = torch.linalg.eigvalsh(explicit_hessian(model, x, y)).numpy()
    assert ev[0] < 0
    op = HessianOperator(model, (x, y))
    small = lanczos(op, k=3, tol=1e-8, which="smallest", max_iter=op.dim)
    assert np.allclose(small.eigenvalues, ev[:3][::-1], rtol=1e-5, atol=1e-10)
    both = lanczos(op, k=2, tol=1e-8, which="both", max_iter=op.dim)
    assert np.allclose(sorted(both.eigenvalues), sorted(list(ev[:2]) + list(ev[-2:])), rtol=1e-5, atol=1e-10)


def test_hutchinson_trace_within_error_bars(problem):
    model, data, H, _ = problem
    t = trace(HessianOperator(model, data), n_samples=300, seed=3)
    exact = torch.trace(H).item()
    assert abs(t.estimate - exact) <= 4 * t.stderr
    assert t.stderr < 0.2 * abs(exact)


def test_slq_is_a_gauss_quadrature_of_each_probe(problem):
    model, data, H, ev = problem
    op = HessianOperator(model, data)
    steps, seed = 6, 4
    d = spectral_density(op, n_probes=3, steps=steps, seed=seed)
    assert np.allclose(d.weights.sum(axis=1), 1.0)
    g = torch.Generator().manual_seed(seed)
    for probe in range(3):
        v = (torch.randint(0, 2, (op.dim,), generator=g) * 2 - 1).double()
        v = v / v.norm()
        for p in range(1, 2 * steps):  # Gauss quadrature with m nodes is exact up to degree 2m - 1
            exact = (v @ torch.linalg.matrix_power(H, p) @ v).item()
            quad = float(np.sum(d.weights[probe] * d.nodes[probe] ** p))
            assert quad == pytest.approx(exact, rel=1e-6, abs=1e-12)
    x, dens = d.grid(2000)
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=1e-3)


def test_slq_moments_estimate_the_spectrum(problem):
    model, data, H, ev = problem
    d = spectral_density(HessianOperator(model, data), n_probes=200, steps=10, seed=0)
    assert d.moment(1) == pytest.approx(ev.mean(), rel=0.1)
    assert d.moment(2) == pytest.approx((ev ** 2).mean(), rel=0.15)


@pytest.mark.parametrize("kind", ["mlp", "cnn-bn"])
@pytest.mark.parametrize("method", ["power", "exact"])
def test_input_curvature_matches_per_sample_loop(kind, method):
    model = tiny_mlp() if kind == "mlp" else tiny_cnn()
    x, y = data_for(model, n=9)
    ic = input_curvature(model, x, y, method=method, tol=1e-12, max_iter=5000, chunk=4)
    for i in range(len(y)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)[0]
        Hi = torch.autograd.functional.hessian(lambda z: F.cross_entropy(model(z.view_as(xi)), y[i:i + 1]),
                                               x[i].reshape(-1))
        lam = torch.linalg.eigvalsh(Hi)[-1].item()
        assert ic.grad_norm[i] == pytest.approx(g.norm().item(), rel=1e-10)
        assert ic.lambda_max[i] == pytest.approx(lam, rel=1e-6, abs=1e-12)
    assert ic.unconverged == 0


def test_input_power_iteration_reports_samples_that_did_not_converge():
    model = tiny_cnn()
    x, y = data_for(model, n=9)
    assert input_curvature(model, x, y, method="power", tol=1e-12, max_iter=2).unconverged == 9
    loose = input_curvature(model, x, y, method="power", tol=1e-3, max_iter=5000)
    exact = input_curvature(model, x, y, method="exact")
    assert loose.unconverged == 0 and loose.iterations < 5000
    assert np.allclose(loose.lambda_max, exact.lambda_max, rtol=1e-2)


def _theorem1_stats(model, x, y):
    ev = torch.linalg.eigvalsh(input_hessian(model, x, y))
    lmax = ev[:, -1:].clamp_min(1e-30)
    rank = (ev.abs() > 1e-9 * lmax).sum(1)
    return (ev[:, 0:1] / lmax).min().item(), rank.max().item()


@pytest.mark.parametrize("bn", [False, True])
def test_theorem1_input_hessian_psd_and_low_rank_for_relu(bn):
    torch.manual_seed(5)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()] + ([nn.BatchNorm2d(4)] if bn else []) + \
             [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)]
    model = nn.Sequential(*layers).double()
    if bn:
        with torch.no_grad():
            model[2].running_var.uniform_(0.5, 2)
    model.eval()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    min_ratio, rank = _theorem1_stats(model, x, y)
    assert min_ratio >= -1e-6          # PSD (Theorem 1)
    assert rank <= 5 - 1               # rank <= c (Prop. 2); the softmax's null vector 1 makes it c - 1


def test_theorem1_check_fails_for_tanh():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).double().eval()
    x, y = torch.randn(8, 10, dtype=torch.float64) * 2, torch.randint(0, 3, (8,))
    min_ratio, rank = _theorem1_stats(model, x, y)
    assert min_ratio < -1e-3 and rank > 3


def test_agrees_with_pyhessian_on_a_trained_model(tmp_path):
    pyhessian = pytest.importorskip("pyhessian")
    from hessbatch.store import Store
    from hessbatch.train import prepare, train

    run = train(dict(model="M1", reading="lenet", dataset="mnist5k", subset=30, test_subset=5, batch_size=50,
                     lr=0.05, max_epochs=4, target_loss=None), Store(tmp_path), progress=False)
    model = run.model().double()
    x, y = prepare(run.config)[1].split("train")
    x = x[:200].double()
    y = y[:200]
    ph = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    ref, _ = ph.eigenvalues(maxIter=1000, tol=1e-9, top_n=3)
    ours = top_eigen(model, (x, y), k=3, tol=1e-8)
    assert np.allclose(ours.eigenvalues, sorted(ref, reverse=True), rtol=1e-4)


def test_default_chunk_depends_on_the_device():
    from hessbatch.devices import default_chunk

    assert default_chunk("cpu") == 1024 and default_chunk(torch.device("cuda", 0)) == 8192
    assert default_chunk("cuda", 512, 4096) == 4096
