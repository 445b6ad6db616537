"""The paper's models (Table 6) by name; inputs in [0, 1], normalization inside.

Every model is ReLU with convolution, linear, batch-norm and max-pool layers only
(the paper's Assumption 1). Where Table 6 and the authors' code disagree, the
reading is a named option, recorded in every run's configuration:

=====  ==========  ===========================================================  ===========
model  reading     layers                                                       parameters
=====  ==========  ===========================================================  ===========
M1     ``text``*   Conv(5,5,20)/2–Conv(5,5,50)/2–FC(500)–FC(10), same padding    1,256,080
M1     ``lenet``   Caffe LeNet: valid 5x5 convs, each followed by MP(2,2)          431,080
C1     ``code``*   [Conv(5,5,64)–ReLU–BN–MP(3,3)/2] x2–FC(384)–FC(192)–FC(10)    1,756,682
C1     ``text``    as ``code`` with stride-2 convolutions (Table 6's sentence)      282,122
C2     ``code``*   [Conv(3,3,64)–BN]x2–MP–[Conv(3,3,128)–BN]x2–MP–FC(256)x2, valid 1,148,746
C2     ``text``    as ``code`` with same padding                                2,426,698
C3     ``code``*   C2 without BN: the Carlini–Wagner CIFAR net, valid padding    1,147,978
C3     ``text``    as ``code`` with same padding                                2,425,930
CR     ``code``*   CIFAR ResNet-18: 3x3 stem, BasicBlock [2,2,2,2], 64–512 wide  11,220,132 (100 classes)
MLP    ``code``*   FC(128)–FC(c): not in the paper; for smoke tests               101,770
=====  ==========  ===========================================================  ===========

``*`` marks the default reading. Parameter counts are for 28x28x1 (M1) or 32x32x3 inputs
with 10 classes unless noted.

Beside them, any torchvision classification architecture by name (``torchvision:resnet18``, built
with ``weights=None``: nothing is downloaded) and any model an installed package registers in the
entry-point group ``hessbatch.models`` (a function ``(input_shape, num_classes) -> nn.Module``).
Both are wrapped as the paper's are: normalization inside, inputs in [0, 1], and a one-channel
image repeated to the channels the architecture takes.
"""

from __future__ import annotations

import torch
from torch import nn

from . import catalog
from .catalog import canonical_name, readings
from .errors import HessbatchError, choose


class Normalize(nn.Module):
    """(x − mean) / std per channel; inputs stay in [0, 1] outside the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def build_model(name: str, input_shape, num_classes: int, mean=(0.0,), std=(1.0,),
                reading: str | None = None) -> nn.Module:
    """A freshly initialised model (use ``torch.manual_seed`` first for a fixed init).

    ``input_shape`` is ``(C, H, W)``; ``mean``/``std`` are the per-channel statistics the
    model normalizes its [0, 1] inputs with.
    """
    name = canonical_name(name)
    reading = reading or readings(name)[0]
    choose(f"reading of {name}", reading, readings(name))
    c, h, w = input_shape
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise HessbatchError(f"normalization has {len(mean)} channels but the input has {c}")
    if catalog.is_external(name):
        return _external(name, (c, h, w), num_classes, Normalize(mean, std))
    body = _BUILDERS[name](c, num_classes, reading, (c, h, w))
    return nn.Sequential(Normalize(mean, std), body)


class Channels(nn.Module):
    """A one-channel image repeated to ``n`` channels (MNIST into an architecture made for RGB)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x.expand(-1, self.n, *x.shape[2:])


def _torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_external(name: str) -> None:
    """One error line, before any compute, if ``name`` (canonical, not the paper's) names no model."""
    if name.startswith(catalog.TORCHVISION):
        choose("torchvision classification model", name[len(catalog.TORCHVISION):], _torchvision_models())


