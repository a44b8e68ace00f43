"""Cost of one RL step on the embedded model, split into sampling and gradient, with baselines.

Prints, for the papers' setting (8 prompts x 8 samples, 32 new tokens, one vector per layer):
* sampling: steerinterp.generate vs transformers generate with equivalent steering hooks;
* gradient pass: shared-prompt pass (each prompt once, KV cache with gradients) vs the plain full pass,
  both relative to a no-grad forward over the same tokens;
* a single last-layer vector: the pass that starts at the steered layer vs one through every block.

    python benchmarks/rl_step.py [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steerinterp as si
from steerinterp.models.gguf import gguf_to_hf_checkpoint
from steerinterp.tasks import arithmetic_task


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = si.load_model(device="cpu")
    task = arithmetic_task("add1")
    prompts = [p for p in task.prompts(model, task.train[:8]) for _ in range(8)]
    seeds = list(range(len(prompts)))
    vecs = si.SteeringSet.zeros(model, "all")
    with torch.no_grad():
        for v in vecs:
            v.vector.normal_(0, 0.3)
    directory = gguf_to_hf_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.padding_side = "left"
    def adder(v):
        return lambda m, a, o: o + v if not isinstance(o, tuple) else (o[0] + v,) + o[1:]

    hooks = [layer.register_forward_hook(adder(v.vector.detach())) for layer, v in zip(hf.model.layers, vecs)]

    def sample_hf():
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(0)
        with torch.no_grad():
            hf.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=32,
                        pad_token_id=tok.pad_token_id)

    out = si.generate(model, prompts, steering=vecs, max_new_tokens=32, seed=seeds)
    t_ours = best_of(lambda: si.generate(model, prompts, steering=vecs, max_new_tokens=32, seed=seeds), args.repeats)
    t_hf = best_of(sample_hf, args.repeats)
    for h in hooks:
        h.remove()
    mean_len = out.completion_lengths.float().mean()
    print(f"threads={args.threads}; batch {len(prompts)} x up to 32 new tokens (mean {mean_len:.1f})")
    print(f"sampling: steerinterp {t_ours:.2f} s | transformers generate {t_hf:.2f} s | ratio (hf/ours) {t_hf / t_ours:.2f}")

    def grad(v, shared):
        lp = si.teacher_forced_logprobs(model, out.tokens, out.completion_mask, v, attention_mask=out.attention_mask,
                                        prompt_length=out.prompt_length if shared else None)
        lp.sum().backward()

    def nograd():
        with torch.no_grad():
            model(out.tokens, attention_mask=out.attention_mask)

    t_fwd = best_of(nograd, args.repeats)
    t_shared = best_of(lambda: grad(vecs, True), args.repeats)
    t_plain = best_of(lambda: grad(vecs, False), args.repeats)
    print(f"no-grad forward over the same tokens: {t_fwd:.2f} s")
    print(f"gradient pass, all layers: shared prompts {t_shared:.2f} s ({t_shared / t_fwd:.2f}x no-grad forward) | "
          f"plain {t_plain:.2f} s ({t_plain / t_fwd:.2f}x)")
    last = si.SteeringSet.zeros(model, [model.cfg.n_layers - 1])

    def grad_last(skip):
        lp = si.teacher_forced_logprobs(model, out.tokens, out.completion_mask, last, attention_mask=out.attention_mask,
                                        prompt_length=out.prompt_length, skip_frozen_prefix=skip)
        lp.sum().backward()

    t_skip = best_of(lambda: grad_last(True), args.repeats)
    t_noskip = best_of(lambda: grad_last(False), args.repeats)
    print(f"gradient pass, last-layer vector: from the steered layer {t_skip:.2f} s ({t_skip / t_fwd:.2f}x) | "
          f"through every block {t_noskip:.2f} s ({t_noskip / t_fwd:.2f}x)")


if __name__ == "__main__":
    main()
