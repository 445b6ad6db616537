import pytest
import torch
from torch import nn

from hessbatch import HessbatchError
from hessbatch.catalog import MODELS, READINGS
from hessbatch.models import build_model, n_params

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)

# Counts from the layer lists in SPEC.md §1 (and, for the default readings, the authors' code).
COUNTS = [
    ("M1", "text", MNIST, 10, 1_256_080),
    ("M1", "lenet", MNIST, 10, 431_080),
    ("C1", "code", CIFAR, 10, 1_756_682),
    ("C1", "text", CIFAR, 10, 282_122),
    ("C2", "code", CIFAR, 10, 1_148_746),
    ("C2", "text", CIFAR, 10, 2_426_698),
    ("C3", "code", CIFAR, 10, 1_147_978),
    ("C3", "text", CIFAR, 10, 2_425_930),
    ("CR", "code", CIFAR, 100, 11_220_132),
    ("MLP", "code", MNIST, 10, 101_770),
]


@pytest.mark.parametrize("name,reading,shape,classes,count", COUNTS)
def test_parameter_count_and_output_shape(name, reading, shape, classes, count):
    model = build_model(name, shape, classes, reading=reading).eval()
    assert n_params(model) == count
    assert model(torch.rand(3, *shape)).shape == (3, classes)


def test_every_reading_is_counted():
    assert {(n, r) for n, r, *_ in COUNTS} == {(n, r) for n in MODELS for r in READINGS[n]}


@pytest.mark.parametrize("name", MODELS)
def test_assumption_1_layers_only(name):
    shape = MNIST if name in ("M1", "MLP") else CIFAR
    allowed = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Sequential,
               nn.Identity, nn.AdaptiveAvgPool2d)
    for m in build_model(name, shape, 10).modules():
        assert isinstance(m, allowed) or type(m).__name__ in ("Normalize", "BasicBlock"), type(m)


def test_bn_placement_matches_authors_code():
    body = build_model("C1", CIFAR, 10)[1]
    kinds = [type(m).__name__ for m in body[0]]
    assert kinds[:4] == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model("C3", CIFAR, 10).modules())


def test_normalization_inside_the_model():
    torch.manual_seed(0)
    model = build_model("M1", MNIST, 10, mean=(0.1307,), std=(0.3081,)).eval()
    x = torch.rand(4, *MNIST)
    torch.testing.assert_close(model(x), model[1]((x - 0.1307) / 0.3081))


def test_seed_fixes_initialisation():
    torch.manual_seed(3)
    a = build_model("C1", CIFAR, 10).state_dict()
    torch.manual_seed(3)
    b = build_model("C1", CIFAR, 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_aliases_and_case():
    assert n_params(build_model("resnet18", CIFAR, 100)) == 11_220_132
    assert n_params(build_model("m1", MNIST, 10)) == 1_256_080


@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="VGG"), "unknown model 'VGG'"),
    (dict(name="M1", reading="code"), "unknown reading of M1 'code'"),
    (dict(name="M1", mean=(0.1, 0.2, 0.3), std=(1, 1, 1)), "normalization has 3 channels"),
])
def test_bad_model_arguments(kwargs, msg):
    name = kwargs.pop("name")
    with pytest.raises(HessbatchError, match=msg):
        build_model(name, MNIST, 10, **kwargs)
