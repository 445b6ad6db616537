"""The curvature API on the reader's own terms: any loss, a block of parameters, the GGN, data
streamed from a DataLoader, per-layer spectra. Each against curvlinops in float64 (an independent
implementation) or an explicit matrix, on a small conv net."""

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessbatch.eigensolvers import layers, per_layer_spectra, spectral_density, top_eigen, trace
from hessbatch.errors import HessbatchError
from hessbatch.hessian import GGNOperator, HessianOperator, product_rounding

curvlinops = pytest.importorskip("curvlinops")


def _net(out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 5), nn.Tanh(),
                         nn.Linear(5, out)).double()


@pytest.fixture(scope="module")
def tiny():
    """A float64 conv net (133 parameters) with a smooth layer, so that its Hessian differs from its GGN."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 8, 8, generator=g, dtype=torch.float64)
    return _net(), x, torch.randint(0, 3, (40,), generator=g)


def _reference(kind, net, loss, params, data):
    op = getattr(curvlinops, f"{kind}LinearOperator")(net, loss, params, data, check_deterministic=False)
    dim = sum(p.numel() for p in params)
    return (op @ torch.eye(dim, dtype=torch.float64)).T


def _batches(x, y, size=16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def test_the_ggn_is_curvlinops_ggn_and_not_the_hessian(tiny):
    net, x, y = tiny
    ours = GGNOperator(net, (x, y), chunk=16).dense()
    ref = _reference("GGN", net, nn.CrossEntropyLoss(), list(net.parameters()), _batches(x, y))
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(ours).min() > -1e-10                     # positive semi-definite
    assert not torch.allclose(ours, HessianOperator(net, (x, y)).dense(), atol=1e-4)


def test_any_loss_a_hessian_under_mse(tiny):
    net, x, y = tiny
    target = F.one_hot(y, 3).double()
    ours = HessianOperator(net, (x, target), loss=F.mse_loss, chunk=16).dense()
    ref = _reference("Hessian", net, nn.MSELoss(), list(net.parameters()), _batches(x, target))
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ours, HessianOperator(net, (x, y)).dense(), atol=1e-3)


@pytest.mark.parametrize("hvp", ["backward", "func"])
def test_a_block_of_parameters(tiny, hvp):
    net, x, y = tiny
    block = [net[4].weight, net[6].bias]
    ref = _reference("Hessian", net, nn.CrossEntropyLoss(), block, _batches(x, y))
    for params in (block, ["4.weight", "6.bias"]):
        op = HessianOperator(net, (x, y), hvp=hvp, params=params)
        assert op.dim == 18 * 5 + 3 and torch.allclose(op.dense(), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(HessbatchError, match="no parameter '9.weight'"):
        HessianOperator(net, (x, y), params=["9.weight"])
    with pytest.raises(HessbatchError, match="parameters of the model"):
        HessianOperator(net, (x, y), params=[torch.nn.Parameter(torch.zeros(2))])


class Counted:
    """A re-iterable of batches that counts the batches alive at once (a DataLoader's contract)."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size, self.alive, self.most = x, y, size, 0, 0

    def _gone(self):
        self.alive -= 1

    def __iter__(self):
        for i in range(0, len(self.y), self.size):
            xb = self.x[i:i + self.size].clone()
            self.alive += 1
            self.most = max(self.most, self.alive)
            weakref.finalize(xb, self._gone)
            yield xb, self.y[i:i + self.size]
            gc.collect()


@pytest.mark.parametrize("kind", [HessianOperator, GGNOperator])
def test_streamed_data_gives_the_in_memory_products_one_batch_in_memory(tiny, kind):
    net, x, y = tiny
    v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    memory = kind(net, (x, y), chunk=8).matvec(v)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    assert torch.allclose(kind(net, loader).matvec(v), memory, rtol=1e-12, atol=1e-14)
    counted = Counted(x, y, 8)
    op = kind(net, counted)
    for _ in range(2):
        assert torch.allclose(op.matvec(v), memory, rtol=1e-12, atol=1e-14)
    assert op.n == 40 and counted.most == 1
    assert product_rounding(op, v) == 0.0                   # a float64 model: nothing to round


def test_streamed_solvers_match_in_memory(tiny):
    net, x, y = tiny
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    a, b = top_eigen(net, (x, y), k=3, tol=1e-8), top_eigen(net, loader, k=3, tol=1e-8)
    assert np.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9)
    assert trace(HessianOperator(net, loader), n_samples=4).estimate == pytest.approx(
        trace(HessianOperator(net, (x, y)), n_samples=4).estimate, rel=1e-10)
    assert np.allclose(spectral_density(HessianOperator(net, loader), n_probes=1, steps=5).nodes,
                       spectral_density(HessianOperator(net, (x, y)), n_probes=1, steps=5).nodes, rtol=1e-8)


def test_bad_streamed_data_is_one_error(tiny):
    net, x, y = tiny
    with pytest.raises(HessbatchError, match="not a one-pass iterator"):
        HessianOperator(net, iter(_batches(x, y)))
    wrong = [(x[:10], y[:9])]
    with pytest.raises(HessbatchError, match="10 inputs and 9 targets"):
        HessianOperator(net, wrong).matvec(torch.zeros(133, dtype=torch.float64))
    with pytest.raises(HessbatchError, match="yielded no batch"):
        HessianOperator(net, []).matvec(torch.zeros(133, dtype=torch.float64))


