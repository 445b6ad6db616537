"""The book: profiles, clean sources, papermill re-execution, and a full smoke build checked in Chromium."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_mnist_root
from hessbatch import HessbatchError
from hessbatch.book import chapter_parameters, coerce, load_profile

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("*.ipynb"))
FIGURES = {"01-batch-size": 2, "02-landscapes": 2, "03-dynamics": 1, "04-saddle-free": 1,
           "05-adversarial-training": 2, "06-large-batch-robust": 1}


def _parameters_cell(name):
    nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    return nb, "".join(cells[0]["source"])


@pytest.mark.parametrize("name", CHAPTERS)
def test_sources_are_clean_and_parameterized(name):
    nb, params = _parameters_cell(name)
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "commit notebooks without outputs"
    defined = set(re.findall(r"^(\w+)\s*=", params, flags=re.M))
    for profile in ("smoke", "quick", "paper"):
        prof = load_profile(profile)
        missing = set(chapter_parameters(prof, name)) - defined
        assert not missing, f"{profile} sets {missing} which {name}'s parameters cell does not define"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not re.search(r"^\s*(for|while) .*:\n(\s+.*\n){6,}", code, flags=re.M), "logic belongs in the library"


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for c in toc["chapters"]}
    assert {f"book/{c}" for c in CHAPTERS} <= files and (ROOT / "book" / "methods.md").is_file()


def test_profiles_cover_every_chapter():
    for profile in ("smoke", "quick", "paper"):
        assert sorted(load_profile(profile)["chapters"]) == CHAPTERS


def test_papermill_values_are_coerced():
    assert coerce("[32, 4096]") == [32, 4096]
    assert coerce("{lr: 0.1, subset: 5}") == {"lr": 0.1, "subset": 5}
    assert coerce("fashion-mnist") == "fashion-mnist" and coerce(5) == 5
    with pytest.raises(HessbatchError, match="cannot read parameter value"):
        coerce("[1, 2")


def test_unknown_profile(tmp_path):
    with pytest.raises(HessbatchError, match="unknown profile 'huge'"):
        load_profile("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chapters: {99-nope: {}}\n")
    with pytest.raises(HessbatchError, match="no notebook book/99-nope.ipynb"):
        load_profile(str(bad))


def test_papermill_reexecution_with_new_parameters(tmp_path):
    """The README's command: one chapter, another batch-size grid and data set."""
    make_mnist_root(tmp_path / "data", sub="FashionMNIST", n_train=100, n_test=50)
    out = tmp_path / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "book" / "01-batch-size.ipynb"), str(out),
           "-p", "batch_sizes", "[20, 50]", "-p", "dataset", "fashion-mnist", "-p", "data_root", str(tmp_path / "data"),
           "-p", "model", "MLP", "-p", "train_options", "{max_epochs: 2, target_loss: null, lr: 0.05}",
           "-p", "k", "3", "-p", "tol", "0.01", "-p", "hessian_samples", "50", "-p", "curvature_samples", "20",
           "-p", "results", str(tmp_path / "results"), "--cwd", str(tmp_path), "--no-progress-bar"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    nb = json.loads(out.read_text())
    text = json.dumps(nb)
    assert "Fashion-MNIST" in text and "capped" in text
    assert (tmp_path / "figures" / "fig-spectrum-batch.png").is_file()
    assert (tmp_path / "figures" / "fig-spectrum-batch.csv").read_text().startswith("batch_size,split,rank,eigenvalue")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("CI needs Debian's chromium for the book test (apt-get install chromium)")
    pytest.skip("headless Chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    res = subprocess.run([sys.executable, "-m", "hessbatch.cli", "book", "--profile", "smoke", "--out", str(out / "build"),
                          "--results", str(out / "results")], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    index = Path(res.stdout.strip().splitlines()[-1].split("book built: ")[1])
    return index


def test_profile_runs_are_exactly_what_the_book_trains(smoke_book):
    """The Dask stage of `hessbatch book` trains the profile's runs first: they must be the notebooks' runs."""
    from hessbatch.experiments import profile_train_configs
    from hessbatch.store import Store
    from hessbatch.train import TrainConfig

    results = smoke_book.parents[3] / "results"
    prof = load_profile("smoke")
    waves = profile_train_configs({n: chapter_parameters(prof, n) for n in prof["chapters"]})
    store = Store(results)
    planned = {store.key("train", TrainConfig.from_dict(c).resolved().to_dict()) for w in waves for c in w}
    assert planned == {e.key for e in store.entries("train")}


def test_smoke_book_builds(smoke_book):
    html = smoke_book.parent
    assert smoke_book.is_file()
    for name in CHAPTERS:
        assert (html / "book" / f"{name}.html").is_file()
    assert (html / "book" / "figures" / "fig-spectrum-batch.pdf").is_file()


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_renders_in_chromium(smoke_book, name):
    exe = _chromium()
    page = smoke_book.parent / "book" / f"{name}.html"
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "</html>" in dom
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert len(images) >= FIGURES[name], f"{name}: {len(images)} figures"
    for src in images:
        assert (page.parent / src).is_file(), src
    assert dom.count("Cite this figure") >= FIGURES[name]
    for bad in ("Traceback", "output_error", "Error:", "stderr"):
        assert bad not in dom, f"{name} shows {bad!r}"
    assert "✓" in dom or "✗" in dom
