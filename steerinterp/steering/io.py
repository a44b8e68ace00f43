"""The steering file format: safetensors for the tensors, JSON metadata in the header, a SHA-256 digest.

This module knows bytes and records, not steering classes (``vectors.py`` builds ``SteeringSet`` s from
what ``read_vectors`` returns), so the dependency runs one way: vectors -> io.

A path ending in ``.safetensors`` is that one file; any other path is a directory that gets
``vectors.safetensors`` plus a readable ``metadata.json`` copy.

Format ``steerinterp.steering/2`` (written now): the digest covers the tensors *and* the header (the
vector entries with their hooks, scales and positions, ``info`` and the model record), so a truncated
file, altered tensor bytes or an edited header are all refused instead of loaded. Format
``steerinterp.steering/1`` (digest over the tensors only) is still read, with its header checked field
by field. Every malformed header is a one-line ``SteeringFileError`` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from steerinterp._files import atomic_write_bytes
from steerinterp.errors import SteeringFileError

FORMAT = "steerinterp.steering/2"
FORMAT_V1 = "steerinterp.steering/1"  # digest over the tensors only; still read
READABLE_FORMATS = (FORMAT, FORMAT_V1)
FILE_NAME = "vectors.safetensors"
POSITION_KINDS = ("all", "prompt", "generated", "slice", "mask")
_REQUIRED = ("format", "sha256", "vectors", "info", "model")


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


def canonical_json(obj) -> str:
    """One spelling of a JSON value (sorted keys, no spaces), so equal headers hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def file_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> str:
    """The format-2 digest: SHA-256 over the tensor digest and every header field but ``sha256``."""
    header = {k: v for k, v in meta.items() if k != "sha256"}
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\0")
    h.update(tensor_digest(tensors).encode() + b"\0")
    h.update(canonical_json(header).encode())
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
    }
    meta = json.loads(json.dumps(meta))  # the header as a reader will see it (tuples -> lists, ...)
    meta["sha256"] = file_digest(tensors, meta)
    check_header(meta, tensors, vector_file(path))  # never write a file that would not load
    blob = save(tensors, metadata={"steerinterp": json.dumps(meta)})
    target = vector_file(path)
    atomic_write_bytes(target, blob)
    if target != path:
        atomic_write_bytes(path / "metadata.json", json.dumps(meta, indent=2).encode())
    return target


