"""The book: profiles, clean sources, papermill re-execution, and a full smoke build checked in Chromium."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_cifar_root, make_mnist_root
from hessbatch import HessbatchError
from hessbatch.paper.book import build
from hessbatch.paper.compute import compute
from hessbatch.paper.notebook import coerce
from hessbatch.paper.profiles import chapter_parameters, executions, load_profile

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("*.ipynb"))
FIGURES = {"01-batch-size": 3, "02-landscapes": 2, "03-dynamics": 1, "04-saddle-free": 1,
           "05-adversarial-training": 2, "06-large-batch-robust": 1, "07-pga-dynamics": 3, "08-instability": 3,
           "09-lr-scaling": 3, "10-your-model": 2}


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
        for run, chapter, params, _ in executions(load_profile(profile), [name]):
            missing = set(params) - defined
            assert not missing, f"{profile} ({run}) sets {missing} which {name}'s parameters cell does not define"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not re.search(r"^\s*(for|while) .*:\n(\s+.*\n){6,}", code, flags=re.M), "logic belongs in the library"


def _mismatch(name, params_class=None) -> set:
    """Names in one of a chapter's parameters cell and its declared parameters but not the other."""
    import dataclasses

    from hessbatch.paper.chapters.common import RUNTIME
    from hessbatch.paper.registry import chapter

    _, cell = _parameters_cell(name)
    declared = {*RUNTIME, *(f.name for f in dataclasses.fields(params_class or chapter(name).module.Params))}
    return set(re.findall(r"^(\w+)\s*=", cell, flags=re.M)) ^ declared


@pytest.mark.parametrize("name", CHAPTERS)
def test_parameters_cells_match_the_chapters(name):
    """Everything a chapter's compute takes is a papermill parameter of its notebook, and nothing else."""
    import dataclasses

    from hessbatch.paper.registry import chapter

    assert _mismatch(name) == set()
    grown = dataclasses.make_dataclass("Grown", [("new_knob", int, 1)], bases=(chapter(name).module.Params,))
    assert _mismatch(name, grown) == {"new_knob"}, "the check must fail when a chapter gains a parameter"


def test_a_sweep_and_an_override_make_pages_that_carry_the_value(tmp_path):
    from hessbatch.paper.profiles import parse_overrides, selected

    smoke = load_profile("smoke")
    pages = {n: (p, t) for n, _, p, t in executions(smoke, ["01-batch-size"])}
    assert list(pages) == ["01-batch-size", "01-batch-size--attack-fgsm10"]
    assert pages["01-batch-size--attack-fgsm10"][0]["attack"] == "fgsm10"
    assert pages["01-batch-size--attack-fgsm10"][1] == "attack = fgsm10"
    runs = selected(smoke, ["04-saddle-free"], parse_overrides(["n_samples=1", "d=16"]))
    assert [(n, p["n_samples"], p["variant"], t) for n, _, p, t in runs] == [
        ("04-saddle-free--n_samples-1--d-16", 1, "n_samples-1--d-16", "n_samples = 1, d = 16")]
    assert parse_overrides(["batch_sizes=[16, 64]", "attack=fgsm10"]) == {"batch_sizes": [16, 64], "attack": "fgsm10"}
    with pytest.raises(HessbatchError, match="unknown attack 'pgd'"):
        selected(smoke, ["01-batch-size"], {"attack": "pgd"})
    with pytest.raises(HessbatchError, match="curvature_method must be one of auto, power, exact, got 'lanczos'"):
        selected(smoke, ["01-batch-size"], {"curvature_method": "lanczos"})
    with pytest.raises(HessbatchError, match="chapter 04-saddle-free has no parameter 'colour'"):
        selected(smoke, ["04-saddle-free"], {"colour": "red"})
    with pytest.raises(HessbatchError, match="attack fgsm has no option"):
        selected(smoke, ["01-batch-size"], {"attack_options": {"steps": 3}})


