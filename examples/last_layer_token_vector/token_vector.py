"""A last-layer vector built by hand along one token's unembedding row (the embedded model).

It shows the papers' last-layer finding by construction: a vector along the unembedding row of
"Step", added after the last block at every position, substitutes the first generated token. The
script sweeps its norm, measures P("Step") at generation position 0 and the greedy completions, and
writes the vectors, the completions and a summary.

    python examples/last_layer_token_vector/token_vector.py --out examples/last_layer_token_vector/results
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEMO_QUESTIONS = [
    "What is 3 + 4? Answer with just the number.",
    "What is 12*7? Think step by step.",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A train travels 60 km in one hour. How far does it travel in 3 hours?",
    "What is 9 + 8? Answer with just the number.",
    "Sara reads 12 pages a day. How many pages does she read in a week?",
]


@dataclass
class DemoResult:
    model_name: str
    layer: int
    token: str
    scales: list[float]
    rows: list[dict] = field(default_factory=list)
    vectors: dict = field(default_factory=dict)  # scale -> SteeringSet

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> str:
        df = self.to_frame()
        lines = [
            f"steerinterp demo on {self.model_name}: a vector along W_U[{self.token!r}] added after block {self.layer}",
            "",
            f"scale | mean P(first token = {self.token!r}) | greedy completions starting with it",
        ]
        for s, g in df.groupby("scale"):
            starts = sum(c.lstrip().startswith(self.token) for c in g["completion"])
            lines.append(f"{s:5g} | {g['p_first_token'].mean():.3f} | {starts}/{len(g)}")
        lines += ["", "examples (first prompt):"]
        first = df[df["prompt_index"] == 0]
        for _, r in first.iterrows():
            lines.append(f"  scale {r['scale']:g}: {r['completion'][:90]!r}")
        return "\n".join(lines)


def run_demo(*, quick: bool = False, layer: int | None = None, token: str = "Step", progress: bool = False,
             model=None) -> DemoResult:
    import steerinterp as si

    model = model or si.load_model()
    layer = model.cfg.n_layers - 1 if layer is None else layer
    questions = DEMO_QUESTIONS[:3] if quick else DEMO_QUESTIONS
    scales = [0.0, 48.0] if quick else [0.0, 16.0, 32.0, 64.0]
    max_new = 24 if quick else 48
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise si.SteerInterpError(f"{token!r} is {len(ids)} tokens for this tokenizer; pick a single-token word")
    direction = model.W_U[:, ids[0]].detach()
    direction = direction / direction.norm()
    prompts = si.chat_prompts(model, questions)
    result = DemoResult(getattr(model.cfg, "model_name", "model"), layer, token, scales)
    for scale in scales:
        vecs = si.SteeringSet.from_tensors(model, {layer: direction * scale})
        out = si.generate(model, prompts, steering=vecs, max_new_tokens=max_new, temperature=0, progress=progress)
        p_first = _first_token_prob(model, out, vecs, ids[0])
        result.vectors[scale] = vecs
        for i, (q, text) in enumerate(zip(questions, out.texts)):
            result.rows.append({"scale": scale, "prompt_index": i, "question": q, "completion": text,
                                "p_first_token": float(p_first[i])})
    return result


@torch.no_grad()
def _first_token_prob(model, out, vecs, token_id: int) -> torch.Tensor:
    """P(token) at generation position 0 (the logits at the last prompt token), steered."""
    prompt_tokens = out.tokens[:, : out.prompt_length]
    mask = out.attention_mask[:, : out.prompt_length]
    with vecs.applied(model, attention_mask=mask, prompt_mask=mask.bool()):
        logits = model(prompt_tokens, attention_mask=mask)[:, -1]
    return torch.softmax(logits.float(), -1)[:, token_id].cpu()


def write_demo(result: DemoResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for scale, vecs in result.vectors.items():
        if scale:
            paths.append(vecs.save(out / f"vector_scale{scale:g}", info={"demo_token": result.token, "scale": scale}))
    comp = out / "completions.jsonl"
    comp.write_text("".join(json.dumps(r) + "\n" for r in result.rows))
    summ = out / "summary.txt"
    summ.write_text(result.summary() + "\n")
    return paths + [comp, summ]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--token", default="Step")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    res = run_demo(quick=args.quick, token=args.token)
    write_demo(res, Path(args.out))
    print(res.summary())
