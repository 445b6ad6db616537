"""The project is citable: CITATION.cff validates against the Citation File Format 1.2.0 schema
(vendored in tests/data, CC-BY-4.0, from the citation-file-format project via cffconvert), and
CITATION.cff, .zenodo.json, pyproject.toml and the package agree on the version."""

import json
import re
from pathlib import Path

import pytest
import yaml

import hessbatch

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cff_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "tests" / "data" / "citation-file-format-1.2.0.schema.json").read_text())
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    jsonschema.validate(json.loads(json.dumps(cff, default=str)), schema)
    assert cff["preferred-citation"]["title"].startswith("Hessian-based Analysis of Large Batch Training")
    broken = dict(cff, authors=[{"nickname": ""}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(json.dumps(broken, default=str)), schema)


def test_the_version_is_the_same_everywhere():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    zenodo = json.loads((ROOT / ".zenodo.json").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "hessbatch.__version__"}' in pyproject
    assert cff["version"] == zenodo["version"] == hessbatch.__version__
    release = re.search(r"^## \[(\d[^]]*)\] - (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert release.groups() == (hessbatch.__version__, str(cff["date-released"])) == (zenodo["version"],
                                                                                   zenodo["publication_date"])
    assert zenodo["license"] == cff["license"] == "MIT"


def test_the_publishing_workflow_builds_with_the_readmes_command():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    build = next(s for s in steps if s.get("name") == "Build the book")
    assert build["run"] == "make book PROFILE=paper" and build["run"] in (ROOT / "README.md").read_text()
    upload = next(s for s in steps if "upload-pages-artifact" in s.get("uses", ""))
    assert upload["with"]["path"] == "_build/paper/_build/html"
    assert "deploy-pages" in json.dumps(workflow["jobs"]["deploy"])