def test_the_book_toolchain_is_reached_through_one_helper():
    """A port to Jupyter Book 2 touches notebook.glue only: no chapter imports myst_nb itself."""
    for name in CHAPTERS:
        nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "myst_nb" not in code, name
    assert '"jupyter-book>=1.0,<2"' in (ROOT / "pyproject.toml").read_text()


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for c in toc["chapters"]}
    assert {f"book/{c}" for c in CHAPTERS} <= files and (ROOT / "book" / "methods.md").is_file()


def test_profiles_cover_every_chapter():
    for profile in ("smoke", "quick", "paper"):
        assert sorted(load_profile(profile)["chapters"]) == CHAPTERS


def test_variants_and_committed_results(tmp_path):
    """Variants run the notebook once each; a profile with its own store renders what it holds and a
    placeholder for the rest; `compute` records wall times; an export without weights still renders."""
    smoke = load_profile("smoke")
    ch = {**smoke["chapters"]["04-saddle-free"], "variants": {"A": {"title": "first"}, "B": {"seed": 1}}}
    prof = {"profile": "vartest", "results": str(tmp_path / "full"), "common": smoke["common"],
            "chapters": {"04-saddle-free": ch}}
    path = tmp_path / "vartest.yaml"
    path.write_text(yaml.safe_dump(prof))
    runs = executions(load_profile(str(path)))
    assert [(r[0], r[2]["seed"], r[3]) for r in runs] == [("04-saddle-free", 0, "first"),
                                                          ("04-saddle-free--B", 1, "B")]
    timings = compute(str(path), chapters=["04-saddle-free"])
    assert set(timings) >= {"04-saddle-free", "04-saddle-free--B", "_calls"} and timings["_calls"][0]["seconds"] > 0
    again = compute(str(path), chapters=["04-saddle-free"], device="auto")
    assert len(again["_calls"]) == 2 and again["04-saddle-free"] == timings["04-saddle-free"]
    from hessbatch.store import Store

    for e in Store(tmp_path / "full").entries("saddle"):
        shutil.rmtree(e.path)
    third = compute(str(path), chapters=["04-saddle-free"])
    assert third["04-saddle-free"]["calls"] == 2 and len(third["_calls"]) == 3
    assert third["04-saddle-free"]["seconds"] >= timings["04-saddle-free"]["seconds"]

    Store(tmp_path / "full").export(tmp_path / "tidy")
    assert not list((tmp_path / "tidy").rglob("*.pt")) and (tmp_path / "tidy" / "_timings.yml").is_file()
    seed1 = [e for e in Store(tmp_path / "tidy").entries("train") if e.config["config"]["seed"] == 1]
    shutil.rmtree(seed1[0].path)
    prof["results"] = str(tmp_path / "tidy")
    path.write_text(yaml.safe_dump(prof))
    src = build(str(path), out=str(tmp_path / "build"), html=False)
    assert (src / "book" / "04-saddle-free.ipynb").is_file() and not (src / "book" / "04-saddle-free--B.ipynb").exists()
    assert "has not been computed" in (src / "book" / "04-saddle-free--B.md").read_text()
    nb = json.loads((src / "book" / "04-saddle-free.ipynb").read_text())
    assert any("".join(c["source"]).lstrip().startswith("# ") and "— first" in "".join(c["source"])
               for c in nb["cells"] if c["cell_type"] == "markdown")
    toc = yaml.safe_load((src / "_toc.yml").read_text())
    assert [c["file"] for c in toc["chapters"]][3:5] == ["book/04-saddle-free", "book/04-saddle-free--B"]
    assert "computed by `hessbatch compute`" in (src / "book" / "_provenance.md").read_text()
    assert (src / "book" / "_profile-notes.md").read_text() == ""