def test_per_layer_spectra_are_the_diagonal_blocks(tiny):
    net, x, y = tiny
    assert layers(net) == {"0": ["0.weight", "0.bias"], "4": ["4.weight", "4.bias"], "6": ["6.weight", "6.bias"]}
    full = HessianOperator(net, (x, y)).dense()
    t = per_layer_spectra(net, (x, y), k=2, tol=1e-8)
    assert t["layer"].tolist() == ["0", "0", "4", "4", "6", "6"] and t["n_params"].tolist() == [20, 20, 95, 95, 18, 18]
    assert t["module"].tolist() == ["Conv2d"] * 2 + ["Linear"] * 4
    start = 0
    for layer, dim in [("0", 20), ("4", 95), ("6", 18)]:
        block = full[start:start + dim, start:start + dim]
        start += dim
        ref = torch.linalg.eigvalsh(block).flip(0)[:2].numpy()
        assert np.allclose(t[t["layer"] == layer]["eigenvalue"], ref, rtol=1e-7)
    ggn = per_layer_spectra(net, (x, y), k=1, tol=1e-8, curvature="ggn")
    assert (ggn["eigenvalue"] >= 0).all() and len(ggn) == 3
    wrapped = nn.Sequential(nn.Identity(), net)                      # blocks one level down: the whole net
    assert layers(wrapped, depth=1) == {"1": [f"1.{n}" for n in ("0.weight", "0.bias", "4.weight", "4.bias",
                                                                  "6.weight", "6.bias")]}
    assert list(layers(wrapped, depth=2)) == ["1.0", "1.4", "1.6"]


def test_input_curvature_chooses_exact_for_piecewise_linear_models_and_streams(tiny):
    from hessbatch.input_curvature import input_curvature, piecewise_linear, resolve_method
    from hessbatch.models import build_model

    net, x, y = tiny
    relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(18, 3)).double().eval()
    assert piecewise_linear(relu) and not piecewise_linear(net)          # net has a Tanh
    assert resolve_method(relu, "auto") == "exact" and resolve_method(net, "auto") == "power"
    assert all(piecewise_linear(build_model(m, (3, 32, 32), 10)) for m in ("C1", "C2", "C3", "CR"))
    torchvision = pytest.importorskip("torchvision")
    assert piecewise_linear(torchvision.models.resnet18(num_classes=10))
    assert not piecewise_linear(torchvision.models.mobilenet_v3_small(num_classes=10))   # Hardswish
    auto = input_curvature(relu, x, y)
    exact = input_curvature(relu, x, y, method="exact")
    assert auto.method == "exact" and np.array_equal(auto.lambda_max, exact.lambda_max)
    assert input_curvature(net, x, y, max_iter=3).method == "power"
    streamed = input_curvature(relu, DataLoader(TensorDataset(x, y), batch_size=16))
    assert np.allclose(streamed.lambda_max, exact.lambda_max, rtol=1e-12)
    assert np.allclose(streamed.grad_norm, exact.grad_norm, rtol=1e-12)
    with pytest.raises(HessbatchError, match="unknown method 'lanczos'"):
        input_curvature(relu, x, y, method="lanczos")


def test_evaluation_and_landscapes_stream(tiny):
    from hessbatch.evaluation import evaluate, full_gradient_norm
    from hessbatch.landscape import along_direction, random_direction

    net, x, y = tiny
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    assert evaluate(net, loader) == pytest.approx(evaluate(net, x, y), rel=1e-12)
    assert full_gradient_norm(net, loader) == pytest.approx(full_gradient_norm(net, x, y), rel=1e-10)
    d = random_direction(net, seed=0)
    a = along_direction(net, d, [-0.5, 0.0, 0.5], {"train": (x, y)})
    b = along_direction(net, d, [-0.5, 0.0, 0.5], {"train": loader})
    assert np.allclose(a["loss"], b["loss"], rtol=1e-12) and a["loss"].nunique() == 3


def test_a_model_without_second_derivatives_is_one_clear_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Hardsigmoid(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).double()
    x, y = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    with pytest.raises(HessbatchError, match="needs second derivatives of the model, and PyTorch has none"):
        top_eigen(net, (x, y), k=1)


def test_an_image_folder_larger_than_the_limit_streams_from_disk(tmp_path):
    from conftest import make_cifar_jpeg_root

    from hessbatch.data import load_dataset, stream

    make_cifar_jpeg_root(tmp_path, n=(4, 2), archives=False)
    name = f"imagefolder:{tmp_path / 'cifar10-jpeg'}"
    x, y = stream(name, "train")                                          # 40 images: held in memory
    ds = load_dataset(name)
    assert torch.equal(x, ds.x_train) and torch.equal(y, ds.y_train)
    loader = stream(name, "train", batch_size=16, above=40 * 3 * 32 * 32 * 4 - 1)   # one byte less: streamed
    assert isinstance(loader, DataLoader) and [len(b[1]) for b in loader] == [16, 16, 8]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(98, 10))
    v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    streamed, held = HessianOperator(net, loader).matvec(v), HessianOperator(net, (x, y)).matvec(v)
    assert (streamed - held).norm() <= 1e-5 * held.norm()            # float32 batches summed differently
    with pytest.raises(HessbatchError, match="stream takes an imagefolder:PATH dataset"):
        stream("mnist5k")
