"""The papers' "To" control: does prefixing the answer with one token do what a last-layer vector does?

PAPER_NOTES section 4.4. Evaluate the base model, the base model with the assistant's turn started
by ``prefix`` (written into the prompt), and the steered model, on the same problems; report the
share of the vector's gain that the prefix recovers, ``(acc_prefix - acc_base) / (acc_steered -
acc_base)`` (about 75% on Qwen2.5-Math-7B in the papers), and how much probability the steered and
base models put on the prefix token as the first generated token.
"""

from __future__ import annotations

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
def first_token_prob(model, prompts, token: int, steering=None) -> float:
    """Mean probability of ``token`` as the first generated token after each prompt."""
    from steerinterp.analysis.batch import steering_context, teacher_forcing_batch

    batch = teacher_forcing_batch(model, prompts, [model.tokenizer.decode([token])] * len(prompts))
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with steering_context(model, steering, batch):
        _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, names_filter=[final],
                                        return_type=None)
    resid = cache[final][torch.arange(len(batch)), batch.last_prompt_index]
    return float(final_logprobs(model, resid)[:, token].exp().mean())


def prefix_control(model, task, steering, *, prefix: str = "To", problems=None, samples: int = 4,
                   max_new_tokens: int = 32, seed: int = 0) -> PrefixControlResult:
    """Base vs base + ``prefix`` vs steered accuracy on ``task``'s test split (greedy and avg@samples)."""
    from steerinterp.evaluate import evaluate

    if not prefix:
        raise SteerInterpError("give a non-empty prefix, e.g. 'To'")
    tok = token_id(model, prefix)
    problems = list(task.test if problems is None else problems)
    kw = dict(problems=problems, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    res = evaluate(model, task, {"base": None}, **kw)
    res.rows += evaluate(model, task.with_assistant_prefix(prefix), {"base + prefix": None}, **kw).rows
    res.rows += evaluate(model, task, {"steered": steering}, **kw).rows
    prompts = task.prompts(model, problems)
    return PrefixControlResult(res, prefix, first_token_prob(model, prompts, tok),
                               first_token_prob(model, prompts, tok, steering))
