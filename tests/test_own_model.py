"""Models beyond the paper's: any torchvision classification architecture by name, and models that
an installed package registers in the entry-point group ``hessbatch.models``; each wrapped to take
inputs in [0, 1], and each bad name or model one error line (exit 2 from the command line)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hessbatch import catalog
from hessbatch.config import TrainConfig
from hessbatch.errors import HessbatchError
from hessbatch.models import Channels, build_model
from hessbatch.store import Store
from hessbatch.train import train

torchvision = pytest.importorskip("torchvision")

PLUGIN = '''
from torch import nn


def linear(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 7))


def not_a_module(input_shape, num_classes):
    return "a string"
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed package (a folder on sys.path with its dist-info) that registers three models."""
    (tmp_path / "hb_toy_models").mkdir()
    (tmp_path / "hb_toy_models" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "hb_toy_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hb-toy-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [hessbatch.models]
        toy-linear = hb_toy_models:linear
        toy-wrong-output = hb_toy_models:wrong_output
        toy-not-a-module = hb_toy_models:not_a_module
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_torchvision_architecture_by_name_wrapped_for_pixel_inputs():
    torch.manual_seed(0)
    m = build_model("torchvision:resnet18", (1, 28, 28), 10, mean=(0.5,), std=(0.25,))
    assert isinstance(m[1], Channels) and m[1].n == 3                      # MNIST into an RGB stem
    assert sum(p.numel() for p in m.parameters()) == 11_181_642
    x = torch.rand(3, 1, 28, 28)
    ref = torchvision.models.resnet18(num_classes=10)
    ref.load_state_dict(m[2].state_dict())
    m.eval(), ref.eval()
    assert torch.allclose(m(x), ref(((x - 0.5) / 0.25).expand(-1, 3, -1, -1)), atol=1e-5)
    assert TrainConfig(model="torchvision:resnet18").resolved().reading == "default"


@pytest.mark.parametrize("name, message", [
    ("torchvision:resnet1", "unknown torchvision classification model 'resnet1'; choose one of: alexnet,"),
    ("torchvision:ResNet18", "write torchvision:NAME"),
    ("resnet-18", "unknown model 'resnet-18'; choose one of: M1, C1, C2, C3, CR, MLP, torchvision:<name>"),
])
def test_an_unknown_name_is_one_line_with_the_choices(name, message):
    with pytest.raises(HessbatchError, match=message.replace("(", r"\(")):
        TrainConfig(model=name).resolved()


def test_a_model_from_an_installed_package(plugin, tmp_path):
    assert {"toy-linear", "toy-wrong-output"} <= set(catalog.plugins())
    with pytest.raises(HessbatchError, match="toy-linear, toy-not-a-module, toy-wrong-output, torchvision:<name>"):
        catalog.canonical_name("toy-linea")
    run = train(dict(model="toy-linear", dataset="mnist5k", subset=10, test_subset=5, batch_size=25, max_epochs=2,
                     target_loss=None), Store(tmp_path / "s"), progress=False)
    assert run.config.model == "toy-linear" and run.config.reading == "default"
    assert run.result["n_params"] == 28 * 28 * 10 + 10 if "n_params" in run.result else True
    assert isinstance(run.model()[1], nn.Sequential)
    with pytest.raises(HessbatchError, match=r"gives outputs of shape \(2, 7\) for a batch of 2; hessbatch needs "
                                             r"\(batch, 10\) logits"):
        build_model("toy-wrong-output", (1, 28, 28), 10)
    with pytest.raises(HessbatchError, match="returned str, not a torch module"):
        build_model("toy-not-a-module", (1, 28, 28), 10)


def _cli(*args, cwd, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hessbatch.paper.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_command_line_trains_them_and_refuses_bad_ones(plugin, tmp_path):
    small = ["--dataset", "mnist5k", "--subset", "5", "--test-subset", "5", "--batch-size", "25", "--max-epochs", "1",
             "--no-progress", "--results", "s"]
    ok = _cli("train", "--model", "toy-linear", *small, cwd=tmp_path, pythonpath=plugin)
    assert ok.returncode == 0, ok.stderr
    assert "toy-linear on mnist5k, batch 25" in ok.stdout
    tv = _cli("train", "--model", "torchvision:resnet18", *small, cwd=tmp_path, pythonpath=plugin)
    assert tv.returncode == 0, tv.stderr
    for name, message in [("toy-wrong-output", "gives outputs of shape (2, 7)"),
                          ("torchvision:resnet1", "unknown torchvision classification model 'resnet1'")]:
        bad = _cli("train", "--model", name, *small[:-2], "--results", "t", cwd=tmp_path, pythonpath=plugin)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr
        assert not (tmp_path / "t").exists()


def test_a_plugin_model_in_the_your_model_notebook(plugin, tmp_path):
    """Chapter 10's notebook, re-executed with papermill on a model from an installed package."""
    import json

    out = tmp_path / "out.ipynb"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = {"model": "toy-linear", "batch_sizes": "[25, 50]", "k": "2", "tol": "0.01", "hessian_samples": "20",
              "curvature_samples": "10", "points": "3", "results": str(tmp_path / "r"),
              "train_options": "{subset: 5, test_subset: 5, max_epochs: 2, target_loss: null, lr: 0.05}"}
    cmd = [sys.executable, "-m", "papermill", os.path.join(root, "book", "10-your-model.ipynb"), str(out)]
    for name, value in params.items():
        cmd += ["-p", name, value]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
           "HESSBATCH_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "toy-linear" in text and "fig-layer-spectra" in text
