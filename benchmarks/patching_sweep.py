"""A per-head patching sweep of one block: steerinterp's batched sweep vs one forward per head.

On the embedded model with a penultimate-layer vector, Skip-Head h for every head of the last block:
* batched: ``patched_final_residuals`` (the blocks before the patched one run once, then one stacked
  forward of the rest for all heads);
* naive: for each head, a full forward of the steered model with that head's ``z`` patched from a cached
  base run (``run_with_hooks``), as one would write it by hand.
Both give the same final residuals (checked here); the script prints the time ratio.

    python benchmarks/patching_sweep.py [--threads 2] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.analysis.block_patching import Patch, patched_final_residuals
from steerinterp.tasks import arithmetic_task


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = si.load_model()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layer = n_layers - 1
    s = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 20
    vecs = si.SteeringSet.from_tensors(model, {layer - 1: s})
    task = arithmetic_task("add1")
    prompts = task.prompts(model, list(task.test)[: args.batch])
    batch = A.as_batch(si.generate(model, prompts, steering=vecs, max_new_tokens=24, temperature=1.0, seed=0))
    patches = [Patch(f"skip_head[{h}]", z_heads=(h,)) for h in range(n_heads)]

    def batched():
        return patched_final_residuals(model, batch, vecs, patches, layer)

    def naive():
        _, base = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask,
                                       names_filter=[f"blocks.{layer}.attn.hook_z"])
        z_base = base[f"blocks.{layer}.attn.hook_z"]
        outs, grab = [], {}

        def keep(act, hook):
            grab["r"] = act

        for h in range(n_heads):
            def patch(act, hook, h=h):
                act = act.clone()
                act[:, :, h] = z_base[:, :, h]
                return act

            with torch.no_grad(), vecs.applied(model, prompt_mask=batch.prompt_mask, attention_mask=batch.attention_mask):
                hooks = [(f"blocks.{layer}.attn.hook_z", patch), (f"blocks.{layer}.hook_resid_post", keep)]
                model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask, return_type=None, fwd_hooks=hooks)
            outs.append(grab["r"])
        return torch.stack(outs)

    with torch.no_grad():
        t_b, a = median_time(batched, args.repeats)
        t_n, b = median_time(naive, args.repeats)
    real = batch.attention_mask.bool()
    diff = max(float((a[i][real] - b[i][real]).abs().max()) for i in range(n_heads))
    print(f"embedded model, block {layer}, {n_heads} heads, batch {args.batch} x {batch.tokens.shape[1]} tokens, "
          f"{args.threads} threads; max |difference| {diff:.2e}")
    print(f"batched sweep: {t_b:.2f} s   one forward per head: {t_n:.2f} s   ratio (batched / naive): {t_b / t_n:.2f}")


if __name__ == "__main__":
    main()
