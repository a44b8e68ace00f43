"""Render docs/models.md's support matrix from the per-architecture tests.

    python scripts/support_matrix.py            # runs tests/test_zoo_*.py, rewrites the matrix in docs/models.md
    python scripts/support_matrix.py --junit F  # renders from an existing junit XML instead of running pytest

Each per-architecture test (parametrised over ``steerinterp.models.ZOO``) records two properties with
pytest's ``record_property``: ``capability`` (the column) and ``support`` (``yes``, ``fallback`` or
``refused``). A test that fails or errors shows as FAIL; one that did not run shows as ``-``. The matrix
replaces the text between the two marker lines in docs/models.md, so the rest of the page is hand-written.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
SYMBOL = {"yes": "yes", "fallback": "falls back (hooked)", "refused": "refuses"}


def outcomes(junit: Path) -> dict[tuple[str, str], str]:
    """``{(architecture, capability): cell}`` from a junit XML written by pytest."""
    cells: dict[tuple[str, str], str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        m = re.search(r"\[([^\]]+)\]$", case.get("name", ""))
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if not m or "capability" not in props:
            continue
        arch = max((a for a in _archs() if m.group(1) == a or m.group(1).startswith(a + "-")), key=len, default=None)
        if arch is None:
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        cell = "FAIL" if failed else "-" if skipped else SYMBOL.get(props.get("support", ""), props.get("support", "?"))
        key = (arch, props["capability"])
        # several tests may feed one cell: any failure wins, then a refusal / fallback, then yes
        rank = {"FAIL": 3, "refuses": 2, "falls back (hooked)": 2, "-": 0}
        if key not in cells or rank.get(cell, 1) > rank.get(cells[key], 1):
            cells[key] = cell
    return cells


def _archs() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from steerinterp.models.zoo import ZOO

    return list(ZOO)


def render(cells: dict[tuple[str, str], str]) -> str:
    """One row per capability (loading, RL, engines first, then the analyses), one column per architecture."""
    archs = [a for a in _archs() if any(k[0] == a for k in cells)]
    capabilities: list[str] = []
    for _, cap in cells:
        if cap not in capabilities:
            capabilities.append(cap)
    capabilities.sort(key=lambda c: (c not in FIRST, FIRST.index(c) if c in FIRST else 0))
    lines = ["| | " + " | ".join(archs) + " |", "|---" * (len(archs) + 1) + "|"]
    for cap in capabilities:
        lines.append(f"| {cap} | " + " | ".join(cells.get((a, cap), "-") for a in archs) + " |")
    return "\n".join(lines)


FIRST = ["loads (logits vs HF)", "RL gradients vs HF", "fast engine", "greedy = HF generate"]


def write(table: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} lacks the marker lines {BEGIN} / {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="render from this junit XML instead of running the tests")
    args = parser.parse_args()
    junit = args.junit
    if junit is None:
        junit = Path(tempfile.mkdtemp(prefix="steerinterp-matrix-")) / "zoo.xml"
        tests = sorted(str(p) for p in (ROOT / "tests").glob("test_zoo_*.py"))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                        "-o", "junit_family=xunit1", *tests], cwd=ROOT, check=False)
    table = render(outcomes(junit))
    write(table)
    print(table)


if __name__ == "__main__":
    main()
