"""DiffSAE training throughput (tokens/s) on the embedded model's width, against baselines in the same run.

Three measurements, all TopK (k=32, d_sae = 4 x 576), batches of 1024 rows, the same number of steps:
* baseline: sae-lens's ``SAETrainer`` fed pre-shuffled batches of one tensor already in memory
  (the optimisation alone, nothing of steerinterp);
* memory: ``train_diff_sae`` on a ``DiffActivations`` (our seeded epoch stream, held-out split, norm
  estimate, final quality report included);
* disk: ``train_diff_sae`` on a ``ShardedDiffs`` store written to a temporary directory (shards loaded
  and shuffled through a buffer).
Also: collecting the differences (two teacher-forced forwards per row) vs one plain forward.

The rows are real steering-induced differences at layer 15 of the embedded model (the RL-trained
add1 vectors), repeated to the size asked for. Prints tokens/s and the ratios to the baseline.

    python benchmarks/sae_training.py [--threads 2] [--rows 100000] [--steps 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp import sae as S
from steerinterp.tasks import arithmetic_task

VECTORS = Path(__file__).parent.parent / "examples" / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def baseline_tokens_per_s(delta: torch.Tensor, steps: int, batch: int, k: int, d_sae: int) -> float:
    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=delta.shape[1], d_sae=d_sae, k=k))
    order = torch.randperm(len(delta))
    batches = (delta[order[(i * batch) % (len(delta) - batch):][:batch]] for i in range(10**9))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=3e-4, lr_end=3e-5,
                           dead_feature_window=100, feature_sampling_window=100, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    t = time.perf_counter()
    trainer.fit()
    return steps * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = 1024

    model = si.load_model()
    vecs = si.SteeringSet.load(VECTORS, model=model)
    task = arithmetic_task("add1")
    problems = list(task.train)[:32]
    gens = S.sample_labelled(model, task, vecs, problems=problems, samples_per_problem=1, max_new_tokens=24, seed=0)
    t = time.perf_counter()
    diffs = S.collect_differences(model, gens, vecs, [15], positions="all", batch_size=16)["blocks.15.hook_resid_post"]
    collect_s = time.perf_counter() - t
    b = A.as_batch(gens.output)
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(b), 16):
            chunk = b.rows(slice(i, i + 16))
            model(chunk.tokens, attention_mask=chunk.attention_mask)
    forward_s = time.perf_counter() - t
    print(f"collecting {len(diffs)} rows: {collect_s:.2f} s vs one plain forward {forward_s:.2f} s "
          f"(ratio {collect_s / forward_s:.2f}; two forwards = 2.0)")

    reps = -(-args.rows // len(diffs))
    idx = torch.arange(len(diffs)).repeat(reps)[: args.rows]
    big = S.DiffActivations(diffs.hook_name, diffs.delta[idx], torch.arange(args.rows) // 40, diffs.position[idx],
                            diffs.token[idx], diffs.in_completion[idx], torch.zeros(-(-args.rows // 40), dtype=torch.bool))
    d_sae = 4 * big.d_in
    tokens = args.steps * batch
    base = baseline_tokens_per_s(big.delta, args.steps, batch, args.k, d_sae)

    t = time.perf_counter()
    mem = S.train_diff_sae(big, k=args.k, d_sae=d_sae, training_tokens=tokens, batch_size=batch)
    mem_total = tokens / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        parts = ({big.hook_name: big.select(torch.arange(i, min(i + 8192, len(big))))} for i in range(0, len(big), 8192))
        S.write_difference_store(Path(tmp) / "store", parts, labels=big.labels)
        disk_src = S.DiffActivationStore(Path(tmp) / "store")[big.hook_name]
        t = time.perf_counter()
        disk = S.train_diff_sae(disk_src, k=args.k, d_sae=d_sae, training_tokens=tokens, batch_size=batch)
        disk_total = tokens / (time.perf_counter() - t)

    print(f"{args.steps} steps x {batch} rows, TopK k={args.k}, d_sae={d_sae}, {args.threads} threads")
    print(f"{'source':<34}{'tokens/s':>10}{'ratio':>8}")
    print(f"{'sae-lens trainer, tensor batches':<34}{base:>10,.0f}{1.0:>8.2f}")
    for name, fit_rate, total in (("train_diff_sae, in memory", mem.tokens_per_second, mem_total),
                                  ("train_diff_sae, on-disk shards", disk.tokens_per_second, disk_total)):
        print(f"{name + ' (fit)':<34}{fit_rate:>10,.0f}{fit_rate / base:>8.2f}")
        print(f"{name + ' (end to end)':<34}{total:>10,.0f}{total / base:>8.2f}")
    print(f"held-out FVU: memory {mem.heldout_quality.fvu:.3f}, disk {disk.heldout_quality.fvu:.3f}")


if __name__ == "__main__":
    main()