def _external(name: str, shape, num_classes: int, normalize: nn.Module) -> nn.Module:
    """A torchvision or plugin model, wrapped: normalization, channels, and a check that it maps a
    batch of these inputs to (batch, num_classes) logits."""
    if name.startswith(catalog.TORCHVISION):
        import torchvision

        check_external(name)
        net = torchvision.models.get_model(name[len(catalog.TORCHVISION):], weights=None, num_classes=num_classes)
    else:
        net = catalog.plugins()[name].load()(input_shape=tuple(shape), num_classes=num_classes)
        if not isinstance(net, nn.Module):
            raise HessbatchError(f"model {name!r}: its entry point returned {type(net).__name__}, not a torch module")
    c = shape[0]
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    layers = [normalize]
    if first is not None and first.in_channels != c:
        if c != 1:
            raise HessbatchError(f"model {name!r} takes {first.in_channels}-channel images; the data have {c}")
        layers.append(Channels(first.in_channels))
    model = nn.Sequential(*layers, net)
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape))
    except (RuntimeError, ValueError) as e:
        raise HessbatchError(f"model {name!r} does not take {'x'.join(map(str, shape))} inputs: "
                             f"{str(e).splitlines()[0]}") from None
    finally:
        model.train(was)
    if tuple(out.shape) != (2, num_classes):
        raise HessbatchError(f"model {name!r} gives outputs of shape {tuple(out.shape)} for a batch of 2; "
                             f"hessbatch needs (batch, {num_classes}) logits")
    return model


def _flat_dim(features: nn.Module, shape) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *shape)).numel()


def _head(features, shape, widths, num_classes):
    layers, d = [features, nn.Flatten()], _flat_dim(features, shape)
    for wdt in widths:
        layers += [nn.Linear(d, wdt), nn.ReLU()]
        d = wdt
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def _m1(c, k, reading, shape):
    if reading == "text":
        f = nn.Sequential(nn.Conv2d(c, 20, 5, stride=2, padding=2), nn.ReLU(),
                          nn.Conv2d(20, 50, 5, stride=2, padding=2), nn.ReLU())
    else:
        f = nn.Sequential(nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2))
    return _head(f, shape, [500], k)


def _c1(c, k, reading, shape):
    s = 1 if reading == "code" else 2
    block = lambda i: [nn.Conv2d(i, 64, 5, stride=s, padding=2), nn.ReLU(), nn.BatchNorm2d(64),  # noqa: E731
                       nn.MaxPool2d(3, stride=2, padding=1)]
    return _head(nn.Sequential(*block(c), *block(64)), shape, [384, 192], k)


def _cw(c, k, reading, shape, bn: bool):
    pad = 0 if reading == "code" else 1
    layers, i = [], c
    for stage in (64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(i, stage, 3, padding=pad), nn.ReLU()] + ([nn.BatchNorm2d(stage)] if bn else [])
            i = stage
        layers.append(nn.MaxPool2d(2))
    return _head(nn.Sequential(*layers), shape, [256, 256], k)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18(c, k, reading, shape):
    layers, cin = [nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, k)]
    return nn.Sequential(*layers)


def _mlp(c, k, reading, shape):
    return _head(nn.Identity(), shape, [128], k)


_BUILDERS = {"M1": _m1, "C1": _c1, "C2": lambda *a: _cw(*a, bn=True), "C3": lambda *a: _cw(*a, bn=False),
             "CR": _resnet18, "MLP": _mlp}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


RANDOM_NETWORKS = ("relu-mlp", "relu-cnn-bn", "tanh-mlp", "softplus-mlp")


def random_network(kind: str, d: int, classes: int, width: int, seed: int) -> nn.Module:
    """A small random float64 network in eval mode on inputs of dimension ``d``: ReLU MLPs and a
    ReLU CNN with batch norm (random running statistics) satisfy the paper's Assumption 1; the
    tanh and softplus MLPs are its counter-examples."""
    choose("random network", kind, RANDOM_NETWORKS)
    torch.manual_seed(seed)
    if kind == "relu-cnn-bn":
        side = int(round(d ** 0.5))
        m = nn.Sequential(nn.Unflatten(1, (1, side, side)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * (side // 2) ** 2, width), nn.ReLU(), nn.Linear(width, classes))
        with torch.no_grad():
            m[3].running_mean.uniform_(-0.5, 0.5)
            m[3].running_var.uniform_(0.5, 2.0)
    else:
        act = {"relu-mlp": nn.ReLU, "tanh-mlp": nn.Tanh, "softplus-mlp": nn.Softplus}[kind]
        m = nn.Sequential(nn.Linear(d, width), act(), nn.Linear(width, width), act(), nn.Linear(width, classes))
    return m.double().eval()
