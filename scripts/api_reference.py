"""Write docs/api.md, the API reference of steerinterp's public surface, from the code itself.

Every name in the ``__all__`` of the public modules, with its signature and the first paragraph of
its docstring. ``tests/test_docs.py`` fails when docs/api.md is out of date, so the reference
cannot drift from the code:

    python scripts/api_reference.py            # rewrite docs/api.md
    python scripts/api_reference.py --check    # exit 1 if it would change
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

MODULES = {
    "steerinterp": "Models, steering vectors, generation, run directories",
    "steerinterp.steering": "Steering objects, positions, hook sites",
    "steerinterp.models": "Loading models",
    "steerinterp.generation": "Generation engines and decoding",
    "steerinterp.tasks": "Tasks, verifiers and evaluation",
    "steerinterp.tasks.verifiers": "Verifiers (rewards)",
    "steerinterp.rl": "RL training (RLOO) and parametrisations",
    "steerinterp.analysis": "Analyses (one module each)",
    "steerinterp.sae": "DiffSAE and SAE-feature attribution",
    "steerinterp.run_dir": "Run directories",
    "steerinterp.app.pipeline": "Run analyses and the report",
    "steerinterp.app.report": "Self-contained HTML report",
    "steerinterp.app.figures": "Figures",
    "steerinterp.app.examples": "The examples' shared prelude",
}
OUT = Path(__file__).parents[1] / "docs" / "api.md"


def _first_paragraph(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return sig if len(sig) <= 160 else sig[:157] + "...)"


def _names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
                 and (inspect.isfunction(v) or inspect.isclass(v))]
    return sorted(names, key=str.lower)


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the code by `python scripts/api_reference.py` (a test checks it is current). Each entry: "
             "signature and the first paragraph of its docstring; `help(name)` in Python has the rest. Topic guides: "
             "[getting started](getting-started.md), [concepts](concepts.md), [RL](rl.md), [analyses](analysis.md), "
             "[patching](patching.md), [DiffSAE](sae.md), [GPU and torchrun](gpu.md).", ""]
    for mod_name, title in MODULES.items():
        module = importlib.import_module(mod_name)
        lines += [f"## `{mod_name}`: {title}", ""]
        for name in _names(module):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                kind = "class"
            elif callable(obj):
                kind = "function"
            else:
                shown = sorted(obj) if isinstance(obj, dict) else obj  # keys only: values may hold functions
                lines.append(f"* `{name}` (constant): `{shown!r}`")
                continue
            entry = f"* **`{name}{_signature(obj)}`** ({kind})"
            summary = _first_paragraph(obj)
            if summary and not (inspect.isclass(obj) and summary.startswith(name + "(")):
                entry += f": {summary}"
            lines.append(entry)
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date; run python scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
