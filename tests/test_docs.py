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
