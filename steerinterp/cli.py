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


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def cmd_demo(args) -> int:
    from steerinterp.demo import run_demo, write_demo

    _threads(args.threads)
    t0 = time.time()
    result = run_demo(quick=args.quick, layer=args.layer, progress=True)
    paths = write_demo(result, Path(args.out))
    print(result.summary())
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.time() - t0:.0f} s")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steerinterp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job on the embedded model: steer, generate, compare, write results")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a reduced run in about a minute")
    d.add_argument("--layer", type=int, default=None, help="layer of the demo vector (default: the last)")
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    d.set_defaults(func=cmd_demo)

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
