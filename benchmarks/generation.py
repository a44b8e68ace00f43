"""Steered sampling speed: steerinterp.generate vs plain transformers generate with a steering hook.

Both run on the embedded model's weights in this process with the same thread count, sample at
temperature 1 with one vector per layer added after every block (the papers' setting), and generate
exactly --new-tokens tokens per row (no EOS stop). Prints tokens/s and the ratio (goal: >= 0.9).

    python benchmarks/generation.py [--batches 1 8 32] [--new-tokens 128] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steerinterp as si
from steerinterp.models.gguf import gguf_to_hf_checkpoint

QUESTIONS = [
    "What is 3 + 4? Answer with just the number.",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "What is 12*7? Think step by step.",
    "Name three colours.",
]


def hf_generate(hf, tok, prompts, vectors, new_tokens, seed):
    handles = [
        layer.register_forward_hook(lambda m, a, out, v=v: (out[0] + v,) + out[1:] if isinstance(out, tuple) else out + v)
        for layer, v in zip(hf.model.layers, vectors)
    ]
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hf.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    finally:
        for h in handles:
            h.remove()


def si_generate(model, prompts, vecs, new_tokens, seed, engine):
    out = si.generate(model, prompts, steering=vecs, max_new_tokens=new_tokens, temperature=1.0, seed=seed,
                      stop_at_eos=False, engine=engine)
    return int(out.completion_lengths.sum())


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hooked", action="store_true", help="also time the HookedTransformer reference engine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = si.load_model(device="cpu")
    directory = gguf_to_hf_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.padding_side = "left"
    g = torch.Generator().manual_seed(0)
    tensors = {layer: 0.5 * torch.randn(model.cfg.d_model, generator=g) for layer in range(model.cfg.n_layers)}
    vecs = si.SteeringSet.from_tensors(model, tensors)
    vectors = [tensors[layer] for layer in range(model.cfg.n_layers)]
    print(f"threads={args.threads} new_tokens={args.new_tokens} repeats={args.repeats} (median tokens/s)")
    si_generate(model, QUESTIONS[:1], vecs, 4, 0, "auto")  # build the fast engine once, outside the timing
    rows = []
    for b in args.batches:
        prompts = si.chat_prompts(model, [QUESTIONS[i % len(QUESTIONS)] for i in range(b)])
        base, ours, hooked = [], [], []
        for r in range(args.repeats):
            base.append(timed(lambda p=prompts, r=r: hf_generate(hf, tok, p, vectors, args.new_tokens, r)))
            ours.append(timed(lambda p=prompts, r=r: si_generate(model, p, vecs, args.new_tokens, r, "auto")))
            if args.hooked:
                hooked.append(timed(lambda p=prompts, r=r: si_generate(model, p, vecs, args.new_tokens, r, "hooked")))
        hb, ho = statistics.median(base), statistics.median(ours)
        line = f"batch {b:3d}: transformers {hb:7.1f} tok/s | steerinterp {ho:7.1f} tok/s | ratio {ho / hb:.2f}"
        if hooked:
            hh = statistics.median(hooked)
            line += f" | hooked engine {hh:7.1f} tok/s (ratio {hh / hb:.2f})"
        print(line, flush=True)
        rows.append(ho / hb)
    print(f"min ratio {min(rows):.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
