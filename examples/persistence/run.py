"""Persistence of steering vectors through later layers (Diff-Vector / Diff-Diff matrices) and the
logit lens of each vector's final-layer mean shift. PAPER_NOTES section 4.2.

Each layer's vector of an RL-trained set is put into the model alone; its effect on every later
layer's residual stream is measured on teacher-forced completions sampled from the steered model.

    python examples/persistence/run.py                                   # the all-layer add1 vectors
    python examples/persistence/run.py --vectors runs/single/layer28/final --tag single28
"""

from __future__ import annotations

from pathlib import Path

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.tasks import arithmetic_task

HERE = Path(__file__).parent
VECTORS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--vectors", default=str(VECTORS))
    ap.add_argument("--tag", default="add1-all-layers")
    ap.add_argument("--problems", type=int, default=16)
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    vecs = si.SteeringSet.load(args.vectors, model=model)
    task = arithmetic_task("add1")
    problems = list(task.test)[: args.problems]
    rollouts = si.generate(model, task.prompts(model, problems), steering=vecs, max_new_tokens=32, temperature=1.0, seed=0)

    res = A.persistence(model, rollouts, vecs)
    write_csv(res.to_frame(), out / f"{args.tag}-persistence.csv")
    write_figure(res.plot(), out / f"{args.tag}-persistence.html")
    df = res.to_frame()
    later = df[df.observed_layer > df.steered_layer]
    print(f"{res.n_tokens} tokens; off-diagonal Diff-Diff mean {later.diff_diff.mean():.3f} "
          f"(min {later.diff_diff.min():.3f}); Diff-Vector mean {later.diff_vector.mean():.3f}; "
          f"mean-diff vs vector mean {later.mean_diff_vector.mean():.3f}")
    one_after = later[later.observed_layer == later.steered_layer + 1]
    print(f"one layer later: Diff-Diff {one_after.diff_diff.mean():.3f}, |delta| / |s| "
          f"{(one_after.delta_norm.values / res.delta_norm.diagonal()[:-1].numpy()).mean():.2f}")

    # the final-layer mean shift v_l of each steered layer, read through the logit lens
    lens = A.vector_logit_lens(model, res.final_shifts, mode="raw")
    write_csv(lens.to_frame(k=20), out / f"{args.tag}-final-shift-lens.csv")
    write_figure(lens.plot("histogram"), out / f"{args.tag}-final-shift-lens.html")
    lang = A.language_shares(lens)
    write_csv(lang.to_frame().drop(columns="scripts"), out / f"{args.tag}-final-shift-language.csv")
    write_figure(lang.plot(), out / f"{args.tag}-final-shift-language.html")
    shifts = A.vector_stats(res.final_shifts)
    write_figure(shifts.plot(), out / f"{args.tag}-final-shift-stats.html")
    for layer in (res.steered_layers[0], res.steered_layers[len(res.steered_layers) // 2], res.steered_layers[-1]):
        t = lens.to_frame(k=6)
        t = t[t.layer == layer]
        up, down = list(t[t.direction == "boosted"].token), list(t[t.direction == "suppressed"].token)
        print(f"v_{layer}: boosted {up} suppressed {down}")


if __name__ == "__main__":
    main()