def read_vectors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a saved file, after checking its format, digest and header."""
    from safetensors import safe_open

    target = vector_file(path)
    if not target.is_file():
        raise SteeringFileError(f"no steering file at {target}; pass the path given to SteeringSet.save")
    try:
        with safe_open(str(target), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise SteeringFileError(f"{target} is damaged or truncated ({_one_line(e)}); re-save the vectors") from e
    if "steerinterp" not in header:
        raise SteeringFileError(f"{target} has no steerinterp metadata; it was not written by SteeringSet.save")
    try:
        meta = json.loads(header["steerinterp"])
    except ValueError as e:
        raise SteeringFileError(f"{target}: its steerinterp header is not valid JSON ({_one_line(e)}); re-save the vectors") \
            from e
    if not isinstance(meta, dict):
        raise SteeringFileError(f"{target}: its steerinterp header is a JSON {type(meta).__name__}, not an object; "
                                "re-save the vectors")
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise SteeringFileError(f"{target} has format {fmt!r}; this version reads {' and '.join(map(repr, READABLE_FORMATS))}")
    digest = meta.get("sha256")
    if not isinstance(digest, str):
        raise SteeringFileError(f"{target}: header field 'sha256' is missing or not a string; re-save the vectors")
    expected = file_digest(tensors, meta) if fmt == FORMAT else tensor_digest(tensors)
    if digest != expected:
        covered = "tensors or header" if fmt == FORMAT else "tensors"
        raise SteeringFileError(f"{target} was altered after saving (checksum mismatch over its {covered}); "
                                "re-save the vectors")
    check_header(meta, tensors, target)
    return tensors, meta


def read_metadata(path) -> dict:
    """The JSON metadata of a saved set, without loading it into a model."""
    return read_vectors(path)[1]


def check_header(meta: Mapping, tensors: Mapping[str, torch.Tensor], target) -> None:
    """Raise a one-line ``SteeringFileError`` for the first field of ``meta`` that a reader cannot use.

    Checks the keys and types of the header, each vector entry (hook name, finite scale, positions),
    that the tensors are exactly ``vector.i`` (1-D, floating point, one width) plus ``positions_mask.i``
    for mask positions (0/1, 1-D or 2-D), and that ``info`` and ``model`` are objects.
    """

    def bad(problem: str) -> SteeringFileError:
        return SteeringFileError(f"{target}: {problem}; the header was edited or written by another tool, re-save the vectors")

    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise bad(f"header field {missing[0]!r} is missing")
    for key in ("library_version", "created"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(f"header field {key!r} is {_kind(meta[key])}, not a string")
    if not isinstance(meta["info"], dict):
        raise bad(f"header field 'info' is {_kind(meta['info'])}, not an object")
    _check_model_record(meta["model"], bad)
    entries = meta["vectors"]
    if not isinstance(entries, list):
        raise bad(f"header field 'vectors' is {_kind(entries)}, not a list")
    expected: set[str] = set()
    widths = set()
    for i, e in enumerate(entries):
        where = f"vector {i}"
        if not isinstance(e, dict):
            raise bad(f"{where} is {_kind(e)}, not an object")
        for key in ("hook_name", "scale"):
            if key not in e:
                raise bad(f"{where} has no {key!r}")
        hook = e["hook_name"]
        if not isinstance(hook, str) or not hook.strip():
            raise bad(f"{where} has hook_name {hook!r}; it must be a non-empty string such as 'blocks.3.hook_resid_post'")
        scale = e["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise bad(f"{where} ({hook}) has scale {scale!r} ({_kind(scale)}); it must be a number")
        if not math.isfinite(scale):
            raise bad(f"{where} ({hook}) has scale {scale!r}; scales must be finite")
        if "trainable" in e and not isinstance(e["trainable"], bool):
            raise bad(f"{where} ({hook}) has trainable {e['trainable']!r}; it must be true or false")
        name = f"vector.{i}"
        expected.add(name)
        t = tensors.get(name)
        if t is None:
            raise bad(f"header lists {len(entries)} vectors but tensor {name!r} is missing")
        if t.dim() != 1 or not t.is_floating_point():
            raise bad(f"tensor {name!r} ({hook}) is {t.dtype} of shape {tuple(t.shape)}; it must be a 1-D float vector")
        if not bool(torch.isfinite(t).all()):
            raise bad(f"tensor {name!r} ({hook}) contains NaN or inf values")
        widths.add(t.shape[0])
        if _check_positions(e, i, hook, meta["format"], tensors, bad):
            expected.add(f"positions_mask.{i}")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise bad(f"tensor {extra[0]!r} belongs to no vector entry ({len(entries)} entries, {len(tensors)} tensors)")
    if len(widths) > 1:
        raise bad(f"vectors have different widths {sorted(widths)}; one set steers one model")


def _check_positions(e: dict, i: int, hook: str, fmt: str, tensors, bad) -> bool:
    """Validate entry ``i``'s positions; True when it owns a ``positions_mask.i`` tensor."""
    where = f"vector {i} ({hook})"
    if "positions" not in e and fmt == FORMAT_V1:
        return False  # early format-1 files: every position
    p = e.get("positions")
    if not isinstance(p, dict):
        raise bad(f"{where} has positions {p!r}; it must be an object with a 'kind'")
    kind = p.get("kind")
    if kind not in POSITION_KINDS:
        raise bad(f"{where} has positions kind {kind!r}; known kinds are {', '.join(POSITION_KINDS)}")
    for key in ("start", "stop"):
        v = p.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise bad(f"{where} has positions {key}={v!r}; it must be a non-negative integer or null")
    if kind != "mask":
        return False
    name = f"positions_mask.{i}"
    m = tensors.get(name)
    if m is None:
        raise bad(f"{where} has mask positions but tensor {name!r} is missing")
    if m.dtype not in (torch.uint8, torch.bool) or m.dim() not in (1, 2) or m.numel() == 0:
        raise bad(f"tensor {name!r} is {m.dtype} of shape {tuple(m.shape)}; a position mask is a non-empty 0/1 "
                  "uint8 tensor of shape [pos] or [batch, pos]")
    if m.dtype == torch.uint8 and bool((m > 1).any()):
        raise bad(f"tensor {name!r} holds values other than 0 and 1; it is not a position mask")
    return True


def _check_model_record(model, bad) -> None:
    if not isinstance(model, dict):
        raise bad(f"header field 'model' is {_kind(model)}, not an object")
    for key in ("d_model", "n_layers"):
        v = model.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad(f"model record {key}={v!r}; it must be a positive integer or null")
    for key in ("name", "source"):
        v = model.get(key)
        if v is not None and not isinstance(v, str):
            raise bad(f"model record {key}={v!r}; it must be a string or null")
    spec = model.get("spec")
    if spec is not None:
        if not isinstance(spec, dict):
            raise bad(f"model record spec is {_kind(spec)}, not an object")
        if not isinstance(spec.get("name"), str):
            raise bad(f"model record spec has name {spec.get('name')!r}; it must be a string")
        for key in ("finetuned", "dtype", "backend"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise bad(f"model record spec {key}={spec[key]!r}; it must be a string or null")
        if spec.get("tiny") is not None and not isinstance(spec["tiny"], dict):
            raise bad(f"model record spec tiny={spec['tiny']!r}; it must be an object or null")


def _kind(v) -> str:
    """The JSON kind of a value, with its article: "an object", "a list", "null", ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else f"a {type(v).__name__}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]
