"""The API reference is generated from the code; it must match what scripts/api_reference.py writes now."""

import runpy
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_api_reference_is_current():
    render = runpy.run_path(str(ROOT / "scripts" / "api_reference.py"))["render"]
    assert (ROOT / "docs" / "api.md").read_text() == render(), "run: python scripts/api_reference.py"


def test_docs_link_to_existing_files():
    import re

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_support_matrix_covers_every_zoo_architecture():
    """docs/models.md's matrix is rendered from the zoo tests (scripts/support_matrix.py); an architecture added
    to the zoo must show up there, and no cell may be a failure."""
    from steerinterp.models import ZOO

    text = (ROOT / "docs" / "models.md").read_text()
    matrix = text.split("<!-- support-matrix:begin -->")[1].split("<!-- support-matrix:end -->")[0]
    header = matrix.strip().splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][1:] == list(ZOO)
    assert "FAIL" not in matrix
