"""The main job's wall time per precision: `steerinterp demo` (training, evaluation, analyses) in float32 and
bfloat16, one after the other in this process, with the float32 run as the same-run baseline.

Prints, per dtype, the wall time of each part (model load, training, evaluation, each analysis) and the total,
the bfloat16 / float32 ratios, and the issue's goals (the full demo in 8 minutes, ``--quick`` in 2, on 2 cores).
The demo's own writing (report, figures) is not timed. bfloat16 is skipped, saying why, on a CPU without AMX-BF16
or AVX512-BF16 (emulated there: tens of times slower) unless ``--dtypes`` names it.

    python benchmarks/demo_time.py --quick                       # both dtypes, --quick (about 15 minutes)
    python benchmarks/demo_time.py --dtypes bfloat16             # the full demo in bfloat16 only
    [--threads 2] [--json benchmarks/results/demo-time-<cpu>.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

GOAL_SECONDS = {"full": 8 * 60, "quick": 2 * 60}


def timed_demo(dtype: torch.dtype, quick: bool) -> dict:
    """Wall seconds of each part of one demo run in ``dtype``."""
    import steerinterp as si
    from steerinterp.app.demo import run_demo

    t0 = time.perf_counter()
    model = si.load_model(dtype=dtype)
    loaded = time.perf_counter()
    result = run_demo(quick=quick, model=model)
    done = time.perf_counter()
    metrics = result.training.to_frame()
    train = float(metrics["seconds_sampling"].sum() + metrics["seconds_gradient"].sum())
    analyses = {name: f.seconds for name, f in result.analysis.findings.items()} if result.analysis else {}
    return {"load": loaded - t0, "training (sampling + gradient)": train,
            "evaluation and the rest": done - loaded - train - sum(analyses.values()),
            **{f"analysis: {k}": v for k, v in analyses.items()}, "total": done - t0,
            "steps": int(len(metrics)), "engine": str(metrics["engine"].iloc[-1]) if "engine" in metrics else None}


def main():
    from steerinterp.models import cpu_bf16_flags
    from steerinterp.models.precision import cpu_name, parse_dtype

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time `steerinterp demo --quick` (8 steps, reduced analyses)")
    ap.add_argument("--dtypes", nargs="+", default=None,
                    help="dtypes to time (default: float32, plus bfloat16 where the CPU multiplies it natively)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_bf16_flags()
    dtypes = [parse_dtype(d) for d in args.dtypes] if args.dtypes else [torch.float32] + (
        [torch.bfloat16] if flags else [])
    if not args.dtypes and not flags:
        print("bfloat16 skipped: emulated on this CPU (no amx_bf16 / avx512_bf16); --dtypes bfloat16 runs it anyway")
    kind = "quick" if args.quick else "full"
    print(f"{cpu_name()} ({', '.join(flags) or 'no bfloat16 flags'}), {args.threads} threads, demo {kind}; "
          f"goal <= {GOAL_SECONDS[kind]} s")
    runs = {}
    for dt in dtypes:
        name = str(dt).removeprefix("torch.")
        runs[name] = timed_demo(dt, args.quick)
        print(f"\n{name}:")
        for part, sec in runs[name].items():
            if isinstance(sec, float):
                print(f"  {part:40s} {sec:8.1f} s")
    if "float32" in runs and len(runs) > 1:
        for name, r in runs.items():
            if name != "float32":
                print(f"\n{name} / float32 total: {r['total'] / runs['float32']['total']:.2f} "
                      f"({runs['float32']['total'] / r['total']:.2f}x faster)")
    for name, r in runs.items():
        print(f"{name}: {r['total']:.0f} s against the goal of {GOAL_SECONDS[kind]} s "
              f"({'met' if r['total'] <= GOAL_SECONDS[kind] else 'not met'})")
    if args.json:
        record = {"cpu": cpu_name(), "bf16_flags": flags, "threads": args.threads, "demo": kind,
                  "goal_seconds": GOAL_SECONDS[kind], "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S"),
                  "torch": torch.__version__, "runs": runs}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
