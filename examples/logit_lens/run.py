"""Logit lens of RL-trained steering vectors, their statistics, their languages, and a residual-stream lens.

PAPER_NOTES sections 4.3 and 4.2 (final-layer readout). Uses the all-layer vectors trained by
``examples/rl_arithmetic`` (a copy ships in its results/), on the embedded SmolLM2-135M-Instruct.

    python examples/logit_lens/run.py
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
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--skip-residual-lens", action="store_true",
                    help="only the vector read-outs and the language test (no generation)")
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    vecs = si.SteeringSet.load(args.vectors, model=model)

    stats = A.vector_stats(vecs)
    write_csv(stats.to_frame(), out / "vector_norms.csv")
    write_figure(stats.plot(), out / "vector_stats.html")
    print(f"vector norms {stats.norms.min():.3f}..{stats.norms.max():.3f}, stable rank {stats.stable_rank:.2f}")

    for mode in ("raw", "norm"):
        lens = A.vector_logit_lens(model, vecs, mode=mode, k=args.k)
        write_csv(lens.to_frame(), out / f"logit_lens_{mode}_top{args.k}.csv")
        write_figure(lens.plot("histogram"), out / f"logit_lens_{mode}_histograms.html")
        write_figure(lens.plot("top", layer=model.cfg.n_layers - 1), out / f"logit_lens_{mode}_last_layer.html")
        lang = A.language_shares(lens)
        write_csv(lang.to_frame().drop(columns="scripts"), out / f"language_{mode}.csv")
        write_figure(lang.plot(), out / f"language_{mode}.html")
        df = lang.to_frame()
        sup = df[df.direction == "suppressed"]
        print(f"[{mode}] vocabulary non-English rate {lang.base_rate:.1%}; suppressed top-{args.k} non-English share "
              f"median {sup.non_english_share.median():.1%}, layers significant after Benjamini-Hochberg: "
              f"{list(sup[sup.significant].layer)}")
        last = lens.to_frame(k=8)
        last = last[last.layer == model.cfg.n_layers - 1]
        print(f"[{mode}] last layer boosted: {list(last[last.direction == 'boosted'].token)}")
        print(f"[{mode}] last layer suppressed: {list(last[last.direction == 'suppressed'].token)}")

    if args.skip_residual_lens:
        return
    # residual-stream lens on the steered model's own completions of held-out problems
    task = arithmetic_task("add1")
    problems = list(task.test)[: args.problems]
    rollouts = si.generate(model, task.prompts(model, problems), steering=vecs, max_new_tokens=32, temperature=1.0, seed=0)
    first = model.tokenizer.decode(rollouts.completion_tokens[0][:1])
    track = ["To", first] if first != "To" else ["To"]
    for positions in ("first", "completion"):
        rl = A.residual_logit_lens(model, rollouts, vecs, positions=positions, track=track)
        write_csv(rl.to_frame(), out / f"residual_lens_{positions}.csv")
        write_figure(rl.plot(), out / f"residual_lens_{positions}.html")
        print(f"residual lens ({positions}): KL at the last layer {rl.kl[-1]:.3f}, top-1 agreement {rl.top1_agreement[-1]:.2f}")


if __name__ == "__main__":
    main()
