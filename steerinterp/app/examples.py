"""The prelude every example script shares: its flags, threads, output folder and model.

    ap = example_parser(__doc__, HERE)               # --out (HERE/results), --threads (2), --model, --dtype
    ap.add_argument("--vectors", default=str(VECTORS))
    ex = start_example(ap)                           # parses, sets threads, makes --out, loads the model
    vecs = ex.load_vectors(ex.args.vectors)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def example_parser(doc: str | None, here: Path, *, out: str = "results", threads: int = 2) -> argparse.ArgumentParser:
    """An argument parser with the flags every example has: ``--out``, ``--threads``, ``--model``."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--out", default=str(Path(here) / out), help="where results are written")
    ap.add_argument("--threads", type=int, default=threads, help="torch threads")
    ap.add_argument("--model", default=None, help="embedded (default), tiny, a checkpoint directory or a TL name")
    ap.add_argument("--dtype", default="auto", help="the model's dtype: auto (bfloat16 on a GPU or an AMX / "
                    "AVX512-BF16 CPU, else float32), float32 or bfloat16; the committed results are float32 runs")
    return ap


@dataclass
class Example:
    """What ``start_example`` set up: the parsed flags, the output folder and the loaded model."""

    args: argparse.Namespace
    out: Path
    model: Any

    def load_vectors(self, path, **kwargs):
        """A saved ``SteeringSet`` checked against (and moved to) the model."""
        from steerinterp.steering import SteeringSet

        return SteeringSet.load(path, model=self.model, **kwargs)


def start_example(parser: argparse.ArgumentParser, argv=None, *, load_model: bool = True) -> Example:
    """Parse the flags, set torch's threads, create ``--out``, and load ``--model`` (unless told not to).

    From here on a ``SteerInterpError`` that ends the script prints as its one-line message (``one_line_errors``).
    """
    import torch

    from steerinterp.models import load_model as load

    args = parser.parse_args(argv)
    one_line_errors(parser.prog)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Example(args, out, load(args.model, dtype=args.dtype) if load_model else None)


def one_line_errors(prog: str) -> None:
    """Make a ``SteerInterpError`` that ends the script print as ``PROG: error: MESSAGE`` (exit status 2, the
    message names the problem and the fix) instead of a traceback; any other exception keeps its traceback, and
    ``STEERINTERP_TRACEBACK=1`` keeps it for these too."""
    from steerinterp.errors import SteerInterpError

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, SteerInterpError) and not os.environ.get("STEERINTERP_TRACEBACK"):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            sys.exit(2)  # an exit from the hook ends the interpreter with this status
        sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = hook


def write_csv(frame, path, *, index: bool = False) -> None:
    """Write a results table atomically (a process killed mid-write never leaves half a results file for a reader
    or a resumed run), so that it reads back as the same rows: a table whose text holds a carriage return (a
    model's completion can) is written with every text cell quoted."""
    from steerinterp._files import atomic_write_csv

    atomic_write_csv(Path(path), frame, index=index)


def add_task_arguments(parser: argparse.ArgumentParser, default: str = "arithmetic:add1") -> None:
    """``--task`` (the task the vectors were trained on) and ``--max-new-tokens`` (default: the task's own, 32
    unless it records one, e.g. the multi-step levels' 256), for an analysis example that runs on any task."""
    parser.add_argument("--task", default=default, help=f"the task the vectors were trained on (default {default})")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per completion (default: the task's; add1 32, multi-step 256)")


def example_task(args) -> tuple[Any, int]:
    """(task, tokens per completion) from ``add_task_arguments``' options."""
    from steerinterp.tasks import load_task

    task = load_task(args.task)
    return task, args.max_new_tokens or int(task.info.get("max_new_tokens", 32))


def train_resumably(model, task, runs: Mapping[Path, Any], *, progress: bool = True) -> list[Path]:
    """Train each ``{run directory: TrainConfig}`` in order, each resuming exactly where it stopped (a finished
    run is left as it is, without taking its write lock), so a long protocol (seeds x arms) can be split across
    sessions by re-running it, and across processes that share finished runs."""
    from steerinterp.rl import Trainer
    from steerinterp.run_dir import RunDir

    for path, config in runs.items():
        trainer = Trainer(model, task, config, RunDir(path), progress=progress)
        if not trainer.is_finished():
            trainer.train(resume=True)
    return list(runs)


def finished_runs(root) -> list[tuple[str, int, Any]]:
    """``(arm, seed, RunDir)`` for every run directory ``root/ARM-seedS`` whose ``final/`` holds a trained result
    (a ``.safetensors`` file), sorted by name: what a protocol's reading script (``seeds.py``) takes in, while
    unfinished runs keep training elsewhere."""
    from steerinterp.run_dir import RunDir

    out = []
    for path in sorted(Path(root).glob("*-seed*")):
        arm, _, seed = path.name.rpartition("-seed")
        run = RunDir(path)
        if seed.isdigit() and any(run.final_dir.glob("*.safetensors")):
            out.append((arm, int(seed), run))
    return out


def single_layer_seeds(root, layers) -> dict[int, dict[int, Any]]:
    """``{seed: {layer: RunDir}}`` for every training seed whose single-layer runs ``root/layerL-seedS`` are
    finished for all of ``layers`` (seeds with a run missing or still training are left out); an error naming
    the command to run when no seed is complete."""
    from steerinterp.errors import SteerInterpError

    by_seed: dict[int, dict[int, Any]] = {}
    for arm, seed, run in finished_runs(root):
        layer = arm.removeprefix("layer")
        if arm.startswith("layer") and layer.isdigit() and int(layer) in layers:
            by_seed.setdefault(seed, {})[int(layer)] = run
    complete = {seed: got for seed, got in sorted(by_seed.items()) if set(got) == set(layers)}
    if not complete:
        raise SteerInterpError(f"no training seed has finished runs for all of layers {list(layers)} under {root}; "
                               "run examples/single_layer_sweep/train.py first")
    return complete
