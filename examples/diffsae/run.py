"""DiffSAE (PAPER_NOTES section 4.6; Figs 7-8 of the second paper) on the embedded model.

1. Sample completions of the add1 problems from the model steered by the RL-trained all-layer
   vectors (temperature 1) and label them with the task's verifier.
2. Teacher-force them with and without steering; collect delta = h_steered - h_base at several
   layers, on the completion positions (``--rows all``: prompt rows too, never position 0; the earlier rule).
3. Train one TopK DiffSAE per layer with sae-lens on each distinct row once, 10% of the *problems* held out
   and a dictionary sized to the distinct rows (``--d-sae auto``); FVU, L0 and dead latents on the held-out
   problems. ``--no-dedupe --heldout-by generation --d-sae 2304 --rows all`` is the earlier protocol.
4. Rank features by how differently often they fire on correct vs incorrect generations (Fisher
   exact test, BH q-values); Fig 7 as grouped bars; top contexts and decoder logit lens (Fig 8).
5. Attribute the log-probability of the reference answer to the last SAE's features (activation x
   gradient with the error term), and steer with features (steer_features.py): the top attributed
   feature added to the base model, the feature most tied to incorrect generations removed from the
   steered model, each at its typical contribution.
6. ``ablate.py``: the causal ablation of the top features inside the steered run (KL share and accuracy).

    python examples/diffsae/run.py                  # about 10 minutes on 2 CPU threads
    python examples/diffsae/run.py --samples 2 --layers 15,29 --tag quick
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import steerinterp as si
from steerinterp import analysis as A
from steerinterp import sae as S
from steerinterp.app.examples import add_task_arguments, example_parser, example_task, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent
VECTORS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--vectors", default=str(VECTORS))
    ap.add_argument("--tag", default="add1", help="prefix of the results files (e.g. multistep for --task multistep:...)")
    add_task_arguments(ap)
    ap.add_argument("--layers", default="5,10,15,20,25,29")
    ap.add_argument("--samples", type=int, default=8, help="completions per problem")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--d-sae", default="auto", help="dictionary size: auto (sized to the distinct rows) or a number")
    ap.add_argument("--rows", default="completion", choices=["completion", "all"],
                    help="rows collected and trained on: completion positions (the papers' focus) or all")
    ap.add_argument("--heldout-by", default="problem", choices=["problem", "generation"])
    ap.add_argument("--no-dedupe", action="store_true", help="keep repeated rows (the earlier rule)")
    ap.add_argument("--passes", type=int, default=200,
                    help="passes over the training rows (20 under-trains ~900 rows: train FVU 0.3-0.6)")
    ap.add_argument("--batch-size", type=int, default=128,
                    help="SAE training batch (rows); add1's steered completions give only ~900 distinct rows a layer")
    ap.add_argument("--reuse-saes", action="store_true", help="load results/saes/layerN instead of training")
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    summary = {"layers": layers}

    vecs = si.SteeringSet.load(args.vectors, model=model)
    task, new_tokens = example_task(args)
    problems = list(task.train) + list(task.test)

    t0 = time.perf_counter()
    gens = S.sample_labelled(model, task, vecs, problems=problems, samples_per_problem=args.samples, seed=0,
                             max_new_tokens=new_tokens, progress=True)
    summary.update(generations=len(gens), accuracy=gens.accuracy, sampling_s=time.perf_counter() - t0)
    print(f"{len(gens)} steered generations, {gens.accuracy:.1%} correct ({time.perf_counter() - t0:.0f} s)")
    write_csv(gens.to_frame(), out / f"{args.tag}-generations.csv")

    t0 = time.perf_counter()
    diffs = S.collect_differences(model, gens, vecs, layers, positions=args.rows, batch_size=16)
    summary["collect_s"] = time.perf_counter() - t0
    print(f"collected {len(next(iter(diffs.values())))} rows per layer in {summary['collect_s']:.0f} s")

    quality, freqs, saes = [], {}, {}
    for layer in layers:
        d = diffs[f"blocks.{layer}.hook_resid_post"]
        if args.reuse_saes:
            dsae = S.load_diff_sae(out / "saes" / f"layer{layer}")
        else:
            dsae = S.train_diff_sae(d, k=args.k, d_sae=args.d_sae if args.d_sae == "auto" else int(args.d_sae),
                                    rows=args.rows, dedupe=not args.no_dedupe, heldout_by=args.heldout_by,
                                    batch_size=args.batch_size, passes=args.passes,
                                    model_name="SmolLM2-135M-Instruct")
            dsae.save(out / "saes" / f"layer{layer}")
        saes[layer] = dsae
        frame = dsae.to_frame()
        frame["layer"], frame["tokens_per_s"], frame["mean_delta_norm"] = layer, dsae.tokens_per_second, d.mean_norm()
        quality.append(frame)
        freqs[layer] = S.feature_frequencies(dsae, d)
        # the same, tested within problems: errors cluster on a few problems (e.g. "8 + 1")
        within = S.feature_frequencies(dsae, d, strata=gens.problem_index)
        write_csv(within.to_frame(k=30), out / f"{args.tag}-layer{layer}-frequencies-within-problems.csv")
        summary.setdefault("significant_within_problems", {})[layer] = int((within.q_value < 0.05).sum())
        h = dsae.heldout_quality
        print(f"layer {layer}: |delta| {d.mean_norm():.2f}, held-out FVU {h.fvu:.3f}, L0 {h.l0:.1f}, dead "
              f"{h.dead}/{h.d_sae}, {dsae.tokens_per_second:,.0f} tokens/s; top feature "
              f"{freqs[layer].top(1)[0]}: correct {freqs[layer].freq_correct[freqs[layer].top(1)[0]]:.2f} vs "
              f"incorrect {freqs[layer].freq_incorrect[freqs[layer].top(1)[0]]:.2f} "
              f"(q {freqs[layer].q_value[freqs[layer].top(1)[0]]:.2g})")
        write_csv(freqs[layer].to_frame(k=30), out / f"{args.tag}-layer{layer}-frequencies.csv")
        write_figure(freqs[layer].plot(), out / f"{args.tag}-layer{layer}-frequencies.html")
    import pandas as pd

    write_csv(pd.concat(quality), out / f"{args.tag}-sae-quality.csv")
    by_layer = S.frequencies_by_layer(freqs, k=3)
    write_csv(by_layer.to_frame(), out / f"{args.tag}-frequency-by-layer.csv")
    write_figure(by_layer.plot(), out / f"{args.tag}-frequency-by-layer.html")
    summary["significant_features"] = {layer: int((f.q_value < 0.05).sum()) for layer, f in freqs.items()}

    last = layers[-1]
    d_last = diffs[f"blocks.{last}.hook_resid_post"]
    top = freqs[last].top(3)
    ctx = S.top_contexts(model, saes[last], d_last, top, k=5, window=6)
    write_csv(ctx.to_frame(), out / f"{args.tag}-layer{last}-top-contexts.csv")
    lens = S.decoder_logit_lens(model, saes[last], top, mode="norm", k=10)
    write_csv(lens.to_frame(k=10), out / f"{args.tag}-layer{last}-decoder-lens.csv")
    for f in top:
        t = lens.to_frame(k=6)
        t = t[t.feature == f]
        print(f"layer {last} feature {f}: boosts {list(t[t.direction == 'boosted'].token)}; contexts "
              f"{list(ctx.to_frame().query('feature == @f').token)[:5]}")

    # attribution of log p(reference answer) to the last layer's features on held-out problems
    test = list(task.test)
    batch = A.teacher_forcing_batch(model, task.prompts(model, test), [p.final_answer for p in test])
    attr = S.sae_feature_attribution(model, batch, saes[last], A.completion_logprob_metric(), steering=vecs)
    write_csv(attr.to_frame(k=None), out / f"{args.tag}-layer{last}-attribution.csv")
    write_figure(attr.plot(), out / f"{args.tag}-layer{last}-attribution.html")
    summary["attribution"] = {"output_change": attr.output_change, "features": float(attr.attribution.sum()),
                              "error": float(attr.error.sum()), "bias": float(attr.bias.sum()),
                              "reference": float(attr.reference.sum()), "grad_x_input": float(attr.grad_x_input.sum()),
                              "top": attr.top(5), "top_positive": attr.top(1, sign="positive")[0]}
    print(f"attribution of log p(answer) at layer {last}: features {attr.attribution.sum():.2f}, error "
          f"{attr.error.sum():.2f}, output change {attr.output_change:.1e}; top features {attr.top(5)}")

    # steering with features: the top attributed one added, the top "incorrect" one removed (steer_features.py)
    from steer_features import feature_variants

    incorrect = freqs[last].top(1, toward="incorrect")[0]
    variants, norms = feature_variants(model, task, vecs, saes[last], attributed=summary["attribution"]["top_positive"],
                                       incorrect=incorrect, max_new_tokens=new_tokens)
    ev = evaluate(model, task, variants, samples=2, max_new_tokens=new_tokens)
    write_csv(ev.to_frame(), out / f"{args.tag}-layer{last}-feature-steering.csv")
    summary["feature_steering"] = {"norms": norms, "table": ev.to_frame().to_dict(orient="records")}
    print(f"typical contribution norms {norms}")
    print(ev.to_frame().to_string(index=False))
    summary["protocol"] = {"rows": args.rows, "heldout_by": args.heldout_by, "dedupe": not args.no_dedupe,
                           "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size,
                           "passes": args.passes}
    (out / f"{args.tag}-summary.json").write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
