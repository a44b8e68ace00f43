"""Peak memory of the analyses on a 1k-token completion (embedded model), against caching everything.

Each case runs in a fresh process; a thread samples the process's resident memory every 2 ms and
the script prints the peak above the memory held once the model is loaded, and its ratio to the
baseline: the naive route, ``run_with_cache`` of every hook for the base and the steered run.

    python benchmarks/analysis_memory.py [--tokens 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = ("baseline_full_cache", "token_shift", "persistence_1_layer", "persistence_30_layers", "residual_lens")


def run_case(case: str, n_tokens: int, threads: int) -> dict:
    import threading
    import time

    import psutil
    import torch

    import steerinterp as si
    from steerinterp import analysis as A
    from steerinterp.analysis.batch import run_cached

    torch.set_num_threads(threads)
    model = si.load_model()
    vecs = si.SteeringSet.from_tensors(model, {layer: torch.randn(model.cfg.d_model) * 0.5 for layer in range(30)})
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                                 add_generation_prompt=True)
    filler = "To solve this, we add the two numbers step by step and check the sum. "
    ids = model.tokenizer(filler * 200, add_special_tokens=False)["input_ids"][:n_tokens]
    batch = A.teacher_forcing_batch(model, [prompt], [model.tokenizer.decode(ids)])
    proc = psutil.Process()
    held = proc.memory_info().rss
    peak = [held]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    if case == "baseline_full_cache":
        run_cached(model, batch, None, lambda name: True, logits=True)
        run_cached(model, batch, vecs, lambda name: True, logits=True)
    elif case == "token_shift":
        A.token_shift(model, batch, vecs)
    elif case == "persistence_1_layer":
        A.persistence(model, batch, vecs.subset([15]))
    elif case == "persistence_30_layers":
        A.persistence(model, batch, vecs)
    elif case == "residual_lens":
        A.residual_logit_lens(model, batch, vecs, positions="completion")
    seconds = time.perf_counter() - t
    done.set()
    th.join()
    return {"case": case, "tokens": int(batch.attention_mask.sum()), "peak_mib": (peak[0] - held) / 2**20,
            "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=list(CASES[1:]), choices=CASES[1:], help="which analyses to run")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.tokens, args.threads)))
        return
    results = []
    for case in [CASES[0], *args.cases]:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--tokens", str(args.tokens),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]["peak_mib"]
    print(f"{'case':<24}{'tokens':>8}{'peak MiB':>10}{'ratio':>8}{'seconds':>9}")
    for r in results:
        print(f"{r['case']:<24}{r['tokens']:>8}{r['peak_mib']:>10.0f}{r['peak_mib'] / base:>8.2f}{r['seconds']:>9.1f}")


if __name__ == "__main__":
    main()
