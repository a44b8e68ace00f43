"""Command line: ``steerinterp demo`` (the main job) and friends.

Bad input (a wrong layer, a missing file, ...) is reported as one line naming the problem, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from steerinterp.errors import SteerInterpError


def _load(args, device=None):
    """The model a command runs on: ``--model``, with ``--finetuned`` weights on top when given."""
    import steerinterp as si
    from steerinterp.models import load_finetuned

    if getattr(args, "finetuned", None):
        return load_finetuned(args.finetuned, args.model, device=device)
    return si.load_model(args.model, device=device)


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def cmd_demo(args) -> int:
    import steerinterp as si
    from steerinterp.demo import run_demo, write_demo

    _threads(args.threads)
    t0 = time.time()
    model = si.load_model()
    result = run_demo(quick=args.quick, steps=args.steps, model=model, progress=True,
                      analyses=() if args.no_analysis else None)
    paths = write_demo(result, Path(args.out), model=model)
    print(result.summary())
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.time() - t0:.0f} s")
    return 0


def cmd_analyze(args) -> int:
    import steerinterp as si
    from steerinterp.report import write_report
    from steerinterp.run_analysis import analyze_vectors, build_report, save_analysis
    from steerinterp.tasks import load_task

    _threads(args.threads)
    run = Path(args.run)
    vec_dir = next((d for d in (run / "vectors", run / "final") if d.exists()), None)
    if vec_dir is None:
        raise SteerInterpError(f"{run} has no vectors/ or final/ directory; give the --out of `steerinterp demo` or `train`")
    saved = {}  # the task a run was made with: run.json (demo) or config.json (train)
    for name, key in (("run.json", "task_spec"), ("config.json", "task")):
        if (run / name).exists() and not saved.get("task"):
            saved["task"] = json.loads((run / name).read_text()).get(key)
    model = _load(args)
    vecs = si.SteeringSet.load(vec_dir, model=model)
    task = load_task(args.task or saved.get("task") or "arithmetic")
    only = args.only.split(",") if args.only else None
    analysis = analyze_vectors(model, vecs, task, quick=args.quick, only=only, progress=True)
    save_analysis(analysis, run / "analysis")
    page = write_report(run / "report.html", build_report(run))
    print(analysis.to_frame().to_string(index=False))
    print(f"wrote {run / 'analysis'} and {page}")
    return 0


def cmd_report(args) -> int:
    from steerinterp.report import write_report
    from steerinterp.run_analysis import build_report

    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    print(f"wrote {write_report(out, build_report(args.run))}")
    return 0


def cmd_generate(args) -> int:
    import steerinterp as si

    _threads(args.threads)
    model = si.load_model(args.model)
    vecs = si.SteeringSet.load(args.vectors, model=model) if args.vectors else None
    prompts = si.chat_prompts(model, args.prompt) if args.chat else list(args.prompt)
    out = si.generate(model, prompts, steering=vecs, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, seed=args.seed)
    for p, t in zip(args.prompt, out.texts):
        print(json.dumps({"prompt": p, "completion": t}))
    return 0


def cmd_train(args) -> int:
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.rl.distributed import init_from_env
    from steerinterp.tasks import load_task

    _threads(args.threads)
    device = f"cuda:{torch_local_rank()}" if _cuda() else "cpu"
    dist = init_from_env(device)
    task = load_task(args.task, verifier=args.verifier, seed=args.seed)
    cfg = TrainConfig(
        steps=args.steps, layers=args.layers, parametrisation=args.parametrisation, lr=args.lr,
        group_size=args.group_size, prompts_per_step=args.prompts_per_step, max_new_tokens=args.max_new_tokens,
        seed=args.seed, advantage=args.advantage, checkpoint_every=args.checkpoint_every,
        full_params=args.full_params.split(",") if args.full_params else None,
        problem_sampling=args.problem_sampling, replay_fraction=args.replay_fraction, warmup_ratio=args.warmup_ratio,
    )
    cfg.validate()
    model = _load(args, device=device)
    from steerinterp.steering import resolve_layers

    resolve_layers(model, args.layers)  # a wrong layer fails before any work
    result = Trainer(model, task, cfg, args.out, dist=dist).train(resume=args.resume)
    if dist.is_main:
        df = result.to_frame()
        last = df.tail(5)
        print(f"trained {len(df)} steps on {task.name}: training accuracy {df['accuracy'].head(5).mean():.2f} "
              f"(first 5 steps) -> {last['accuracy'].mean():.2f} (last 5); vectors in {Path(args.out) / 'final'}")
    return 0


def torch_local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_eval(args) -> int:
    import steerinterp as si
    from steerinterp.evaluate import evaluate
    from steerinterp.tasks import load_task

    _threads(args.threads)
    model = _load(args)
    task = load_task(args.task, verifier=args.verifier, seed=args.seed)
    variants = {"base": None}
    for path in args.vectors or []:
        p = Path(path)
        variants[p.parent.name if p.name == "final" else p.name] = si.SteeringSet.load(p, model=model)
    pool = {"test": list(task.test), "train": list(task.train), "all": list(task.test) + list(task.train)}[args.split]
    problems = pool[: args.limit] if args.limit else pool
    res = evaluate(model, task, variants, problems=problems, samples=args.samples,
                   max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(res.to_frame().to_string(index=False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        res.details().to_csv(args.out, index=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from steerinterp.run_analysis import ANALYSES

    p = argparse.ArgumentParser(prog="steerinterp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job on the embedded model: steer, generate, compare, write results")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a reduced run: 8 RL steps, reduced analyses (~8 min on 2 cores)")
    d.add_argument("--steps", type=int, default=None, help="RL steps (default 40, or 8 with --quick)")
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    d.add_argument("--no-analysis", action="store_true", help="train and evaluate only (the report then has no analyses)")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("analyze", help="(re)run the analyses of a saved run (its vectors/) and rebuild its report.html")
    a.add_argument("run", help="a run directory: the --out of `steerinterp demo` or `train`")
    a.add_argument("--model", default=None, help="embedded (default), tiny, a local HF directory or a TL name")
    a.add_argument("--task", default=None, help="default: the run's (run.json), else arithmetic")
    a.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(ANALYSES))
    a.add_argument("--quick", action="store_true", help="fewer rollouts, layers and DiffSAE data")
    a.add_argument("--threads", type=int, default=None)
    a.set_defaults(func=cmd_analyze)

    r = sub.add_parser("report", help="rebuild the self-contained report.html of a run from its saved files (no model)")
    r.add_argument("run", help="a run directory")
    r.add_argument("--out", default=None, help="output file (default RUN/report.html)")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("generate", help="generate with optional saved steering vectors")
    g.add_argument("prompt", nargs="+")
    g.add_argument("--model", default=None, help="embedded (default), tiny, a local HF directory or a TL name")
    g.add_argument("--vectors", default=None, help="path given to SteeringSet.save")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="RL-train steering vectors (RLOO) on a task; torchrun for several processes")
    t.add_argument("--model", default=None, help="embedded (default), tiny, a local HF directory or a TL name")
    t.add_argument("--finetuned", default=None, help="weights of a --parametrisation full run (its final/) on top of --model")
    t.add_argument("--task", default="arithmetic", help="arithmetic[:LEVEL[:shared]] | gsm8k:PATH[,TEST] | math:PATH")
    t.add_argument("--verifier", default=None, choices=["boxed", "last_number"], help="default: the task's")
    t.add_argument("--layers", default="all", help="all | 12 | 3,7")
    t.add_argument("--parametrisation", default="vector", choices=["vector", "adaptive", "full"])
    t.add_argument("--full-params", default=None, help="for --parametrisation full: comma-separated name parts")
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--group-size", type=int, default=8)
    t.add_argument("--prompts-per-step", type=int, default=8)
    t.add_argument("--max-new-tokens", type=int, default=32)
    t.add_argument("--advantage", default="rloo", choices=["rloo", "grpo", "grpo_no_std"])
    t.add_argument("--warmup-ratio", type=float, default=0.03,
                   help="share of steps with linear LR warmup (the papers' 3%%; 0 = none, as the MODELS.md prototype)")
    t.add_argument("--problem-sampling", default="epochs", choices=["epochs", "learnability"],
                   help="learnability: replay part of each step from problems whose last group had mixed rewards")
    t.add_argument("--replay-fraction", type=float, default=0.5, help="share of replayed prompts (learnability)")
    t.add_argument("--checkpoint-every", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--threads", type=int, default=None)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="held-out accuracy of the base model and saved vectors")
    e.add_argument("--model", default=None)
    e.add_argument("--finetuned", default=None, help="weights of a --parametrisation full run (its final/) on top of --model")
    e.add_argument("--task", default="arithmetic")
    e.add_argument("--verifier", default=None, choices=["boxed", "last_number"])
    e.add_argument("--vectors", nargs="*", help="directories written by SteeringSet.save / train (DIR/final)")
    e.add_argument("--samples", type=int, default=4, help="sampled completions per problem (avg@k)")
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--split", default="test", choices=["test", "train", "all"], help="which problems (default: held-out)")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N problems of the split")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="CSV of every completion")
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SteerInterpError as e:
        print(f"steerinterp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steerinterp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
