"""Single-layer sweep ([SV] section 4, Fig 1): one steering vector at one layer, RL-trained alone, per layer.

For each layer, train (or reuse, from runs/single/layerN) a single-layer vector with RLOO on add1, then
evaluate base, every single-layer vector and the all-layer set on the held-out problems (greedy and
sampled at T=1). Like the papers (PAPER_NOTES 3.3), later layers get larger learning rates.

    python examples/single_layer_sweep/run.py                       # layers 0,5,10,14,20,25,28,29 (~30 min)
    python examples/single_layer_sweep/run.py --layers 10,29 --steps 6
"""

from __future__ import annotations

from pathlib import Path

import steerinterp as si
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.rl import TrainConfig, Trainer
from steerinterp.tasks import arithmetic_task
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent
ALL_LAYERS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def lr_for(layer: int, n_layers: int) -> float:
    """Per-layer learning rates in the spirit of PAPER_NOTES 3.3: ~10-100x the all-layer 3e-3, larger late."""
    if layer >= n_layers - 2:
        return 0.2
    return 0.1 if layer >= 2 * n_layers // 3 else 0.03


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--layers", default="0,5,10,14,20,25,28,29")
    ap.add_argument("--steps", type=int, default=12, help="RL steps for layers without a run in --runs")
    ap.add_argument("--runs", default="runs/single", help="where single-layer runs live (reused when finished)")
    ap.add_argument("--samples", type=int, default=2)
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model
    (out / "vectors").mkdir(parents=True, exist_ok=True)
    task = arithmetic_task("add1")
    layers = [int(x) for x in args.layers.split(",")]

    variants, runs = {"base": None}, []
    for layer in layers:
        run = si.RunDir(Path(args.runs) / f"layer{layer}")
        if run.vectors_path() is not None:
            cfg = run.record().config
            steps, lr = cfg["steps"], cfg["lr"]
        else:
            steps, lr = args.steps, lr_for(layer, model.cfg.n_layers)
            cfg = TrainConfig(steps=steps, layers=[layer], lr=lr)
            Trainer(model, task, cfg, out_dir=run, progress=True).train(resume=run.holds_run())
        vecs = si.SteeringSet.load(run.vectors_path(), model=model)
        vecs.save(out / "vectors" / f"layer{layer}", model=model, info={"steps": steps, "lr": lr})
        variants[f"layer {layer}"] = vecs
        runs.append({"layer": layer, "steps": steps, "lr": lr, "norm": float(vecs[layer].vector.norm())})
    variants["all layers"] = si.SteeringSet.load(ALL_LAYERS, model=model)

    ev = evaluate(model, task, variants, samples=args.samples)
    table = ev.to_frame()
    write_csv(table, out / "accuracy.csv")
    import pandas as pd

    write_csv(pd.DataFrame(runs), out / "runs.csv")
    print(pd.DataFrame(runs).to_string(index=False))
    print(table.to_string(index=False))

    import plotly.graph_objects as go

    fig = go.Figure()
    for col, colour in (("greedy_acc", "#2471a3"), ("sampled_acc", "#c0392b")):
        if col not in table:
            continue
        single = table[table.variant.str.startswith("layer ")]
        fig.add_trace(go.Scatter(x=[int(v.split()[1]) for v in single.variant], y=single[col], mode="lines+markers",
                                 name=f"single layer, {col}", line={"color": colour}))
        for name, dash in (("base", "dot"), ("all layers", "dash")):
            y = float(table[table.variant == name][col].iloc[0])
            fig.add_hline(y=y, line={"dash": dash, "color": colour}, annotation_text=f"{name} ({col}) {y:.2f}")
    fig.update_layout(title="held-out add1 accuracy with one RL-trained vector at one layer", xaxis_title="layer",
                      yaxis_title="accuracy", yaxis_range=[0, 1])
    write_figure(fig, out / "accuracy_by_layer.html")


if __name__ == "__main__":
    main()
