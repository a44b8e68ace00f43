"""Command line: ``steerinterp demo`` (the main job) and friends.

Bad input (a wrong layer, a missing file, ...) is reported as one line naming the problem, not a traceback.
The flags of ``train`` are made from ``TrainConfig``'s fields and the model flags from ``ModelSpec``'s, so
defaults and help live in one place. ``analyze``, ``report``, ``eval --run`` and ``train --resume`` read the
model, task, verifier, seed and settings a run was made with from its directory (``RunDir``); a flag given
on the command line overrides the recorded value.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from steerinterp.errors import SteerInterpError
from steerinterp.models.precision import AUTO
from steerinterp.run_dir import RunDir, RunRecord
from steerinterp.types import ModelSpec

# ModelSpec field -> (flag, help); "tiny" is only reachable through the library (TinyConfig)
MODEL_FLAGS = {
    "name": ("--model", "embedded (default), tiny, a local Hugging Face checkpoint directory or a TransformerLens name"),
    "dtype": ("--dtype", "weights' dtype: auto (default: bfloat16 on a GPU or a CPU with AMX-BF16/AVX512-BF16, "
                        "else float32; env STEERINTERP_DTYPE overrides auto), float32, bfloat16, float16 or float64"),
    "processed": ("--processed", "fold norms / centre weights as TransformerLens's from_pretrained (default: off)"),
    "n_ctx": ("--n-ctx", "context length to allocate (default 2048, capped by the checkpoint)"),
    "backend": ("--backend", "hooked (HookedTransformer, default) or bridge (TransformerBridge)"),
    "finetuned": ("--finetuned", "weights of a parametrisation=full run (its final/) loaded on top of --model"),
}
# settings of library calls that are flags here (errors name the setting; main() adds the flag)
EXTRA_FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "threads": "--threads", "task": "--task",
               "verifier": "--verifier"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """argparse with the house's one-line errors (``steerinterp: error: ...``, exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"steerinterp: error: {self.prog.removeprefix('steerinterp ')}: {message} "
                     f"(see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


# ---- model flags ----------------------------------------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    g = p.add_argument_group("model (default: the run's recorded model, else the embedded one)")
    for field, (flag, help_) in MODEL_FLAGS.items():
        if field == "processed":
            g.add_argument(flag, dest="model_processed", action="store_const", const=True, default=None, help=help_)
        elif field == "n_ctx":
            g.add_argument(flag, dest="model_n_ctx", type=_positive_int, default=None, help=help_)
        elif field == "backend":
            g.add_argument(flag, dest="model_backend", choices=["hooked", "bridge"], default=None, help=help_)
        else:
            g.add_argument(flag, dest=f"model_{field}", default=None, help=help_)
    if device:
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")


def model_spec_from_args(args, recorded: ModelSpec | None = None) -> ModelSpec:
    """The recorded spec (or the default one) with every model flag given on the command line applied."""
    given = {f: getattr(args, f"model_{f}") for f in MODEL_FLAGS if getattr(args, f"model_{f}", None) is not None}
    base = recorded or ModelSpec(dtype=AUTO)
    if "name" in given and given["name"] != base.name:
        base = ModelSpec(dtype=AUTO)  # another model: nothing recorded about the old one applies
    return dataclasses.replace(base, **given)


def load_from_spec(spec: ModelSpec, args):
    from steerinterp.models import load_model_from_spec

    return load_model_from_spec(spec, device=getattr(args, "device", None))


# ---- train flags from TrainConfig ------------------------------------------------------------------------
def _parser_for(tp, default):
    """A string parser for a config field, from its annotation and default."""
    text = str(tp)
    if isinstance(default, bool):
        return lambda s: s.lower() in ("1", "true", "yes")
    if isinstance(default, tuple):
        return lambda s: tuple(float(x) for x in s.split(","))
    if "list[str]" in text:
        return lambda s: [x for x in s.split(",") if x]
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def add_config_flags(p: argparse.ArgumentParser, config_cls) -> list[str]:
    """One flag per dataclass field (``--group-size`` for ``group_size``), help and choices from its metadata.

    Every flag defaults to None ("not given"), so a resumed run keeps its recorded value."""
    hints = typing.get_type_hints(config_cls)
    g = p.add_argument_group(f"settings ({config_cls.__name__}; default: the run's recorded value, else shown)")
    names = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        g.add_argument(_flag(f.name), dest=f"cfg_{f.name}", type=_parser_for(hints[f.name], default), default=None,
                       choices=choices() if callable(choices) else choices, metavar=f.name.upper(),
                       help=f"{f.metadata.get('help', '')} (default {shown})".replace("%", "%%"))
        names.append(f.name)
    return names


