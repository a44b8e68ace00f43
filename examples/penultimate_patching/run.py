"""The penultimate-layer circuit: which parts of the last block carry a layer-28 vector's effect.

PAPER_NOTES section 4.5 ([SV] Figs 5, 6, 20, 21). A single vector at the penultimate block (layer 28
of 30), RL-trained on add1 (``steerinterp train --task arithmetic:add1 --layers 28 --lr 0.2 --steps 30``;
a copy ships in results/), is patched inside the last block: Skip-Attn, Skip-Layer, Skip-Head h,
Steer-Head h, Q/K/V per head or key-value group, and the head -> MLP-only / residual-only paths.
Token level: KL to the base model at the first generated token and along completions. Through
generation: held-out accuracy under each patch. Plus the attention diff of every head and the
route attribution of the logit change (direct path vs the last block's attention and MLP).

    python examples/penultimate_patching/run.py

``--task`` runs it on another task, e.g. the multi-step level (``--task multistep:word_addsub --vectors PATH
--out results/multistep``), with that task's completion length.
"""

from __future__ import annotations

import json
from pathlib import Path

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import add_task_arguments, example_parser, example_task, start_example, write_csv
from steerinterp.app.figures import write_figure

HERE = Path(__file__).parent


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--vectors", default=str(HERE / "results" / "vector-layer28"))
    ap.add_argument("--problems", type=int, default=41, help="training problems to sample completions for")
    ap.add_argument("--samples", type=int, default=0, help="sampled evaluations per patch (greedy is always run)")
    ap.add_argument("--stages", default="tokens,attention,routes,accuracy",
                    help="comma-separated subset of tokens, attention, routes, accuracy")
    add_task_arguments(ap)
    ap.add_argument("--heldout", type=int, default=None, help="only the first N held-out problems (accuracy stage)")
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    vec = si.SteeringSet.load(args.vectors, model=model)
    task, new_tokens = example_task(args)
    problems = list(task.train)[: args.problems]
    rollouts = si.generate(model, task.prompts(model, problems), steering=vec, max_new_tokens=new_tokens,
                           temperature=1.0, seed=0)

    shift = A.token_shift(model, rollouts, vec)
    pos0 = shift.to_frame()
    top = pos0[pos0["pos"] == 0]["dst"].value_counts().index[0]
    print(f"most boosted first token: {top!r}")

    stages = set(args.stages.split(","))
    patches = A.standard_patches(model)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    for positions in ("first", "completion") if "tokens" in stages else ():
        res = A.block_patching(model, rollouts, vec, patches, positions=positions, track=[top])
        write_csv(res.to_frame(), out / f"patching_{positions}.csv")
        write_figure(res.plot("retained"), out / f"patching_{positions}_skip_head.html")
        write_figure(res.plot("retained", prefix="steer_head["), out / f"patching_{positions}_steer_head.html")
        df = res.to_frame().set_index("patch")
        summary[positions] = df["retained"].to_dict()
        print(f"[{positions}] retained share of KL(steered || base): "
              + ", ".join(f"{p} {df.loc[p, 'retained']:.2f}" for p in ("skip_attn", "skip_layer", "skip_attn->mlp",
                                                                          "skip_attn->resid")))
        heads = df[df.index.str.fullmatch(r"skip_head\[\d+\]")]["retained"]
        print(f"[{positions}] skip_head retained: min {heads.min():.2f} max {heads.max():.2f}")

    if "attention" in stages:
        att = A.attention_diff(model, rollouts, vec, layers=[model.cfg.n_layers - 1])
        write_csv(att.to_frame(), out / "attention_diff_last_block.csv")
        write_figure(att.plot(), out / "attention_diff_last_block.html")
        print(att.top(3).round(3).to_string(index=False))
    if "routes" in stages:
        routes = A.route_attribution(model, rollouts, vec, tokens=[top], positions="first")
        write_csv(routes.summary(), out / "routes_first_token.csv", index=True)
        write_figure(routes.plot(), out / "routes_first_token.html")
        print(routes.summary().round(3).to_string())
    if "accuracy" not in stages:
        summary_file.write_text(json.dumps(summary, indent=2))
        return
    # through generation: the references, every head, every key-value group, and the two attention paths
    keep = ("no_patch", "base", "skip_attn", "skip_layer", "skip_head[", "k[", "v[", "skip_attn->")
    acc_patches = [p for p in patches if p.name.startswith(keep) and not (p.name.startswith("skip_head[") and "->" in p.name)]
    acc = A.patched_accuracy(model, task, vec, acc_patches, samples=args.samples, max_new_tokens=new_tokens,
                             problems=list(task.test)[: args.heldout])
    table = acc.to_frame()
    write_csv(table, out / "patched_accuracy.csv")
    write_figure(acc.plot(), out / "patched_accuracy_skip_head.html")
    write_figure(acc.plot(prefix="k["), out / "patched_accuracy_k.html")
    write_figure(acc.plot(prefix="v["), out / "patched_accuracy_v.html")
    summary["accuracy_greedy"] = dict(zip(table["variant"], table["greedy_acc"]))
    summary_file.write_text(json.dumps(summary, indent=2))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
