"""The steering file format: safetensors for the tensors, JSON metadata in the header, a SHA-256 digest.

This module knows bytes and records, not steering classes (``vectors.py`` builds ``SteeringSet`` s from
what ``read_vectors`` returns), so the dependency runs one way: vectors -> io.

A path ending in ``.safetensors`` is that one file; any other path is a directory that gets
``vectors.safetensors`` plus a readable ``metadata.json`` copy. The digest covers the tensor bytes, so a
truncated or altered file is refused instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from steerinterp._files import atomic_write_bytes
from steerinterp.errors import SteeringFileError

FORMAT = "steerinterp.steering/1"
FILE_NAME = "vectors.safetensors"


def library_version() -> str:
    from steerinterp import __version__

    return __version__


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def vector_file(path) -> Path:
    """The safetensors file a save path stands for (the path itself, or ``path/vectors.safetensors``)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / FILE_NAME


def write_vectors(path, tensors: dict[str, torch.Tensor], entries: list[dict], *, info: Mapping,
                  model: Mapping) -> Path:
    """Write ``tensors`` with a header listing ``entries`` (one per vector), ``info`` and ``model``."""
    from safetensors.torch import save

    path = Path(path)
    meta = {
        "format": FORMAT,
        "library_version": library_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vectors": entries,
        "info": dict(info),
        "model": dict(model),
        "sha256": tensor_digest(tensors),
    }
    blob = save(tensors, metadata={"steerinterp": json.dumps(meta)})
    target = vector_file(path)
    atomic_write_bytes(target, blob)
    if target != path:
        atomic_write_bytes(path / "metadata.json", json.dumps(meta, indent=2).encode())
    return target


def read_vectors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a saved file, after checking its format and digest."""
    from safetensors import safe_open

    target = vector_file(path)
    if not target.is_file():
        raise SteeringFileError(f"no steering file at {target}; pass the path given to SteeringSet.save")
    try:
        with safe_open(str(target), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise SteeringFileError(f"{target} is damaged or truncated ({e}); re-save the vectors") from e
    try:
        meta = json.loads(header["steerinterp"])
    except (KeyError, ValueError) as e:
        raise SteeringFileError(f"{target} has no steerinterp metadata; it was not written by SteeringSet.save") from e
    if meta.get("format") != FORMAT:
        raise SteeringFileError(f"{target} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
    if tensor_digest(tensors) != meta.get("sha256"):
        raise SteeringFileError(f"{target} was altered after saving (checksum mismatch); re-save the vectors")
    return tensors, meta


def read_metadata(path) -> dict:
    """The JSON metadata of a saved set, without loading it into a model."""
    return read_vectors(path)[1]
