"""Memory of the RL gradient pass per row, measured against ``gradient_row_bytes``'s estimate (embedded model).

For each shape (prompt tokens + sampled tokens: add1's 70 + 32, the multi-step task's 100 + 256), each row count
in ``--rows`` runs in a fresh process: ``--rows`` samples sharing one prompt (an RL group), all-layer steering
that requires grad, ``teacher_forced_logprobs`` with the prompt run once and ``backward()``, as one step of the
trainer's gradient pass. A thread samples the process's resident memory every 2 ms; the peak above the memory
held once the model is loaded is the pass's. The per-row figure is the slope between the smallest and the
largest row count (what one more row costs), printed beside the estimate, their ratio, and the rows per
forward/backward that ``gradient_rows`` picks for a micro-batch of 64 and groups of 8.

    python benchmarks/gradient_memory.py [--rows 1 4] [--threads 1] [--json benchmarks/results/gradient-memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SHAPES = {"add1 (70 + 32 tokens)": (70, 32), "multistep (100 + 256 tokens)": (100, 256)}


def run_case(rows: int, prompt: int, completion: int, threads: int) -> dict:
    import threading
    import time

    import psutil
    import torch

    import steerinterp as si

    torch.set_num_threads(threads)
    model = si.load_model()
    vecs = si.SteeringSet.from_tensors(model, {layer: torch.zeros(model.cfg.d_model) for layer in range(model.cfg.n_layers)},
                                       trainable=True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([torch.randint(100, 5000, (1, prompt), generator=g).repeat(rows, 1),
                        torch.randint(100, 5000, (rows, completion), generator=g)], 1)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, prompt:] = True
    with torch.no_grad():
        model(tokens[:1, :8])  # one-time allocations of the first forward belong to the loaded model
    proc = psutil.Process()
    held = proc.memory_info().rss
    peak, done = [held], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    si.teacher_forced_logprobs(model, tokens, mask, vecs, prompt_length=prompt).sum().backward()
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    return {"rows": rows, "prompt": prompt, "completion": completion, "peak_gb": (peak[0] - held) / 1e9,
            "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the measurements and estimates here")
    ap.add_argument("--case", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, args.threads)), flush=True)
        return
    import steerinterp as si
    from steerinterp.generation.decode import gradient_budget, gradient_row_bytes, gradient_rows

    model = si.load_model()
    lo, hi = min(args.rows), max(args.rows)
    if lo == hi:
        ap.error("--rows needs two different row counts (the per-row cost is the slope between them)")
    out = []
    print(f"{'shape':<30}{'measured GB/row':>16}{'estimate GB/row':>16}{'ratio':>7}{'rows per pass':>14}")
    for name, (prompt, completion) in SHAPES.items():
        runs = {}
        for rows in (lo, hi):
            proc = subprocess.run([sys.executable, __file__, "--case", str(rows), str(prompt), str(completion),
                                   "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            runs[rows] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
        measured = (runs[hi]["peak_gb"] - runs[lo]["peak_gb"]) / (hi - lo)
        width = prompt + completion
        estimate = gradient_row_bytes(model, width, completion) / 1e9
        picked = gradient_rows(model, width, completion, 64, group=8)
        out.append({"shape": name, "prompt": prompt, "completion": completion, "runs": list(runs.values()),
                    "measured_gb_per_row": measured, "estimate_gb_per_row": estimate,
                    "rows_per_pass": picked, "budget_bytes": gradient_budget()})
        print(f"{name:<30}{measured:>16.3f}{estimate:>16.3f}{estimate / measured:>7.2f}{picked:>14}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "embedded", "dtype": str(model.cfg.dtype), "threads": args.threads, "shapes": out}, f,
                      indent=1)


if __name__ == "__main__":
    main()
