"""Composition over all pairs of the single-layer protocol vectors, per training seed (issue 18; [SV] Fig 13).

For each training seed whose single-layer runs (``../single_layer_sweep/train.py``: layers 0, 5, 10, 14, 20, 25,
28, 29, equal budgets) are all finished, every pair i < j of that seed's vectors is inserted without joint
training, and every single layer alone, and evaluated on every held-out add1 problem (greedy by default, or
sampled avg@k); the base model and the all-layer reference of R are evaluated beside them. The reference is, by
default, the same seed's all-layer set trained with the single layers' budget (``runs/all-seedS``: 20 steps, the
same prompts and samples per step), so that R compares at equal budgets; ``--reference PATH`` takes one set for
every seed instead. ``--extra NAME=PATH`` evaluates more sets beside them (default: the 60-step all-layer set of
``rl_arithmetic`` as ``all-60steps``, the earlier reference). Writes ``results/seeds/pairs_MODE.csv``, one row per
(training seed, variant, sampling seed, problem), so that ``scripts/render_tables.py`` can give
R_ij = (acc_ij - max(acc_i, acc_j)) / (acc_all - max(acc_i, acc_j)) with a bootstrap interval over problems and
seeds, and ``pairs_MODE.json``, which records the digest of every vector file behind every variant.

A re-run reuses the outcomes of every variant whose vector files are unchanged (same digests, same task, mode and
samples) and evaluates the rest, so changing the reference re-evaluates only the reference; the file is rewritten
after each training seed. ``--fresh`` evaluates everything again.

    python examples/composition/seeds.py                    # 28 pairs + 8 singles per seed, greedy
    python examples/composition/seeds.py --mode sampled     # avg@4
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, finished_runs, single_layer_seeds, start_example, write_csv
from steerinterp.errors import SteerInterpError
from steerinterp.steering.io import read_metadata
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"
LONG = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"
LAYERS = "0,5,10,14,20,25,28,29"
TASK = "arithmetic:add1"


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the single-layer runs (layerL-seedS, all-seedS)")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--reference", default="equal-budget",
                    help="the all-layer set R is normalised by: 'equal-budget' (RUNS/all-seedS of each training "
                         "seed) or the path of one SteeringSet for every seed")
    ap.add_argument("--extra", nargs="*", default=[f"all-60steps={LONG}"], metavar="NAME=PATH",
                    help="more SteeringSets evaluated beside the pairs (context rows)")
    ap.add_argument("--mode", default="greedy", choices=["greedy", "sampled"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--fresh", action="store_true", help="evaluate every variant again, reusing nothing")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    extra = dict(parse_extra(x) for x in args.extra)
    by_seed = single_layer_seeds(args.runs, layers)
    refs = reference_paths(args.reference, args.runs, sorted(by_seed))
    task = load_task(TASK)
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    csv, info_path = out / f"pairs_{args.mode}.csv", out / f"pairs_{args.mode}.json"
    samples = args.samples if args.mode == "sampled" else 0
    settings = {"task": TASK, "mode": args.mode, "samples": samples}
    problems = {str(p.id) for p in task.test}
    old_rows, old_sources = ({}, {}) if args.fresh else previous(csv, info_path, settings, problems)
    rows, sources = dict(old_rows), dict(old_sources)
    for seed in sorted(by_seed):
        files = {f"{i}+{i}": [by_seed[seed][i].vectors_path()] for i in layers}
        files |= {f"{i}+{j}": files[f"{i}+{i}"] + files[f"{j}+{j}"] for i in layers for j in layers if i < j}
        files |= {"base": [], "all": [refs[seed]]} | {name: [path] for name, path in extra.items()}
        src = {v: sorted(read_metadata(p)["sha256"] for p in paths) for v, paths in files.items()}
        known = reusable(old_rows.get(seed), old_sources.get(seed, {}), src)
        fresh = sorted(set(src) - set(known["variant"]) if known is not None else src)
        print(f"seed {seed}: {len(src) - len(fresh)} variants reused, evaluating {len(fresh)}"
              + (f": {', '.join(fresh)}" if fresh else ""), flush=True)
        singles = {layer: si.SteeringSet.load(by_seed[seed][layer].vectors_path(), model=model) for layer in layers}
        res = A.compose_pairs(model, task, singles, si.SteeringSet.load(refs[seed], model=model), mode=args.mode,
                              samples=args.samples, known=known,
                              extra={n: si.SteeringSet.load(p, model=model) for n, p in extra.items()})
        print(f"seed {seed}: base {res.base_accuracy:.1%}, all layers {res.all_layer_accuracy:.1%}", flush=True)
        rows[seed], sources[seed] = res.per_problem, src
        write(csv, info_path, rows, sources, settings, layers=layers, runs=args.runs, extra=extra,
              reference=args.reference, refs=refs)


def parse_extra(text: str) -> tuple[str, Path]:
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise SteerInterpError(f"--extra {text!r}: write NAME=PATH, e.g. all-60steps={LONG}")
    return name, Path(path)


def reference_paths(reference: str, runs, seeds: list[int]) -> dict[int, Path]:
    """Each training seed's all-layer reference: its equal-budget run's vectors, or one path for every seed."""
    if reference != "equal-budget":
        return {seed: Path(reference) for seed in seeds}
    found = {seed: run.vectors_path() for arm, seed, run in finished_runs(runs) if arm == "all"}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SteerInterpError(f"no finished equal-budget all-layer run {Path(runs) / f'all-seed{missing[0]}'}; run "
                               "examples/single_layer_sweep/train.py, or pass --reference PATH")
    return {seed: found[seed] for seed in seeds}


def previous(csv: Path, info_path: Path, settings: dict, problems: set[str]
             ) -> tuple[dict[int, pd.DataFrame], dict[int, dict]]:
    """The outcomes and per-variant vector digests of an earlier run with the same task, mode and samples and
    the same held-out problems, by training seed (nothing when there is none or it differs)."""
    if not (csv.exists() and info_path.exists()):
        return {}, {}
    info = json.loads(info_path.read_text())
    frame = pd.read_csv(csv, dtype={"problem": str}).rename(columns={"sample_seed": "seed"})
    if any(info.get(k) != v for k, v in settings.items()) or "sources" not in info or set(frame.problem) != problems:
        print(f"{csv.name}: written with other settings, problems or without vector digests; evaluating everything",
              flush=True)
        return {}, {}
    return ({int(s): g.drop(columns="train_seed") for s, g in frame.groupby("train_seed")},
            {int(s): src for s, src in info["sources"].items()})


def reusable(rows: pd.DataFrame | None, old: dict, new: dict) -> pd.DataFrame | None:
    """The earlier outcomes of every variant whose vector files have the same digests now, under today's names."""
    if rows is None:
        return None
    by_digest = {tuple(d): v for v, d in old.items()}
    parts = [rows[rows["variant"] == by_digest[tuple(d)]].assign(variant=v)
             for v, d in new.items() if tuple(d) in by_digest]
    return pd.concat(parts, ignore_index=True) if parts else None


def write(csv: Path, info_path: Path, rows: dict, sources: dict, settings: dict, **record) -> None:
    frame = pd.concat([r.assign(train_seed=s) for s, r in sorted(rows.items())], ignore_index=True)
    frame = frame.rename(columns={"seed": "sample_seed"})
    frame["correct"] = frame["correct"].astype(int)
    write_csv(frame, csv)
    info = {**settings, "layers": record["layers"], "training_seeds": sorted(rows),
            "runs": repo_relative(record["runs"]), "reference": record["reference"],
            "reference_paths": {str(s): repo_relative(p) for s, p in sorted(record["refs"].items())},
            "extra": {n: repo_relative(p) for n, p in record["extra"].items()},
            "sources": {str(s): src for s, src in sorted(sources.items())}}
    info_path.write_text(json.dumps(info, indent=1))


def repo_relative(path) -> str:
    """A path as the results file records it: relative to the repository when inside it."""
    root, p = HERE.parents[1], Path(path).resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)


if __name__ == "__main__":
    main()
