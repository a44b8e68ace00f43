"""Accuracy of base vs steered models on a task's held-out split: greedy and sampled (avg@k over seeds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from steerinterp.generation.decode import generate
from steerinterp.tasks.base import Problem, Task


@dataclass
class EvalResult:
    """Per-variant accuracies. ``rows`` has one entry per (variant, mode, seed, problem)."""

    task: str
    rows: list[dict] = field(default_factory=list)

    def to_frame(self):
        """Summary: one row per variant with greedy accuracy and sampled avg@k (mean and std over seeds)."""
        import pandas as pd

        df = pd.DataFrame(self.rows)
        out = []
        for variant, g in df.groupby("variant", sort=False):
            row = {"variant": variant, "n_problems": g["problem"].nunique()}
            greedy = g[g["mode"] == "greedy"]
            if len(greedy):
                row["greedy_acc"] = greedy["correct"].mean()
            sampled = g[g["mode"] == "sampled"]
            if len(sampled):
                per_seed = sampled.groupby("seed")["correct"].mean()
                row["sampled_acc"] = per_seed.mean()
                row["sampled_acc_std"] = per_seed.std(ddof=0)
                row["k"] = len(per_seed)
            row["mean_len"] = g["n_tokens"].mean()
            out.append(row)
        return pd.DataFrame(out)

    def details(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def accuracy(self, variant: str, mode: str = "greedy") -> float:
        vals = [r["correct"] for r in self.rows if r["variant"] == variant and r["mode"] == mode]
        return sum(vals) / len(vals)

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        if "greedy_acc" in df:
            fig.add_bar(x=df["variant"], y=df["greedy_acc"], name="greedy")
        if "sampled_acc" in df:
            fig.add_bar(x=df["variant"], y=df["sampled_acc"], name="sampled avg@k",
                        error_y={"type": "data", "array": df["sampled_acc_std"]})
        fig.update_layout(barmode="group", yaxis_title="accuracy", title=f"held-out accuracy: {self.task}")
        return fig

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def evaluate(
    model,
    task: Task,
    variants: Mapping[str, object | None] | None = None,
    *,
    problems: Sequence[Problem] | None = None,
    greedy: bool = True,
    samples: int = 4,
    seed: int = 0,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    batch_size: int = 64,
    engine="auto",
    progress: bool = False,
) -> EvalResult:
    """Evaluate each variant (``{"base": None, "steered": vecs}``) on the test split.

    ``samples`` sampled completions per problem at ``temperature`` give avg@k (one seed each).
    ``engine`` is passed to ``generate`` (a name, or an engine object such as a ``PatchedEngine``).
    ``progress`` shows a bar over the (variant, mode) runs.
    """
    from tqdm.auto import tqdm

    variants = {"base": None} if variants is None else dict(variants)
    problems = list(task.test if problems is None else problems)
    prompts = task.prompts(model, problems)
    result = EvalResult(task.name)
    modes = ([("greedy", None)] if greedy else []) + [("sampled", seed + k) for k in range(samples)]
    bar = tqdm(total=len(variants) * len(modes), desc="evaluate", disable=not progress)
    for name, steering in variants.items():
        for mode, s in modes:
            bar.set_postfix_str(f"{name} {mode}")
            seeds = None if s is None else [s * 100_003 + i for i in range(len(prompts))]
            out = generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens,
                           temperature=0.0 if mode == "greedy" else temperature, seed=seeds, batch_size=batch_size,
                           engine=engine)
            lengths = out.completion_lengths.tolist()
            for i, (p, text) in enumerate(zip(problems, out.texts)):
                result.rows.append({"variant": name, "mode": mode, "seed": s, "problem": p.id or i,
                                    "correct": bool(task.is_correct(text, p)), "n_tokens": lengths[i],
                                    "completion": text})
            bar.update()
    bar.close()
    return result
