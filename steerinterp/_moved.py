"""Module paths from before the package had rooms keep working: ``import steerinterp.evaluate`` gives
``steerinterp.tasks.evaluation`` itself (the same module object, so patching one patches the other).

A meta-path finder answers only for the names in ``MOVED``; the target is imported when the old name is,
never at ``import steerinterp``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "steerinterp.steering_io": "steerinterp.steering.io",
    "steerinterp.positions": "steerinterp.steering.positions",
    "steerinterp.adaptive": "steerinterp.steering.adaptive",
    "steerinterp.gguf_loader": "steerinterp.models.gguf",
    "steerinterp.chat": "steerinterp.models.chat",
    "steerinterp.rollout": "steerinterp.generation.engines",
    "steerinterp.sampling": "steerinterp.generation.sampling",
    "steerinterp.hf_mirror": "steerinterp.generation.hf_mirror",
    "steerinterp.rewards": "steerinterp.tasks.verifiers",
    "steerinterp.evaluate": "steerinterp.tasks.evaluation",
    "steerinterp.demo": "steerinterp.app.demo",
    "steerinterp.run_analysis": "steerinterp.app.pipeline",
    "steerinterp.report": "steerinterp.app.report",
    "steerinterp.figures": "steerinterp.app.figures",
    "steerinterp.cli": "steerinterp.app.cli",
    "steerinterp._cache": "steerinterp._files",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder module; exec_module swaps in the real one

    def exec_module(self, module):
        # the import system returns whatever sits in sys.modules under the name after this call
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])

    def is_package(self, fullname):
        return False

    def get_code(self, fullname):
        """The moved module's code, so that ``python -m steerinterp.cli`` (runpy) runs the new module."""
        spec = importlib.util.find_spec(MOVED[fullname])
        return spec.loader.get_code(spec.name)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())