def config_from_args(args, config_cls, recorded: dict | None = None):
    """``config_cls`` from the recorded settings (if any) with every flag given on the command line applied."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    values = {k: v for k, v in (recorded or {}).items() if k in fields}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    values.update({k: getattr(args, f"cfg_{k}") for k in fields if getattr(args, f"cfg_{k}", None) is not None})
    return config_cls(**values)


# ---- helpers ---------------------------------------------------------------------------------------------
def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _task(spec: str | None, verifier: str | None, seed: int, *, where: str = ""):
    from steerinterp.tasks import load_task

    if not spec:
        raise SteerInterpError(f"{where}no task string is recorded (a custom Task); give the task", setting="task")
    return load_task(spec, verifier=verifier, seed=seed)


def _record_near(path: Path) -> RunRecord | None:
    """The record of the run a vectors path belongs to (``RUN/final`` -> RUN), if it is in one."""
    for candidate in (path, path.parent):
        run = RunDir(candidate)
        if (run.path / RunDir.RECORD).is_file():
            return run.record()
    return None


# ---- commands --------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import steerinterp as si
    from steerinterp.app.demo import run_demo, write_demo

    _threads(args.threads)
    t0 = time.time()
    run = RunDir(args.out)
    recorded = run.record().model if args.resume and run.holds_run() else None
    model = si.load_model(dtype=args.dtype or (recorded.dtype if recorded is not None else AUTO))
    result = run_demo(quick=args.quick, steps=args.steps, model=model, progress=True, run=run, resume=args.resume,
                      overwrite=args.overwrite, analyses=() if args.no_analysis else None)
    paths = write_demo(result, run, model=model)
    print(result.summary())
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.time() - t0:.0f} s")
    return 0


def cmd_analyze(args) -> int:
    import steerinterp as si
    from steerinterp.app.pipeline import analyze_vectors, build_report, save_analysis

    _threads(args.threads)
    run = RunDir(args.run)
    record = run.record()
    vec_dir = run.vectors_path()
    if vec_dir is None:
        raise SteerInterpError(f"{run.path} has no steering vectors ({RunDir.FINAL}/); the analyses need a finished "
                               "vector run")
    model = load_from_spec(model_spec_from_args(args, record.model), args)
    vecs = si.SteeringSet.load(vec_dir, model=model)
    task = _task(args.task or record.task, args.verifier or record.verifier, record.seed, where=f"{run.path}: ")
    only = args.only.split(",") if args.only else None
    analysis = analyze_vectors(model, vecs, task, quick=args.quick, only=only, seed=record.seed, progress=True)
    save_analysis(analysis, run)
    page = run.write_report(build_report(run))
    print(analysis.to_frame().to_string(index=False))
    print(f"wrote {run.analysis_dir} and {page}")
    return 0


def cmd_report(args) -> int:
    from steerinterp.app.pipeline import build_report

    run = RunDir(args.run)
    print(f"wrote {run.write_report(build_report(run), path=args.out)}")
    return 0


def cmd_generate(args) -> int:
    import steerinterp as si

    _threads(args.threads)
    model = load_from_spec(model_spec_from_args(args), args)
    vecs = si.SteeringSet.load(args.vectors, model=model) if args.vectors else None
    prompts = si.chat_prompts(model, args.prompt) if args.chat else list(args.prompt)
    out = si.generate(model, prompts, steering=vecs, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, seed=args.seed)
    for p, t in zip(args.prompt, out.texts):
        print(json.dumps({"prompt": p, "completion": t}))
    return 0


def cmd_train(args) -> int:
    import torch

    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.rl.distributed import init_from_env

    _threads(args.threads)
    run = RunDir(args.out)
    recorded = run.record() if args.resume and run.holds_run() else None
    if args.resume and args.overwrite:
        raise SteerInterpError("resume and overwrite contradict each other; give one", setting="overwrite")
    cfg = config_from_args(args, TrainConfig, recorded.config if recorded else None)
    cfg.validate()
    task = _task(args.task or (recorded.task if recorded else "arithmetic"),
                 args.verifier or (recorded.verifier if recorded else None), cfg.seed)
    spec = model_spec_from_args(args, recorded.model if recorded else None)
    if args.device is None and torch.cuda.is_available():
        import os

        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = load_from_spec(spec, args)
    dist = init_from_env(args.device or "cpu")
    result = Trainer(model, task, cfg, run, dist=dist).train(resume=args.resume, overwrite=args.overwrite)
    if dist.is_main:
        df = result.to_frame()
        print(f"trained {len(df)} steps on {task.name}: training accuracy {df['accuracy'].head(5).mean():.2f} "
              f"(first 5 steps) -> {df['accuracy'].tail(5).mean():.2f} (last 5); result in {run.final_dir}")
    return 0


def _unique(label: str, taken: set) -> str:
    out, n = label, 2
    while out in taken:
        out, n = f"{label}#{n}", n + 1
    taken.add(out)
    return out


def cmd_eval(args) -> int:
    import steerinterp as si
    from steerinterp.tasks import evaluate

    _threads(args.threads)
    sources = []  # (label, vectors path, record)
    for r in args.run or []:
        run = RunDir(r)
        path = run.vectors_path()
        if path is None:
            raise SteerInterpError(f"{run.path} has no steering vectors ({RunDir.FINAL}/)")
        sources.append((run.path.name, path, run.record()))
    for v in args.vectors or []:
        p = Path(v)
        sources.append((p.parent.name if p.name == RunDir.FINAL else p.name, p, _record_near(p)))
    record = next((rec for _, _, rec in sources if rec is not None), None)
    model = load_from_spec(model_spec_from_args(args, record.model if record else None), args)
    seed = args.seed if args.seed is not None else (record.seed if record else 0)
    task = _task(args.task or (record.task if record else "arithmetic"),
                 args.verifier or (record.verifier if record else None), seed)
    variants: dict[str, object] = {"base": None}
    taken = {"base"}
    for label, path, _ in sources:
        variants[_unique(label, taken)] = si.SteeringSet.load(path, model=model)
    pool = {"test": list(task.test), "train": list(task.train), "all": list(task.test) + list(task.train)}[args.split]
    problems = pool[: args.limit] if args.limit else pool
    res = evaluate(model, task, variants, problems=problems, samples=args.samples,
                   max_new_tokens=args.max_new_tokens, seed=seed)
    print(res.to_frame().to_string(index=False))
    if args.out:
        from steerinterp._files import atomic_write_csv

        atomic_write_csv(Path(args.out), res.details())
    return 0


# ---- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from steerinterp.app.pipeline import ANALYSES
    from steerinterp.rl import TrainConfig
    from steerinterp.tasks import VERIFIERS

    p = _Parser(prog="steerinterp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    threads = {"type": _positive_int, "default": None, "help": "torch threads (default: torch's choice)"}
    task_help = "arithmetic[:LEVEL[:shared]] | gsm8k:PATH[,TEST] | math:PATH"

    d = sub.add_parser("demo", help="the main job on the embedded model: steer, generate, compare, write results")
    d.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a reduced run: 8 RL steps, reduced analyses")
    d.add_argument("--steps", type=_positive_int, default=None, help="RL steps (default 40, or 8 with --quick)")
    d.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    d.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    d.add_argument("--threads", **threads)
    d.add_argument("--dtype", default=None, help=MODEL_FLAGS["dtype"][1] + "; a resumed demo keeps its recorded dtype")
    d.add_argument("--no-analysis", action="store_true", help="train and evaluate only (the report then has no analyses)")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("analyze", help="(re)run the analyses of a saved run and rebuild its report.html")
    a.add_argument("run", help="a run directory (of `steerinterp demo` or `train`)")
    add_model_flags(a)
    a.add_argument("--task", default=None, help=f"default: the run's; {task_help}")
    a.add_argument("--verifier", default=None, choices=list(VERIFIERS), help="default: the run's")
    a.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(ANALYSES))
    a.add_argument("--quick", action="store_true", help="fewer rollouts, layers and DiffSAE data")
    a.add_argument("--threads", **threads)
    a.set_defaults(func=cmd_analyze)

    r = sub.add_parser("report", help="rebuild the self-contained report.html of a run from its saved files (no model)")
    r.add_argument("run", help="a run directory")
    r.add_argument("--out", default=None, help="output file (default RUN/report.html)")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("generate", help="generate with optional saved steering vectors")
    g.add_argument("prompt", nargs="+")
    add_model_flags(g)
    g.add_argument("--vectors", default=None, help="path given to SteeringSet.save (e.g. RUN/final)")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    g.add_argument("--max-new-tokens", type=_positive_int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", **threads)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="RL-train steering vectors (RLOO) on a task; torchrun for several processes")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out with its recorded settings")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--task", default=None, help=f"{task_help} (default arithmetic, or the run's)")
    t.add_argument("--verifier", default=None, choices=list(VERIFIERS), help="default: the task's, or the run's")
    add_model_flags(t)
    add_config_flags(t, TrainConfig)
    t.add_argument("--threads", **threads)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="held-out accuracy of the base model and saved vectors")
    e.add_argument("--run", action="append", help="a run directory whose vectors to evaluate (repeatable); its "
                                                  "model, task, verifier and seed are the defaults")
    e.add_argument("--vectors", nargs="*", help="directories written by SteeringSet.save (e.g. RUN/final)")
    add_model_flags(e)
    e.add_argument("--task", default=None, help=f"{task_help} (default: the run's, else arithmetic)")
    e.add_argument("--verifier", default=None, choices=list(VERIFIERS))
    e.add_argument("--samples", type=int, default=4, help="sampled completions per problem (avg@k)")
    e.add_argument("--max-new-tokens", type=_positive_int, default=32)
    e.add_argument("--split", default="test", choices=["test", "train", "all"], help="which problems (default: held-out)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate on the first N problems of the split")
    e.add_argument("--seed", type=int, default=None, help="default: the run's, else 0")
    e.add_argument("--out", default=None, help="CSV of every completion")
    e.add_argument("--threads", **threads)
    e.set_defaults(func=cmd_eval)
    return p


def _with_flag(e: SteerInterpError) -> str:
    """The library's message plus the command-line spelling of the setting it names."""
    setting = getattr(e, "setting", None)
    flag = EXTRA_FLAGS.get(setting) or (MODEL_FLAGS[setting][0] if setting in MODEL_FLAGS else None)
    if flag is None and setting:
        flag = _flag(setting)
    return f"{e} [{flag}]" if flag else str(e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SteerInterpError as e:
        print(f"steerinterp: error: {_with_flag(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steerinterp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
