"""The house rules of docs/architecture.md, checked on the source: which rooms may import which, no private
names across modules, a light ``import steerinterp``, old module paths still importing, declared plug-ins."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import steerinterp as si

PKG = Path(si.__file__).parent
# room -> rooms it may import from (besides itself and the ground floor)
ROOMS = ["steering", "models", "generation", "tasks", "rl", "analysis", "sae", "app"]
FRONT_DOOR = {"steerinterp", "steerinterp.__main__"}  # the package's own __init__ and __main__ re-export the rooms
ALLOWED = {
    "steering": set(),
    "models": {"steering"},
    "generation": {"steering", "models"},
    "tasks": {"steering", "models", "generation"},
    "rl": {"steering", "models", "generation", "tasks"},
    "analysis": {"steering", "models", "generation", "tasks"},
    "sae": {"steering", "models", "generation", "tasks", "analysis"},
    "app": {"steering", "models", "generation", "tasks", "rl", "analysis", "sae"},
}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        parts = rel.with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        yield ".".join(("steerinterp", *parts)), rel, ast.parse(path.read_text())


def _imports(tree):
    """(module, names) of every ``import`` / ``from ... import`` in the file, lazy ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _room(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "steerinterp":
        return None
    return parts[1] if parts[1] in ROOMS else "ground"


def test_rooms_import_only_from_below():
    bad = []
    for name, rel, tree in _modules():
        room = _room(name)
        if name in FRONT_DOOR:
            continue
        for module, _ in _imports(tree):
            target = _room(module)
            if target is None or target == "ground" or target == room:
                continue
            if room == "ground" or target not in ALLOWED[room]:
                bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(bad)


def test_steering_and_models_know_nothing_above():
    for name, rel, tree in _modules():
        if _room(name) in ("steering", "models"):
            for module, _ in _imports(tree):
                assert _room(module) in (None, "ground", "steering", "models"), f"{rel} imports {module}"


def test_no_module_imports_another_modules_private_name():
    bad = []
    for name, rel, tree in _modules():
        for module, names in _imports(tree):
            if module.startswith("steerinterp") and module != name:
                bad += [f"{rel}: from {module} import {n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_no_hasattr_plug_in_checks():
    """Plug-in points are Protocols (isinstance), not duck-typing by attribute probes."""
    offenders = [str(rel) for _, rel, tree in _modules() for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr"]
    assert not offenders, offenders


def test_import_steerinterp_stays_light():
    code = "import sys, steerinterp; print(sorted(m for m in ('plotly', 'pandas', 'sae_lens') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_old_module_paths_are_the_new_modules():
    import importlib

    from steerinterp._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from steerinterp.evaluate import evaluate  # documented in README before the move

    from steerinterp.tasks import evaluate as new_evaluate

    assert evaluate is new_evaluate


def test_documented_public_names():
    from steerinterp import analysis as A  # noqa: F401
    from steerinterp import sae as S  # noqa: F401
    from steerinterp.rl import TrainConfig, Trainer  # noqa: F401
    from steerinterp.tasks import arithmetic_task, evaluate, gsm8k_task, load_task, math_task  # noqa: F401

    for name in si.__all__:
        assert getattr(si, name) is not None


def test_plug_in_points_are_protocols(tiny):
    from steerinterp.generation import Engine, HookedEngine
    from steerinterp.rl import PARAMETRISATIONS, Parametrisation

    vecs = si.SteeringSet.zeros(tiny, [1])
    assert isinstance(vecs, si.Steering)
    assert isinstance(si.AdaptiveSteering.init(tiny, [1]), si.Steering)
    assert not isinstance(object(), si.Steering)
    assert isinstance(HookedEngine(tiny), Engine)
    assert all(isinstance(p, Parametrisation) for p in PARAMETRISATIONS.values())
    with pytest.raises(si.SteerInterpError, match="Engine"):
        si.generate(tiny, ["hi"], engine=object(), max_new_tokens=2)
    with pytest.raises(si.SteerInterpError, match="Steering protocol"):
        si.generate(tiny, ["hi"], steering=object(), max_new_tokens=2)


def test_one_site_table_serves_engines_and_adaptive():
    """The HF module of every mirrored hook comes from steering.sites (adaptive steering included)."""
    from steerinterp.steering.sites import hf_site

    assert hf_site("blocks.3.hook_resid_post").module == "model.layers.3"
    assert hf_site("blocks.3.mlp.hook_post").module == "model.layers.3.mlp.down_proj"
    assert hf_site("blocks.3.attn.hook_z") is None
    # steering objects and engines never spell HF module paths (hf_mirror.py converts weights, not hooks)
    for rel in ("steering/vectors.py", "steering/adaptive.py", "generation/engines.py", "generation/decode.py"):
        assert "model.layers" not in (PKG / rel).read_text(), rel


def test_sae_inference_code_does_not_import_the_trainer():
    for name, rel, tree in _modules():
        if name.startswith("steerinterp.sae.") and name != "steerinterp.sae.train":
            assert all(module != "steerinterp.sae.train" for module, _ in _imports(tree)), rel
