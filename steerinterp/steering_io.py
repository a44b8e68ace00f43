"""Saving and loading steering sets: safetensors for the tensors, JSON metadata in the header.

``save(path)`` with a ``.safetensors`` path writes that one file; any other path is a directory that
gets ``vectors.safetensors`` plus a readable ``metadata.json`` copy. The header metadata carries a
SHA-256 of the tensor bytes, so a truncated or altered file is refused instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from steerinterp._cache import atomic_write_bytes
from steerinterp.errors import SteeringFileError
from steerinterp.positions import Positions
from steerinterp.steering import SteeringSet, SteeringVector, check_finite

FORMAT = "steerinterp.steering/1"
FILE_NAME = "vectors.safetensors"


def _version() -> str:
    from steerinterp import __version__

    return __version__


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_for(path: Path) -> Path:
    return path if path.suffix == ".safetensors" else path / FILE_NAME


def save_steering(vecs: SteeringSet, path, *, model=None, info: Mapping | None = None) -> Path:
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, v in enumerate(vecs.vectors):
        check_finite(v.hook_name, v.vector)
        tensors[f"vector.{i}"] = v.vector.detach().to("cpu", torch.float32).contiguous()
        pos = v.positions.to_dict()
        if v.positions.mask is not None:
            tensors[f"positions_mask.{i}"] = v.positions.mask.to(torch.uint8).contiguous()
        entries.append({"hook_name": v.hook_name, "scale": v.scale, "positions": pos, "trainable": v.trainable})
    meta = {
        "format": FORMAT,
        "library_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vectors": entries,
        "info": {**vecs.info, **(info or {})},
        "sha256": _digest(tensors),
    }
    if model is not None:
        meta["model"] = {
            "name": getattr(model.cfg, "model_name", None),
            "source": getattr(model, "_steerinterp_source", None),
            "processed": getattr(model, "_steerinterp_processed", None),
            "d_model": model.cfg.d_model,
            "n_layers": model.cfg.n_layers,
        }
    else:
        d = {t.shape[0] for k, t in tensors.items() if k.startswith("vector.")}
        meta["model"] = {"d_model": d.pop() if len(d) == 1 else None}
    blob = save(tensors, metadata={"steerinterp": json.dumps(meta)})
    target = _file_for(path)
    atomic_write_bytes(target, blob)
    if target != path:
        atomic_write_bytes(path / "metadata.json", json.dumps(meta, indent=2).encode())
    return target


def read_metadata(path) -> dict:
    """The JSON metadata of a saved set, without loading tensors into a model."""
    return _read(Path(path))[1]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    target = _file_for(path)
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
    if _digest(tensors) != meta.get("sha256"):
        raise SteeringFileError(f"{target} was altered after saving (checksum mismatch); re-save the vectors")
    return tensors, meta


def load_steering(path, model=None, trainable: bool = False) -> SteeringSet:
    tensors, meta = _read(Path(path))
    vecs = []
    for i, e in enumerate(meta["vectors"]):
        if f"vector.{i}" not in tensors:
            raise SteeringFileError(f"{path} lists {len(meta['vectors'])} vectors but vector {i} is missing")
        t = tensors[f"vector.{i}"]
        check_finite(e["hook_name"], t)
        p = e.get("positions") or {"kind": "all"}
        if p["kind"] == "mask":
            positions = Positions.from_mask(tensors[f"positions_mask.{i}"].bool())
        else:
            positions = Positions(p["kind"], start=p.get("start"), stop=p.get("stop"))
        if model is not None:
            if e["hook_name"] not in model.hook_dict:
                raise SteeringFileError(
                    f"{path}: the model has no hook {e['hook_name']!r} (saved for a model with "
                    f"{meta.get('model', {}).get('n_layers')} layers; this one has {model.cfg.n_layers})"
                )
            if t.shape[0] != model.cfg.d_model:
                raise SteeringFileError(
                    f"{path}: vectors have d_model {t.shape[0]} but the model has {model.cfg.d_model}; "
                    "they were trained for another model (see steerinterp.analysis.transfer to map them)"
                )
            t = t.to(next(model.parameters()).device)
        vec = nn.Parameter(t.clone(), requires_grad=True) if trainable else t
        vecs.append(SteeringVector(vec, e["hook_name"], float(e["scale"]), positions))
    return SteeringSet(vecs, info=meta.get("info"))
