"""Training checkpoints: plain data and safetensors, a digest over both, and always one complete on disk.

Nothing is unpickled: a checkpoint is ``state.json`` (the state as JSON, with every tensor replaced by a
reference) plus ``tensors.safetensors`` (the tensors), and ``manifest.json`` with the SHA-256 of both,
checked on load. Numbers survive exactly (JSON floats are written with ``repr``), tuples stay tuples and
integer dictionary keys stay integers, so optimizer, scheduler, RNG and sampler states round-trip.

Layout, in the checkpoint directory (``RunDir.checkpoint_dir``)::

    step-000012/   the newest: state.json, tensors.safetensors, manifest.json (written last)
    step-000011/   the one before (kept as a fallback)
    current.json   which step directory is current (replaced atomically, after the new one is complete)

A kill at any moment leaves a complete checkpoint: the new step directory only counts once ``current.json``
points to it, and the previous one is deleted only after that. If ``current.json`` or its directory is
damaged, loading falls back to the newest complete step directory, with a warning. Temporary directories
left by a killed writer are removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from steerinterp._files import atomic_write_text, give_plain_modes
from steerinterp.errors import SteerInterpError

FORMAT = "steerinterp.checkpoint/2"
POINTER = "current.json"
STATE = "state.json"
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"
KEEP = 2  # the current checkpoint and the one before it
_LEGACY = "state.pt"  # steerinterp 0.1 wrote pickles; they are never loaded


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- plain data <-> JSON + tensors ----------------------------------------------------------------------
def encode(obj, tensors: dict[str, torch.Tensor]):
    """``obj`` as JSON-ready data; tensors and arrays go into ``tensors`` under generated keys."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return encode(obj.item(), tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise SteerInterpError(f"cannot checkpoint a {type(obj).__name__}: checkpoints hold plain data and tensors only")


def decode(obj, tensors: dict[str, torch.Tensor]):
    """The inverse of ``encode``."""
    if isinstance(obj, list):
        return [decode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(decode(x, tensors) for x in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["__items__"]}
        return {k: decode(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def _sha256(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


# ---- saving ------------------------------------------------------------------------------------------------
def save_checkpoint(directory, state: dict) -> Path:
    """Write ``state`` as the new current checkpoint in ``directory``; returns its step directory."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory)
    tensors: dict[str, torch.Tensor] = {}
    data = json.dumps(encode(state, tensors)).encode()
    blob = save(tensors, metadata={"format": FORMAT})
    name = f"step-{int(state.get('step', 0)):06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=directory))
    try:
        for file, content in ((STATE, data), (TENSORS, blob)):
            with open(tmp / file, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        manifest = {"format": FORMAT, "step": state.get("step"), "sha256": _sha256(data, blob)}
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        give_plain_modes(tmp)  # mkdtemp's folder is owner-only
        target = directory / name
        if target.exists():  # the same step written before (a run resumed from an earlier checkpoint)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / POINTER, json.dumps({"current": name}))
    for old in _step_dirs(directory)[:-KEEP]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _step_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("step-*") if p.is_dir())


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary entries of writers that were killed (one writer per run: the run directory is locked)."""
    for p in directory.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in directory.glob(f".{POINTER}.*"):  # a killed atomic_write_text of the pointer
        p.unlink(missing_ok=True)


# ---- loading -----------------------------------------------------------------------------------------------
def _read_step(step_dir: Path) -> dict:
    from safetensors.torch import load

    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())
        data = (step_dir / STATE).read_bytes()
        blob = (step_dir / TENSORS).read_bytes()
    except (OSError, ValueError) as e:
        raise SteerInterpError(f"checkpoint {step_dir} is incomplete ({e})") from e
    if manifest.get("format") != FORMAT:
        raise SteerInterpError(f"checkpoint {step_dir} has format {manifest.get('format')!r}, not {FORMAT!r}")
    if manifest.get("sha256") != _sha256(data, blob):
        raise SteerInterpError(f"checkpoint {step_dir} was altered or damaged (checksum mismatch)")
    try:
        return decode(json.loads(data), load(blob))
    except (ValueError, KeyError, TypeError) as e:
        raise SteerInterpError(f"checkpoint {step_dir} is unreadable ({e})") from e


def load_checkpoint(directory) -> dict | None:
    """The current checkpoint's state, None when ``directory`` holds none.

    A damaged current checkpoint falls back to the newest complete one (with a warning); when none is
    readable, a one-line error (never a silent fresh start)."""
    directory = Path(directory)
    if (directory / _LEGACY).is_file():
        raise SteerInterpError(f"{directory / _LEGACY} is a pickle written by steerinterp 0.1; pickles are never "
                               "loaded (they can run code). Start the run over, or finish it with steerinterp 0.1")
    steps = _step_dirs(directory) if directory.is_dir() else []
    if not steps:
        return None
    current = None
    try:
        current = directory / json.loads((directory / POINTER).read_text())["current"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    candidates = ([current] if current is not None and current in steps else []) + \
        [s for s in reversed(steps) if s != current]
    problems = []
    for step_dir in candidates:
        try:
            state = _read_step(step_dir)
        except SteerInterpError as e:
            problems.append(str(e))
            continue
        if problems or step_dir != current:
            warnings.warn(f"resuming from {step_dir.name}: " + ("; ".join(problems) or "no valid current.json"),
                          stacklevel=2)
        return state
    raise SteerInterpError(f"no readable checkpoint in {directory}: {problems[0]}; delete it to start over")