def test_optional_variant_runs_only_when_named():
    paper = load_profile("paper")
    names = lambda **kw: [n for n, *_ in executions(paper, **kw)]  # noqa: E731
    assert "01-batch-size--ResNet18" in names() and "01-batch-size--ResNet18" not in names(optional=False)
    assert names(chapters=["01-batch-size"], optional=False) == [
        "01-batch-size", "01-batch-size--attack-fgsm10", "01-batch-size--M1", "01-batch-size--M1--attack-fgsm10",
        "01-batch-size--C2", "01-batch-size--C2--attack-fgsm10", "01-batch-size--M1-cpu",
        "01-batch-size--M1-cpu--attack-fgsm10", "01-batch-size--C1-cpu", "01-batch-size--C1-cpu--attack-fgsm10",
        "01-batch-size--C2-cpu", "01-batch-size--C2-cpu--attack-fgsm10", "01-batch-size--M1-15ep", "01-batch-size--M1-15ep--attack-fgsm10"]
    assert names(chapters=["01-batch-size--ResNet18"], optional=False) == ["01-batch-size--ResNet18"]
    assert names(chapters=["01-batch-size--C1", "02-landscapes"], optional=False) == [
        "01-batch-size", "02-landscapes", "02-landscapes--C1", "02-landscapes--C1-cpu", "02-landscapes--M1-15ep"]
    assert names(chapters=["01-batch-size--C1"], overrides={"k": 5}) == ["01-batch-size--attack-fgsm--k-5"]
    with pytest.raises(HessbatchError, match="no chapter.*01-batch-size--nope; it has 01-batch-size, .*--C1"):
        compute("paper", chapters=["01-batch-size--nope"])


def test_table2_on_generated_cifar100(tmp_path, no_md5):
    """Table 2 (ResNet-18, CIFAR-100) end to end on a generated CIFAR-100, computed only when named,
    its table beside the published one."""
    from hessbatch.paper import published
    from hessbatch.paper.presentation import published_comparison
    from hessbatch.paper.registry import run_chapter
    from hessbatch.store import Store

    paper = load_profile("paper")["chapters"]["01-batch-size"]["variants"]["ResNet18"]
    assert paper["optional"] and (paper["model"], paper["dataset"]) == ("resnet18", "cifar100")
    make_cifar_root(tmp_path / "data", 100, n_per_file=8)
    variant = {**paper, "batch_sizes": [16], "train_options": {"max_epochs": 1, "target_loss": None}}
    prof = {"profile": "t2", "results": str(tmp_path / "res"), "common": {"seed": 0},
            "chapters": {"01-batch-size": {"k": 1, "tol": 0.1, "eps": [0.02], "hessian_samples": 2,
                                           "curvature_samples": 2, "variants": {"ResNet18": variant}}}}
    path = tmp_path / "t2.yaml"
    path.write_text(yaml.safe_dump(prof))
    assert compute(str(path), data_root=str(tmp_path / "data"))["_calls"][0]["chapters"] == []
    assert not (tmp_path / "res" / "train").exists()
    compute(str(path), data_root=str(tmp_path / "data"), chapters=["01-batch-size"])
    store = Store(tmp_path / "res")
    assert [e.config["config"]["model"] for e in store.entries("train")] == ["CR"]
    res = run_chapter("01-batch-size", chapter_parameters(load_profile(str(path)), "01-batch-size", "ResNet18"),
                      store, data_root=str(tmp_path / "data"))
    assert list(res["table"]["batch_size"]) == [16] and (res["table"]["lambda_theta_train"] > 0).all()
    name, pub = published.batch_size_table("resnet18")
    assert name == "table2" and list(published_comparison(res["table"], pub).columns)[:3] == [
        "quantity", "B=64 paper", "B=128 paper"]


