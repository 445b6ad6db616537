"""The CPU fast path (channels-last) against the plain NCHW path: the same function to float32
round-off, the same training to a stated tolerance, and recorded in every run."""

import copy

import numpy as np
import pytest
import torch

from hessbatch import fastpath, models
from hessbatch.errors import HessbatchError
from hessbatch.eigensolvers import top_eigen
from hessbatch.hessian import HessianOperator
from hessbatch.landscape import along_direction, random_direction
from hessbatch.store import Store
from hessbatch.train import train


def c1(shape=(3, 16, 16)):
    torch.manual_seed(0)
    return models.build_model("C1", shape, 10, (0.5,) * 3, (0.25,) * 3).eval()


def data(n=48, shape=(3, 16, 16)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_fast_path_is_channels_last_for_conv_nets_on_a_cpu_only(monkeypatch):
    assert fastpath.memory_format(c1(), "cpu") == torch.channels_last
    assert fastpath.memory_format(c1(), "cuda") == torch.contiguous_format
    mlp = models.build_model("MLP", (1, 28, 28), 10)
    assert fastpath.memory_format(mlp, "cpu") == torch.contiguous_format
    monkeypatch.setenv(fastpath.ENV, "0")
    assert fastpath.memory_format(c1(), "cpu") == torch.contiguous_format
    monkeypatch.setenv(fastpath.ENV, "yes")
    with pytest.raises(HessbatchError, match="HESSBATCH_CHANNELS_LAST must be one of 0, 1"):
        fastpath.enabled()


def test_hvp_on_channels_last_equals_nchw_to_round_off():
    plain = c1()
    fast = fastpath.to_fast(copy.deepcopy(plain), "cpu")
    assert fast[1][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = data()
    v = torch.randn(models.n_params(plain), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = HessianOperator(plain, (x, y)).matvec(v), HessianOperator(fast, (x, y)).matvec(v)
    assert not torch.equal(a, b)                                   # other kernels, other rounding
    assert (a - b).norm() <= 1e-5 * a.norm()
    ea, eb = top_eigen(plain, (x, y), k=3), top_eigen(fast, (x, y), k=3)
    np.testing.assert_allclose(ea.eigenvalues, eb.eigenvalues, rtol=1e-5)


def test_spectra_of_a_stored_run_are_taken_in_nchw(tmp_path, monkeypatch):
    from hessbatch.measurements import spectrum

    cfg = dict(model="M1", dataset="mnist5k", subset=5, test_subset=5, batch_size=25, max_epochs=1, target_loss=None)
    run = train(cfg, Store(tmp_path), progress=False)
    seen = []
    real = HessianOperator.__init__

    def spy(self, model, *a, **kw):
        seen.append(model[1][0][2].weight.is_contiguous())
        real(self, model, *a, **kw)

    monkeypatch.setattr(HessianOperator, "__init__", spy)
    e = spectrum(run, k=2, store=Store(tmp_path))
    assert seen == [True, True] and e.json()["residuals"] == "measured"      # the product and its float64 check
    assert {"residual", "rounding", "bound"} <= set(e.csv("eigenvalues.csv").columns)


def test_landscapes_keep_a_channels_last_model_and_its_layout():
    plain = c1()
    fast = fastpath.to_fast(copy.deepcopy(plain), "cpu")
    x, y = data()
    d = random_direction(plain, seed=0)
    curves = [along_direction(m, d, [-0.5, 0.0, 0.5], {"train": (x, y)}) for m in (plain, fast)]
    np.testing.assert_allclose(curves[0]["loss"], curves[1]["loss"], rtol=1e-5)
    assert fast[1][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(p, q) for p, q in zip(fast.state_dict().values(),
                                                  fastpath.to_fast(copy.deepcopy(plain), "cpu").state_dict().values()))


def test_training_on_both_paths_ends_within_tolerance(tmp_path, monkeypatch):
    """M1 (a conv net), 2 epochs on 200 digits: the two layouts round differently, so the weights
    drift apart, by less than 1e-4 of the largest weight; each run records its layout."""
    cfg = dict(model="M1", dataset="mnist5k", subset=20, test_subset=10, batch_size=20, lr=0.05,
               max_epochs=2, target_loss=None)
    fast = train(cfg, Store(tmp_path / "fast"), progress=False)
    monkeypatch.setenv(fastpath.ENV, "0")
    plain = train(cfg, Store(tmp_path / "plain"), progress=False)
    assert fast.key == plain.key                                   # the layout is not part of the configuration
    assert (fast.result["memory_format"], plain.result["memory_format"]) == ("channels_last", "contiguous")
    assert fast.result["threads"] == torch.get_num_threads() and fast.result["cpu"]
    sa, sb = fast.entry.torch(), plain.entry.torch()
    diff = max((sa[k] - sb[k]).abs().max().item() for k in sa)
    scale = max(v.abs().max().item() for v in sa.values())
    assert 0 < diff <= 1e-4 * scale
    np.testing.assert_allclose(fast.history["train_loss"], plain.history["train_loss"], rtol=1e-4)


def test_a_stored_run_loads_in_the_fast_layout(tmp_path):
    cfg = dict(model="M1", dataset="mnist5k", subset=5, test_subset=5, batch_size=25, max_epochs=1, target_loss=None)
    run = train(cfg, Store(tmp_path), progress=False)
    for epoch in (None, 0):
        w = run.model(epoch=epoch)[1][0][2].weight           # M1's second convolution
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def test_training_compiles_where_it_pays(monkeypatch):
    c1_ = c1()
    assert fastpath.compiles(c1_, 512, "cpu") and not fastpath.compiles(c1_, 256, "cpu")
    assert not fastpath.compiles(c1_, 2048, "cuda")
    assert not fastpath.compiles(models.build_model("C3", (3, 32, 32), 10), 2048, "cpu")   # no batch norm
    monkeypatch.setenv(fastpath.COMPILE_ENV, "1")
    assert fastpath.compiles(models.build_model("M1", (1, 28, 28), 10), 16, "cpu")
    monkeypatch.setenv(fastpath.COMPILE_ENV, "0")
    assert not fastpath.compiles(c1_, 2048, "cpu")
    monkeypatch.setenv(fastpath.COMPILE_ENV, "true")
    with pytest.raises(HessbatchError, match="HESSBATCH_COMPILE must be one of 0, 1, auto"):
        fastpath.compiles(c1_, 2048, "cpu")


def test_compiled_training_is_seeded_and_ends_near_the_eager_run(tmp_path, monkeypatch):
    cfg = dict(model="M1", dataset="mnist5k", subset=20, test_subset=10, batch_size=20, lr=0.05,
               max_epochs=2, target_loss=None)
    monkeypatch.setenv(fastpath.COMPILE_ENV, "1")
    a = train(cfg, Store(tmp_path / "a"), progress=False)
    b = train(cfg, Store(tmp_path / "b"), progress=False)
    monkeypatch.setenv(fastpath.COMPILE_ENV, "0")
    eager = train(cfg, Store(tmp_path / "eager"), progress=False)
    assert (a.result["step"], eager.result["step"]) == ("compiled", "eager")
    sa, sb, se = a.entry.torch(), b.entry.torch(), eager.entry.torch()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)                 # a seed fixes a compiled run too
    scale = max(v.abs().max().item() for v in se.values())
    assert max((sa[k] - se[k]).abs().max().item() for k in sa) <= 1e-4 * scale
    np.testing.assert_allclose(a.history["train_loss"], eager.history["train_loss"], rtol=1e-4)


def test_a_model_that_does_not_compile_trains_eagerly_with_a_warning(tmp_path, monkeypatch):
    def broken(model, *a, **kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setenv(fastpath.COMPILE_ENV, "1")
    monkeypatch.setattr(torch, "compile", broken)
    cfg = dict(model="M1", dataset="mnist5k", subset=5, test_subset=5, batch_size=25, max_epochs=1, target_loss=None)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        run = train(cfg, Store(tmp_path), progress=False)
    assert run.result["step"] == "eager (compile failed: RuntimeError: no C++ compiler)"


def test_a_step_is_summed_over_cache_sized_parts_where_the_loss_is_a_sum_over_samples(monkeypatch):
    from hessbatch.robust import adversarial_hook

    c3, x = models.build_model("C3", (3, 32, 32), 10), torch.rand(2, 3, 32, 32)
    assert fastpath.training_parts(c3, x, 128, "cpu") == 16 and fastpath.training_parts(c3, x, 16, "cpu") is None
    assert fastpath.training_parts(c1((3, 32, 32)), x, 2048, "cpu") is None        # batch norm: batch statistics
    assert fastpath.training_parts(c3, x, 128, "cuda") is None
    assert fastpath.training_parts(c3, x, 128, "cpu", adversarial_hook({"attack": "fgsm", "eps": 0.1})) == 16
    assert fastpath.training_parts(c3, x, 128, "cpu", adversarial_hook({"attack": "fgsm", "eps": 0.1,
                                                                        "clean_fraction": 0.5})) is None
    assert fastpath.training_parts(c3, x, 128, "cpu", lambda m, xb, yb: (xb, yb)) is None
    monkeypatch.setenv(fastpath.PARTS_ENV, "0")
    assert fastpath.training_parts(c3, x, 128, "cpu") is None
    monkeypatch.setenv(fastpath.PARTS_ENV, "yes")
    with pytest.raises(HessbatchError, match="HESSBATCH_PARTS must be one of 0, 1"):
        fastpath.training_parts(c3, x, 128, "cpu")


def test_training_in_parts_ends_within_tolerance_of_whole_batches(tmp_path, monkeypatch):
    """M1 (parts of 256) at B = 300, 2 epochs on 600 digits: the same gradients summed in another
    order, so the weights drift apart by less than 1e-4 of the largest; each run records its parts."""
    cfg = dict(model="M1", dataset="mnist5k", subset=60, test_subset=10, batch_size=300, lr=0.05,
               max_epochs=2, target_loss=None)
    parts = train(cfg, Store(tmp_path / "parts"), progress=False)
    monkeypatch.setenv(fastpath.PARTS_ENV, "0")
    whole = train(cfg, Store(tmp_path / "whole"), progress=False)
    assert parts.key == whole.key and (parts.result["parts"], whole.result["parts"]) == (256, None)
    sa, sb = parts.entry.torch(), whole.entry.torch()
    scale = max(v.abs().max().item() for v in sa.values())
    assert 0 < max((sa[k] - sb[k]).abs().max().item() for k in sa) <= 1e-4 * scale
    np.testing.assert_allclose(parts.history["train_loss"], whole.history["train_loss"], rtol=1e-4)
