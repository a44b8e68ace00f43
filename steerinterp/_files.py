"""User cache directory, atomic file writes (a reader sees the old file or the new one, never half of one; the
result has the permissions a plain write would give it) and CSV text that reads back as the rows it was written
from."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's file-mode creation mask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_plain_modes(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the mode a plain ``open()`` / ``mkdir()`` gives
    under the umask: ``mkstemp`` / ``mkdtemp`` and safetensors' writer make owner-only entries."""
    path = Path(path)
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def cache_dir() -> Path:
    """Where steerinterp keeps what is slow to rebuild.

    ``$STEERINTERP_CACHE`` if set, else ``$XDG_CACHE_HOME/steerinterp``, else ``~/.cache/steerinterp``.
    """
    env = os.environ.get("STEERINTERP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steerinterp"


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary directory that replaces ``final`` only if the block finishes.

    Readers never see a half-written directory: either the old one, or the complete new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        give_plain_modes(tmp)  # owner-only from mkdtemp (and from safetensors' writer inside it)
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; the result gets a plain open()'s mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(frame, *, index: bool = False) -> str:
    """A pandas frame as CSV text that a reader splits into the same rows.

    pandas writes a text cell holding a carriage return unquoted (a model's completion can hold one: SmolLM's
    vocabulary has "\\r" tokens), and a reader then splits that row in two; a table with one is written with
    every text cell quoted. Other tables are written exactly as ``frame.to_csv`` would."""
    import csv

    text = (frame.reset_index() if index else frame).select_dtypes(include=["object", "string"])
    has_cr = any(text[c].astype(str).str.contains("\r", regex=False).any() for c in text.columns)
    return frame.to_csv(index=index, quoting=csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL)


def atomic_write_csv(path: Path, frame, *, index: bool = False) -> None:
    """``csv_text`` written atomically."""
    atomic_write_text(path, csv_text(frame, index=index))
