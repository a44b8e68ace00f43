"""Adaptive (token-wise) steering: where the magnitude goes along the sequence (PAPER_NOTES section 4.9).

A rank-1 token-wise steering (direction b, magnitude |b| a.u_t from the MLP hidden activation) RL-trained
on add1 at layers 10, 20 and 28 for 40 steps (``train.py``'s seed-0 adapter, committed in
``results/runs/adaptive-seed0``; ``--adaptive`` takes any other) is run over its own sampled completions. The heatmap
shows m_t / mean|MLP out| per layer and token with the chat-segment borders (system, user header, user
message, assistant header, generation); the table gives the mean |magnitude| per segment. ``seeds.py`` gives
the same per-segment readout over all three seeds and the frozen-read control, with intervals.

    python examples/adaptive_magnitudes/run.py
"""

from __future__ import annotations

from pathlib import Path

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.steering.adaptive import AdaptiveSteering
from steerinterp.tasks import arithmetic_task

HERE = Path(__file__).parent


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--adaptive", default=str(HERE / "results" / "runs" / "adaptive-seed0" / "final" / "adaptive.safetensors"),
                    help="a trained AdaptiveSteering (default: train.py's seed-0 adapter)")
    ap.add_argument("--problems", type=int, default=16)
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    if not Path(args.adaptive).is_file():
        raise SystemExit(f"no adapter at {args.adaptive}; run examples/adaptive_magnitudes/train.py --seeds 0 first")
    ad = AdaptiveSteering.load(args.adaptive, model=model)
    task = arithmetic_task("add1")
    problems = list(task.test)[: args.problems]
    rollouts = si.generate(model, task.prompts(model, problems), steering=ad, max_new_tokens=32, temperature=1.0, seed=0)
    res = A.adaptive_magnitudes(model, rollouts, ad)
    write_csv(res.to_frame(), out / "magnitudes.csv")
    write_csv(res.summary(), out / "summary.csv")
    seg = res.by_segment()
    write_csv(seg, out / "by_segment.csv", index=True)
    write_figure(res.plot("heatmap", sample=0), out / "heatmap_sample0.html")
    write_figure(res.plot("scatter"), out / "magnitude_vs_cos.html")
    print(res.summary().to_string(index=False))
    print(seg.round(4).to_string())


if __name__ == "__main__":
    main()