def test_download_fetches_missing_data_before_compute(tmp_path, mnist_download):
    from hessbatch.paper.compute import fetch_data

    calls = mnist_download
    smoke = load_profile("smoke")
    chapters = {"04-saddle-free": {**smoke["chapters"]["04-saddle-free"], "dataset": "mnist"},
                "07-pga-dynamics": smoke["chapters"]["07-pga-dynamics"]}
    runs = executions({"profile": "dl", "common": smoke["common"], "chapters": chapters})
    assert fetch_data(runs, tmp_path) == ["mnist"] and calls
    n = len(calls)
    assert fetch_data(runs, tmp_path) == [] and len(calls) == n


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
    bad.write_text("notes: nowhere.md\nchapters: {04-saddle-free: {}}\n")
    with pytest.raises(HessbatchError, match="notes must name a file in book/, got 'nowhere.md'"):
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
    # the introduction's gathering of claim checks reads this page's own verdicts back
    from hessbatch.paper.intro import claims_summary

    shutil.copy2(ROOT / "book" / "01-batch-size.ipynb", tmp_path / "source.ipynb")
    summary = claims_summary(tmp_path, ["out", "absent", "source"])
    assert "| [source](source) | not executed by this build |" in summary
    shown = re.search(r"\| \[out\]\(out\) \| (\d+) \| (\d+) \| (\d+) \|", summary)
    table = "".join("".join(o["data"]["text/html"]) for c in nb["cells"] if c["cell_type"] == "code"
                    for o in c.get("outputs", []) if "text/html" in o.get("data", {}) and "holds" in "".join(o["data"]["text/html"]))
    cells = re.findall(r">(✓|✗|—)</td>", table)
    assert shown and [int(n) for n in shown.groups()] == [cells.count(m) for m in "✓✗—"] and int(shown[3]) >= 1
    assert "| [absent](absent) | not computed |" in summary, summary


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
    res = subprocess.run([sys.executable, "-m", "hessbatch.paper.cli", "book", "--profile", "smoke", "--out", str(out / "build"),
                          "--results", str(out / "results")], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    (out / "build.stderr").write_text(res.stderr)
    index = Path(res.stdout.strip().splitlines()[-1].split("book built: ")[1])
    return index


def test_the_build_prints_nothing_of_the_kernels_or_libraries(smoke_book):
    """The kernels' own log lines (ipykernel's "KeyboardInterrupt caught in kernel", say) go to the
    build's kernels.log; a user's terminal shows only hessbatch's progress."""
    out = smoke_book.parents[3]
    assert (out / "build.stderr").read_text().strip() == ""
    assert (out / "build" / "kernels.log").is_file()


def test_profile_runs_are_exactly_what_the_book_trains(smoke_book):
    """The Dask stage of `hessbatch book` trains the profile's runs first: they must be the notebooks' runs."""
    from hessbatch.paper.registry import profile_train_configs
    from hessbatch.store import Store
    from hessbatch.config import TrainConfig

    results = smoke_book.parents[3] / "results"
    prof = load_profile("smoke")
    waves = profile_train_configs({n: chapter_parameters(prof, n) for n in prof["chapters"]})
    store = Store(results)
    planned = {store.key("train", TrainConfig.from_dict(c).resolved().to_dict()) for w in waves for c in w}
    assert planned == {e.key for e in store.entries("train")}


def test_smoke_book_has_the_attack_sweep_and_takes_an_override(smoke_book):
    """The profile's sweep gives chapter 1 a page per attack, with the FGSM-10 comparison; `--set`
    computes one chapter with a changed parameter, its page title and figure caption carrying it."""
    html = smoke_book.parent / "book"
    page = (html / "01-batch-size--attack-fgsm10.html").read_text()
    assert "attack = fgsm10" in page and "no difference from FGSM" in page
    assert "fig-spectrum-batch--attack-fgsm10" in page and "page <code" in page
    out = smoke_book.parents[3]
    res = subprocess.run([sys.executable, "-m", "hessbatch.paper.cli", "book", "--profile", "smoke", "--chapters",
                          "04-saddle-free", "--set", "n_samples=1", "--out", str(out / "build"), "--results",
                          str(out / "results"), "--no-progress"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    page = (html / "04-saddle-free--n_samples-1.html").read_text()
    assert "n_samples = 1" in page and "fig-input-hessian--n_samples-1" in page
    assert (html / "04-saddle-free.html").is_file()


def test_smoke_book_builds(smoke_book):
    html = smoke_book.parent
    assert smoke_book.is_file()
    for name in CHAPTERS:
        assert (html / "book" / f"{name}.html").is_file()
    assert (html / "book" / "figures" / "fig-spectrum-batch.pdf").is_file()
    import pandas as pd

    groups = pd.read_csv(html / "book" / "figures" / "fig-instability.csv")
    mitigated = groups["group"].str.contains(r"\+")
    assert mitigated.any() and groups.loc[mitigated, "churn_change"].notna().all()
    assert (groups["churn_lo"] <= groups["churn"]).all() and (groups["churn"] <= groups["churn_hi"]).all()
    change = groups.loc[mitigated]
    assert ((change["churn_change_lo"] <= change["churn_change"]) & (change["churn_change"] <= change["churn_change_hi"])).all()
    plain = groups.loc[~mitigated].sort_values("batch_size")["group"]
    page = (html / "book" / "08-instability.html").read_text()
    assert f"churn of {plain.iloc[-1]} minus churn of {plain.iloc[0]} (95% interval over runs and samples)" in page


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
    source = (smoke_book.parent / "_sources" / "book" / f"{name}.ipynb").read_text()
    for local in (str(ROOT), str(smoke_book.parents[3]), str(Path.home())):
        assert local not in page.read_text() and local not in source, f"{name} shows the local path {local}"
    assert _too_wide(exe, page) == "none"


WIDTH_PROBE = """<script>
window.addEventListener('load', function () {
  var col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  var limit = col.getBoundingClientRect().right + 1;
  function scrolls(e) {
    for (var a = e.parentElement; a && a !== col; a = a.parentElement) {
      var o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll') return a.getBoundingClientRect().right <= limit;
      if (o === 'hidden' || o === 'clip') return false;
    }
    return false;
  }
  var bad = [];
  col.querySelectorAll('*').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > limit && !scrolls(e)) bad.push(e.tagName + ':' + Math.round(r.right - limit) + 'px');
  });
  document.body.setAttribute('data-too-wide', bad.slice(0, 10).join(' ') || 'none');
});
</script>"""


def _too_wide(exe, page: Path) -> str:
    """At a 1280-pixel viewport: the elements wider than the content column that do not scroll
    inside a box of their own (a cut-off table, say), or ``none``."""
    probe = page.with_name(f".width-{page.name}")
    probe.write_text(page.read_text().replace("</body>", WIDTH_PROBE + "</body>"))
    try:
        dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                              "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        probe.unlink()
    return re.search(r'data-too-wide="([^"]*)"', dom).group(1)


def test_paper_profile_renders_from_committed_results(tmp_path, monkeypatch):
    """No GPU, no data: what paper-results/ holds executes from the store, the rest is a placeholder."""
    monkeypatch.setenv("HESSBATCH_DATA", str(tmp_path / "no-data"))
    src = build("paper", out=str(tmp_path / "build"), html=False)
    executed = sorted(p.stem for p in (src / "book").glob("*.ipynb"))
    placeholders = sorted(p.stem for p in (src / "book").glob("[0-9][0-9]-*.md"))
    assert {"01-batch-size--M1-15ep", "02-landscapes--M1-15ep", "03-dynamics", "04-saddle-free",
            "05-adversarial-training", "07-pga-dynamics", "08-instability"} <= set(executed)
    assert not set(executed) & set(placeholders)
    assert len(executed) + len(placeholders) == len(executions(load_profile("paper")))
    assert "PLAN=c1-table1 bash scripts/gpu/plan.sh" in (src / "book" / "01-batch-size.md").read_text()
    # C1 at the protocol (CPU): executed once two batch sizes are committed, naming the plan of the rest
    c1 = src / "book" / "01-batch-size--C1-cpu"
    assert ("scripts/cpu/protocol.sh c1-table1-cpu" in c1.with_suffix(".md").read_text() if c1.with_suffix(".md").exists()
            else "c1-table1-cpu` on " in c1.with_suffix(".ipynb").read_text())
    table4 = (src / "book" / "05-adversarial-training--C3-cpu.md").read_text()
    assert "scripts/cpu/protocol.sh c3-table4-cpu" in table4 and "| B | run | state |" not in table4
    nb = json.loads((src / "book" / "01-batch-size--M1-15ep.ipynb").read_text())
    text = json.dumps(nb["cells"])
    assert "MNIST; used: 60,000 train / 10,000 test" in text and "device* cuda" in text
    assert "Not at the stopping rule" in text  # the 15-epoch runs are flagged
    # Table 7 at the protocol (CPU): every batch size trained to loss 0.001, none flagged
    cells = json.loads((src / "book" / "01-batch-size--M1-cpu.ipynb").read_text())["cells"]
    t7 = json.dumps(cells)
    assert "device* cpu" in t7 and "Not at the stopping rule" not in t7
    table = "".join("".join(o["data"]["text/html"]) for c in cells if c["cell_type"] == "code"
                    for o in c.get("outputs", []) if "text/html" in o.get("data", {}))
    assert table.count("converged") == 6 and "capped" not in table
    ch8 = json.dumps(json.loads((src / "book" / "08-instability.ipynb").read_text())["cells"])
    assert "0.0205" in ch8 and "B=2048 \\u2212 B=128" in ch8
    assert "## The paper profile: what differs" in (src / "book" / "_profile-notes.md").read_text()
    # the introduction gathers every page's claim checks: Table 7 at the protocol holds throughout,
    # Fig. 4's "λ_max still grows after the first saved epoch" does not, Table 4 on the CPU is not computed
    gathered = (src / "book" / "_claims.md").read_text()
    assert re.search(r"\| \[01-batch-size--M1-cpu\]\(01-batch-size--M1-cpu\) \| [1-9]\d* \| 0 \| 0 \|", gathered)
    assert re.search(r"- \[03-dynamics\]\(03-dynamics\): .*first saved epoch.*does \*\*not\*\* hold", gathered)
    assert "| [05-adversarial-training--C3-cpu](05-adversarial-training--C3-cpu) | not computed |" in gathered


def test_compute_isolates_a_failing_chapter(tmp_path, monkeypatch):
    """One chapter that raises does not stop the others: their timings are kept, the call then fails."""
    import hessbatch.paper.compute as compute_mod
    import hessbatch.paper.registry as registry

    def fake(chapter, params, store=None, device="cpu", data_root=None, progress=False, part=(0, 1)):
        if chapter.startswith("07"):
            raise RuntimeError("boom")
        return {}

    monkeypatch.setattr(registry, "run_chapter", fake)
    monkeypatch.setattr(compute_mod, "train_profile", lambda *a, **k: (0.0, []))
    with pytest.raises(HessbatchError, match="1 failure.*07-pga-dynamics: RuntimeError: boom"):
        compute("smoke", results=str(tmp_path), chapters=["04-saddle-free", "07-pga-dynamics"])
    timings = yaml.safe_load((tmp_path / "_timings.yml").read_text())
    assert "04-saddle-free" in timings and "07-pga-dynamics" not in timings
    assert timings["_calls"][-1]["failed"] == ["chapter 07-pga-dynamics: RuntimeError: boom"]


def test_compute_records_an_interrupted_call(tmp_path, monkeypatch):
    """Ctrl-C during training: the call's wall time is recorded (all of it training), marked interrupted."""
    import hessbatch.paper.compute as compute_mod
    from hessbatch.paper.intro import computed_summary

    def slow(*a, **k):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(compute_mod, "train_profile", slow)
    with pytest.raises(KeyboardInterrupt):
        compute("smoke", results=str(tmp_path), chapters=["04-saddle-free"])
    call = yaml.safe_load((tmp_path / "_timings.yml").read_text())["_calls"][-1]
    assert call["interrupted"] and call["seconds"] >= 0.3 and call["train_seconds"] >= 0.3
    assert "1 call(s) (1 interrupted)" in "\n".join(computed_summary({"_calls": [call]}))


def test_compute_records_a_call_stopped_by_sigterm(tmp_path):
    """What `timeout` does: SIGTERM still kills the call, after its wall time is recorded."""
    script = ("import time, hessbatch.paper.compute as b\n"
              "b.train_profile = lambda *a, **k: (time.sleep(60), (0.0, []))[1]\n"
              f"b.compute('smoke', results={str(tmp_path)!r}, chapters=['04-saddle-free'])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(LIB)})
    record = tmp_path / "_timings.yml"
    for _ in range(600):
        if record.is_file():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    call = yaml.safe_load(record.read_text())["_calls"][-1]
    assert call["interrupted"] and call["train_seconds"] == call["seconds"] >= 0.5


def test_build_timings_of_older_builds_are_read(tmp_path):
    from hessbatch.paper.book import build_timings as _build_timings

    record = tmp_path / "_timings.yml"
    record.write_text("01-batch-size: 9.2\n08-instability:\n  device: cpu\n  seconds: 15.4\nodd: [1, 2]\n")
    assert _build_timings(record) == {"01-batch-size": {"seconds": 9.2, "device": "unknown"},
                                      "08-instability": {"device": "cpu", "seconds": 15.4}}
    record.write_text("- not a mapping\n")
    assert _build_timings(record) == {} and _build_timings(tmp_path / "absent.yml") == {}


def test_chapters_computed_at_once_split_the_graph_memory(tmp_path, monkeypatch):
    import hessbatch.paper.registry as registry
    from hessbatch.hessian import graph_memory_share
    from hessbatch.paper.compute import compute_one as _compute_one

    seen = []
    monkeypatch.setattr(registry, "run_chapter", lambda *a, **kw: seen.append(graph_memory_share()))
    monkeypatch.setenv("HESSBATCH_GRAPH_MEMORY", "0.6")
    assert _compute_one("a", "04-saddle-free", {}, str(tmp_path), "cpu", None)[2] is None
    assert _compute_one("b", "04-saddle-free", {}, str(tmp_path), "cpu", None, processes=3)[2] is None
    assert seen == [0.6, pytest.approx(0.2)]


def test_the_width_probe_finds_a_cut_off_table(tmp_path):
    exe = _chromium()
    table = "<table><tr>" + "<td>0.123456</td>" * 200 + "</tr></table>"
    page = tmp_path / "p.html"
    for wrapper, expected in (('<div style="overflow-x: hidden">{}</div>', "TABLE"), ("<div>{}</div>", "TABLE"),
                              ('<div style="overflow-x: auto">{}</div>', "none")):
        page.write_text('<html><body><article class="bd-article" style="width: 600px">'
                        + wrapper.format(table) + "</article></body></html>")
        assert _too_wide(exe, page).startswith(expected)


def test_the_follower_reports_runs_steps_and_time_left(tmp_path):
    import io

    from hessbatch.paper.following import Follower
    from hessbatch.store import Store

    store = Store(tmp_path / "s")
    with store.writer("train", {"a": 1}) as tmp:
        (tmp / "x").write_text("1")
    keys = [store.key("train", {"a": 1}), store.key("train", {"a": 2})]
    events = tmp_path / "events"
    events.write_text(json.dumps({"desc": "MLP/mnist5k B=10", "n": 3, "total": 15, "unit": "epoch",
                                  "postfix": "loss=0.25", "done": False}) + "\n"
                      + json.dumps({"desc": "curvature", "n": 1, "total": 3, "unit": "run", "postfix": "",
                                    "done": True}) + "\n")
    out = io.StringIO()
    f = Follower("[1/2] 01-batch-size", events, store, keys, expected=600, stream=out)
    assert f._read() == [("curvature", "run")]
    line = f.status()
    assert line.startswith("[1/2] 01-batch-size: runs 1/2 · MLP/mnist5k B=10 3/15 epoch (loss=0.25) · 0.0 min")
    assert "~10.0 min left (as last built)" in line
    cold = Follower("p", events, store, keys)
    cold._read()
    assert "min of training left" in cold.status()  # the run in progress counts by its epochs: 3/15
    f.every = 0.05
    f.start()
    time.sleep(0.3)
    f.stop()
    assert out.getvalue().splitlines()[0].startswith("[1/2] 01-batch-size: runs 1/2")


def test_auto_computes_in_processes_on_a_cpu_of_several_cores(monkeypatch):
    from hessbatch.paper.book import choose_executor

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert choose_executor("auto", None, "cpu") == ("processes", 2)
    assert choose_executor("auto", 1, "cpu") == ("local", 1)
    assert choose_executor("local", None, "cpu") == ("local", None)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert choose_executor("auto", None, "cpu") == ("local", None)


def test_the_api_page_names_only_what_exists():
    import importlib
    import re

    text = (ROOT / "book" / "api.md").read_text()
    names = re.findall(r"^\.\. auto(?:function|class):: (\S+)", text, flags=re.M)
    assert len(names) >= 25
    for name in names:
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), name
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert {"book/guide", "book/cli-reference", "book/api", "book/benchmarks"} <= {e["file"] for e in toc["chapters"]}
