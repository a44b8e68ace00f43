"""The papers' "To" control: does prefixing the answer with one token do what a last-layer vector does?

PAPER_NOTES section 4.4. Evaluate the base model, the base model with the assistant's turn started
by ``prefix`` (written into the prompt), and the steered model, on the same problems; report the
share of the vector's gain that the prefix recovers, ``(acc_prefix - acc_base) / (acc_steered -
acc_base)`` (about 75% on Qwen2.5-Math-7B in the papers), and how much probability the steered and
base models put on the prefix token as the first generated token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.readout import final_logprobs
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_id
from steerinterp.errors import SteerInterpError


@dataclass
class PrefixControlResult(AnalysisResult):
    evaluation: object  # EvalResult of base / base + prefix / steered
    prefix: str
    p_first_base: float  # mean p(prefix token) as the first generated token, base model
    p_first_steered: float

    def recovered(self, mode: str = "greedy") -> float:
        """Share of the steering gain recovered by the prefix (NaN when steering gains nothing)."""
        acc = {v: self.evaluation.accuracy(v, mode) for v in ("base", "base + prefix", "steered")}
        gain = acc["steered"] - acc["base"]
        return (acc["base + prefix"] - acc["base"]) / gain if abs(gain) > 1e-12 else float("nan")

    def to_frame(self):
        df = self.evaluation.to_frame()
        df["p_first_prefix"] = df["variant"].map({"base": self.p_first_base, "steered": self.p_first_steered,
                                                  "base + prefix": 1.0})
        return df

    def plot(self):
        fig = self.evaluation.plot()
        modes = ["greedy"] + (["sampled"] if any(r["mode"] == "sampled" for r in self.evaluation.rows) else [])
        rec = ", ".join(f"{m}: {self.recovered(m):.0%}" for m in modes)
        fig.update_layout(title=f"prefix {self.prefix!r} vs steering; share of the gain recovered: {rec}")
        return fig


@torch.no_grad()
def first_token_prob(model, prompts, token: int | Sequence[int], steering=None) -> float:
    """Mean probability of ``token`` (one id, or one per prompt) as the first generated token."""
    from steerinterp.analysis.batch import run_cached, teacher_forcing_batch

    tokens = [int(token)] * len(prompts) if isinstance(token, int) else [int(t) for t in token]
    if len(tokens) != len(prompts):
        raise SteerInterpError(f"{len(tokens)} tokens for {len(prompts)} prompts; give one id or one per prompt")
    batch = teacher_forcing_batch(model, prompts, [model.tokenizer.decode([t]) for t in tokens])
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = run_cached(model, batch, steering, [final])
    resid = cache[final][torch.arange(len(batch)), batch.last_prompt_index]
    lp = final_logprobs(model, resid)
    return float(lp[torch.arange(len(tokens)), torch.tensor(tokens, device=lp.device)].exp().mean())


def prefix_control(model, task, steering, *, prefix: str | Callable = "To", label: str | None = None, problems=None,
                   samples: int = 4, max_new_tokens: int = 32, seed: int = 0) -> PrefixControlResult:
    """Base vs base + ``prefix`` vs steered accuracy on ``task``'s test split (greedy and avg@samples).

    ``prefix``: a string (the papers' ``"To"``) or a function of the problem giving one (e.g. its first
    operand, when the vector's first token depends on the problem). ``p_first_*`` is the mean
    probability of the prefix's first token as the first generated token.
    """
    from steerinterp.tasks.evaluation import evaluate

    problems = list(task.test if problems is None else problems)
    texts = [prefix(p) if callable(prefix) else prefix for p in problems]
    if not all(isinstance(t, str) and t for t in texts):
        raise SteerInterpError("give a non-empty prefix, e.g. 'To'")
    if isinstance(prefix, str):
        token_id(model, prefix)  # a single-token prefix is the papers' setting; longer ones are named clearly
    first = [model.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in texts]
    label = label or (prefix if isinstance(prefix, str) else getattr(prefix, "__name__", "per-problem prefix"))
    kw = dict(problems=problems, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    res = evaluate(model, task, {"base": None}, **kw)
    res.rows += evaluate(model, task.with_assistant_prefix(prefix, label), {"base + prefix": None}, **kw).rows
    res.rows += evaluate(model, task, {"steered": steering}, **kw).rows
    prompts = task.prompts(model, problems)
    return PrefixControlResult(res, label, first_token_prob(model, prompts, first),
                               first_token_prob(model, prompts, first, steering))
