"""Transfer of steering vectors between two members of a model family (PAPER_NOTES section 4.7).

With one embedded model, the family's second member is its RL-fully-fine-tuned variant
(``examples/rl_arithmetic/run.py --parametrisation full``). Each model's own add1 vectors are copied,
layer by layer, onto the other; accuracies are normalised per recipient as
(acc_transfer - acc_base) / (acc_own - acc_base). Beyond the papers, a least-squares map between
the two models' residual streams (fitted on paired activations) is compared with plain copying.

    python examples/transfer/run.py --finetuned runs/rl_arithmetic/add1-full-seed0/final \
        --finetuned-vectors runs/transfer/ft-vectors/final
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.models import load_finetuned
from steerinterp.tasks import arithmetic_task
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent
BASE_VECTORS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--finetuned", default="runs/rl_arithmetic/add1-full-seed0/final")
    ap.add_argument("--base-vectors", default=str(BASE_VECTORS))
    ap.add_argument("--finetuned-vectors", default=str(HERE / "results" / "vectors-finetuned"))
    ap.add_argument("--mode", default="greedy", choices=["greedy", "sampled"])
    ex = start_example(ap)
    args, out, base = ex.args, ex.out, ex.model
    tuned = load_finetuned(args.finetuned)
    models = {"base": base, "full-FT": tuned}
    vectors = {"base": si.SteeringSet.load(args.base_vectors, model=base),
               "full-FT": si.SteeringSet.load(args.finetuned_vectors, model=tuned)}
    task = arithmetic_task("add1")
    grid = A.transfer_grid(models, vectors, task, mode=args.mode)
    write_csv(grid.to_frame(), out / f"transfer_{args.mode}.csv")
    write_figure(grid.plot(), out / f"transfer_{args.mode}.html")
    print(grid.to_frame().to_string(index=False))

    # beyond the papers: carry the base model's vectors through a fitted residual map instead of copying
    texts = [prompt + f"{q.final_answer}" for prompt, q in zip(task.prompts(base, task.train), task.train)]
    fit = A.fit_residual_map(base, tuned, texts, pairs={layer: layer for layer in range(base.cfg.n_layers)})
    mapped = fit.apply(vectors["base"], tuned)
    ev = evaluate(tuned, task, {"copied": A.transfer_vectors(vectors["base"], tuned), "mapped": mapped},
                  samples=4 if args.mode == "sampled" else 0, greedy=args.mode == "greedy")
    cos = {layer: float(torch.nn.functional.cosine_similarity(mapped[layer].vector.double(),
                                                              vectors["base"][layer].vector.double(), dim=0))
           for layer in mapped.layers}
    summary = {"map_r2": fit.r2, "copied": ev.accuracy("copied", args.mode), "mapped": ev.accuracy("mapped", args.mode),
               "cos_mapped_vs_copied": cos}
    (out / f"residual_map_{args.mode}.json").write_text(json.dumps(summary, indent=2))
    write_figure(fit.plot(), out / "residual_map_r2.html")
    print(f"base vectors on the fine-tuned model: copied {summary['copied']:.1%}, "
          f"through the fitted map {summary['mapped']:.1%}; map R^2 {min(fit.r2.values()):.3f}..{max(fit.r2.values()):.3f}")


if __name__ == "__main__":
    main()
