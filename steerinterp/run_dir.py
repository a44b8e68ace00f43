"""``RunDir``: the one piece of code that knows the files of a run directory.

    RUN/
      run.json          the record: kind, model spec, task string, verifier, seed, config, library version
      metrics.jsonl     one JSON object per training step
      checkpoint/       the trainer's resumable state
      final/            the trained result (vectors, adaptive.safetensors or weights.safetensors)
      evaluation.csv    every evaluated completion (variant, mode, seed, problem, correct, ...)
      summary.txt       the demo's printed summary
      analysis/         analysis tables and figures, index.json
      report.html       the self-contained report

The trainer, the demo, ``analyze``, ``report`` and ``eval`` all go through it; nothing else spells these
names. Runs written before ``run.json`` held the record (a train run's ``config.json``, a demo's
``vectors/``) are still read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from steerinterp._files import atomic_write_csv, atomic_write_text
from steerinterp.errors import SteerInterpError
from steerinterp.types import ModelSpec

RECORD_FORMAT = "steerinterp.run/1"


def _version() -> str:
    from steerinterp import __version__

    return __version__


@dataclass
class RunRecord:
    """What a run was made with: enough to load the same model and task again.

    ``task`` is the exact task string ``load_task`` (and the CLI's ``--task``) accepts, None for a task
    that has none (a custom ``Task``); ``task_name`` is the task's display name.
    """

    kind: str  # "train" | "demo"
    model: ModelSpec | None
    task: str | None
    task_name: str
    verifier: str | None = None
    seed: int = 0
    config: dict = field(default_factory=dict)
    task_digest: str | None = None  # steerinterp.tasks.spec.task_digest: the problems and how they are scored
    model_fingerprint: str | None = None  # steerinterp.types.model_fingerprint: the weights
    dtype_reason: str | None = None  # why the model runs in model.dtype (models.dtype_choice), e.g. "the CPU has amx_bf16"
    library_version: str = field(default_factory=_version)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict() if self.model is not None else None
        return {"format": RECORD_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        model = ModelSpec.from_dict(d["model"]) if isinstance(d.get("model"), dict) else None
        return cls(kind=d.get("kind", "train"), model=model, task=d.get("task"), task_name=d.get("task_name", ""),
                   verifier=d.get("verifier"), seed=int(d.get("seed", 0)), config=dict(d.get("config") or {}),
                   task_digest=d.get("task_digest"), model_fingerprint=d.get("model_fingerprint"),
                   dtype_reason=d.get("dtype_reason"),
                   library_version=d.get("library_version", "?"), created=d.get("created", ""))


def _file_stem(name: str) -> str:
    """A file-name-safe form of an analysis or table name (the name itself when it is already safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).strip(".") or "_"
    return safe if safe == name else f"{safe[:40]}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"


class RunDir:
    """A run directory. ``RunDir(path)`` touches nothing on disk until something is written."""

    RECORD = "run.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint"
    FINAL = "final"
    EVALUATION = "evaluation.csv"
    SUMMARY = "summary.txt"
    ANALYSIS = "analysis"
    REPORT = "report.html"
    LOCK = ".lock"
    _LEGACY_VECTORS = "vectors"  # demo runs before RunDir
    _LEGACY_CONFIG = "config.json"  # train runs before RunDir

    def __init__(self, path):
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise SteerInterpError(f"{self.path} is a file, not a run directory; choose a directory path")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- paths ---------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def final_dir(self) -> Path:
        return self.path / self.FINAL

    @property
    def analysis_dir(self) -> Path:
        return self.path / self.ANALYSIS

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def evaluation_path(self) -> Path:
        return self.path / self.EVALUATION

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    def vectors_path(self) -> Path | None:
        """Where the run's steering vectors are (``final/``, or a pre-RunDir demo's ``vectors/``)."""
        for d in (self.final_dir, self.path / self._LEGACY_VECTORS):
            if (d / "vectors.safetensors").is_file():
                return d
        return None

    def holds_run(self) -> bool:
        """True when the directory holds anything a run writes."""
        names = (self.RECORD, self.METRICS, self.CHECKPOINT, self.FINAL, self._LEGACY_VECTORS, self._LEGACY_CONFIG)
        return any((self.path / n).exists() for n in names)

    def make(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def writing(self) -> Iterator[RunDir]:
        """Hold the run's write lock for the block: one writer per run directory. A second writer (another
        process, or another trainer in this one) is refused at once; the lock goes with the process."""
        self.make()
        handle = open(self.path / self.LOCK, "a+")  # noqa: SIM115 - held for the block
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SteerInterpError(f"{self.path} is being written by another run (pid "
                                       f"{self._lock_owner() or '?'}); wait for it or choose another directory") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield self
        finally:
            handle.close()  # releases the lock

    def _lock_owner(self) -> str:
        try:
            return (self.path / self.LOCK).read_text().strip()
        except OSError:
            return ""

    def clear(self) -> None:
        """Delete what a run wrote here (only the run's own names; other files stay)."""
        for name in (self.RECORD, self.METRICS, self.CHECKPOINT, self.FINAL, self.EVALUATION, self.SUMMARY,
                     self.ANALYSIS, self.REPORT, self._LEGACY_VECTORS, self._LEGACY_CONFIG):
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    # ---- the record ----------------------------------------------------------------------------------
    def write_record(self, record: RunRecord) -> Path:
        self.make()
        path = self.path / self.RECORD
        atomic_write_text(path, json.dumps(record.to_dict(), indent=2))
        return path

    def record(self) -> RunRecord:
        """The run's record; from a pre-RunDir run, what its files tell (missing facts are None)."""
        path = self.path / self.RECORD
        if path.is_file():
            d = self._read_json(path)
            if d.get("format") == RECORD_FORMAT:
                return RunRecord.from_dict(d)
            # a demo run.json before RunDir: {"model": name, "task": name, "task_spec": spec, "steps": n}
            return RunRecord(kind="demo", model=ModelSpec(), task=d.get("task_spec"), task_name=d.get("task", ""),
                             config={"steps": d.get("steps")}, library_version="<0.2")
        config = self.path / self._LEGACY_CONFIG
        if config.is_file():
            d = self._read_json(config)
            name = d.get("task", "")
            spec = name.replace("/shared", ":shared") if name.startswith("arithmetic:") else None
            return RunRecord(kind="train", model=None, task=spec, task_name=name, seed=int(d.get("seed", 0)),
                             config={k: v for k, v in d.items() if k != "task"}, library_version="<0.2")
        if not self.path.is_dir():
            raise SteerInterpError(f"{self.path} does not exist; give the output directory of a run")
        raise SteerInterpError(f"{self.path} holds no run record ({self.RECORD}); give the directory a run wrote")

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SteerInterpError(f"{path} is unreadable ({e}); the run directory is damaged") from e
        if not isinstance(d, dict):
            raise SteerInterpError(f"{path} does not hold a JSON object; the run directory is damaged")
        return d

    # ---- metrics -------------------------------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        self.make()
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def write_metrics(self, rows: list[dict]) -> None:
        self.make()
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def metrics(self) -> list[dict]:
        """Per-step metrics; a torn last line (a run killed mid-write) is skipped with a warning."""
        if not self.metrics_path.is_file():
            return []
        lines = [x for x in self.metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:
                    warnings.warn(f"{self.metrics_path}: skipped a torn last line (the run stopped mid-write)",
                                  stacklevel=2)
                    break
                raise SteerInterpError(f"{self.metrics_path}:{i + 1} is not JSON ({e.msg}); the file is damaged") from e
        return rows

    # ---- tables and text -----------------------------------------------------------------------------
    def write_evaluation(self, frame) -> Path:
        """Every evaluated completion (an ``EvalResult.details()`` frame) as CSV."""
        self.make()
        atomic_write_csv(self.evaluation_path, frame)
        return self.evaluation_path

    def write_summary(self, text: str) -> Path:
        self.make()
        atomic_write_text(self.summary_path, text if text.endswith("\n") else text + "\n")
        return self.summary_path

    def write_report(self, page: str, path=None) -> Path:
        """A rendered report page (default ``RUN/report.html``)."""
        target = Path(path) if path is not None else self.report_path
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, page)
        return target

    def evaluation(self):
        """The evaluation table (pandas), or None when the run has none."""
        if not self.evaluation_path.is_file():
            return None
        import pandas as pd

        return pd.read_csv(self.evaluation_path)

    def summary(self) -> str | None:
        return self.summary_path.read_text(encoding="utf-8") if self.summary_path.is_file() else None

    # ---- analysis ------------------------------------------------------------------------------------
    ANALYSIS_INDEX = "index.json"

    def write_analysis(self, findings: dict[str, dict]) -> Path:
        """Write analyses as ``analysis/``: per name, CSV tables, plotly figures as JSON, and ``index.json``.

        ``findings``: name -> ``{"note": str, "seconds": float, "tables": {table: DataFrame}, "figures": [fig]}``.
        The directory is replaced as a whole (a reader sees the old analyses or the new ones).
        """
        from steerinterp._files import atomic_dir, csv_text

        self.make()
        index = {}
        with atomic_dir(self.analysis_dir) as tmp:
            for name, f in findings.items():
                stem = _file_stem(name)
                tables = {}
                for tname, frame in f.get("tables", {}).items():
                    file = f"{stem}-{_file_stem(tname)}.csv"
                    (tmp / file).write_text(csv_text(frame), encoding="utf-8")
                    tables[tname] = file
                figures = []
                for i, fig in enumerate(f.get("figures", [])):
                    file = f"{stem}-figure{i}.json"
                    (tmp / file).write_text(fig.to_json(), encoding="utf-8")
                    figures.append(file)
                index[name] = {"note": f.get("note", ""), "seconds": f.get("seconds", 0.0), "tables": tables,
                               "figures": figures}
            (tmp / self.ANALYSIS_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
        return self.analysis_dir

    def analysis_index(self) -> dict:
        """``index.json`` of the analyses ({} when the run has none)."""
        path = self.analysis_dir / self.ANALYSIS_INDEX
        return self._read_json(path) if path.is_file() else {}

    def analysis_file(self, name: str) -> Path:
        """A file listed in the analysis index; names that leave ``analysis/`` are refused."""
        base = self.analysis_dir.resolve()
        path = (base / str(name)).resolve()
        if base not in path.parents:
            raise SteerInterpError(f"{self.analysis_dir / self.ANALYSIS_INDEX} lists {name!r}, which is outside "
                                   "the run's analysis directory; refusing to read it")
        if not path.is_file():
            raise SteerInterpError(f"{path} is listed in the analysis index but missing; rerun the analyses")
        return path

    def analysis_table(self, name: str):
        import pandas as pd

        return pd.read_csv(self.analysis_file(name))

    def analysis_figure(self, name: str):
        import plotly.io as pio

        return pio.from_json(self.analysis_file(name).read_text(encoding="utf-8"))
