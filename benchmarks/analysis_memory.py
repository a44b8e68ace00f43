"""Peak memory of the analyses on 8 rows x 1,024 completion tokens (embedded model), against caching everything.

Each case runs in a fresh process; a thread samples the process's resident memory every 2 ms and the
script prints the peak above the memory held once the model is loaded (and has run one 8-token forward),
in GB, and its ratio to the baseline: the naive route, ``run_cached`` of every hook of the base and the
steered run with their logits. Caching everything for 8 x 1k tokens takes tens of GB, so the baseline
runs on ``--baseline-rows`` rows (default 1) and is scaled to ``--rows`` (the cache is per row).

The inputs: ``--rows`` chat prompts of different lengths (so rows are left-padded), each followed by the
same ``--tokens``-token completion; random vectors at all 30 layers (seed 0). The cases call each analysis
as the demo's pipeline (``app/pipeline.py``) or an analysis would:

* ``path_patch``: the penultimate vector's senders of the pipeline (every head of the last layer, its MLP,
  the residual after the penultimate layer) to ``Node.logits()`` with ``completion_logprob_metric``;
* ``block_patching``: ``standard_patches`` of the last block, penultimate vector, first-token positions
  (``block_patching_completion``: every completion position; not run by default, it is slow);
* ``teacher_forced_logprobs``: all 30 vectors, under ``torch.no_grad()`` as an analysis calls it;
* ``persistence``: the 30 vectors, each alone, observed at the 30 layers;
* ``attention_diff``: all 30 vectors, every layer and head, completion queries;
* ``token_shift``: all 30 vectors, every completion position;
* ``residual_lens``: all 30 vectors, all 30 layers, every completion position.

An analysis whose memory grows past ``--limit-gb`` above the model (or whose time passes ``--max-seconds``)
is stopped by the sampling thread and reported with the peak it had reached (``stopped``); the baseline
is never stopped.

    python benchmarks/analysis_memory.py [--rows 8] [--tokens 1024] [--threads 2] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

BASELINE = "baseline_full_cache"
CASES = (BASELINE, "path_patch", "block_patching", "teacher_forced_logprobs", "persistence", "attention_diff",
         "token_shift", "residual_lens")
EXTRA = ("block_patching_completion",)
QUESTIONS = ("What is 2 + 3?", "What is 12 + 30?", "Add 7 and 8, then explain the result.", "What is 4 + 4?",
             "Compute the sum of 101 and 202.", "What is 9 + 1? Answer briefly.", "What is 15 + 27?",
             "Please add 3 and 5 and show your working step by step.")


def inputs(model, rows: int, n_tokens: int):
    from steerinterp import analysis as A

    prompts = [model.tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[r % len(QUESTIONS)]}],
                                                   tokenize=False, add_generation_prompt=True) for r in range(rows)]
    filler = "To solve this, we add the two numbers step by step and check the sum. "
    ids = model.tokenizer(filler * (n_tokens // 8 + 8), add_special_tokens=False)["input_ids"][:n_tokens]
    return A.teacher_forcing_batch(model, prompts, [model.tokenizer.decode(ids)] * rows)


def run_case(case: str, rows: int, n_tokens: int, threads: int, limit_gb: float, max_seconds: float | None) -> dict:
    import os
    import threading
    import time

    import psutil
    import torch

    import steerinterp as si
    from steerinterp import analysis as A
    from steerinterp.analysis.batch import run_cached

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = si.load_model()
    n_layers = model.cfg.n_layers
    vecs = si.SteeringSet.from_tensors(model, {layer: torch.randn(model.cfg.d_model) * 0.5 for layer in range(n_layers)})
    pen = vecs.subset([n_layers - 2])
    batch = inputs(model, rows, n_tokens)
    with torch.no_grad():
        model(batch.tokens[:1, :8])  # one-time allocations of the first forward belong to the loaded model
    proc = psutil.Process()
    held = proc.memory_info().rss
    peak = [held]
    done = threading.Event()
    t0 = time.perf_counter()

    def report(status: str) -> dict:
        return {"case": case, "rows": len(batch), "tokens": batch.tokens.shape[1], "peak_gb": (peak[0] - held) / 1e9,
                "seconds": time.perf_counter() - t0, "status": status}

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            over = case != BASELINE and (peak[0] - held) / 1e9 > limit_gb
            late = case != BASELINE and max_seconds is not None and time.perf_counter() - t0 > max_seconds
            if over or late:
                print(json.dumps(report(f"stopped at {'--limit-gb' if over else '--max-seconds'}")), flush=True)
                os._exit(0)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if case == BASELINE:
        run_cached(model, batch, None, lambda name: True, logits=True)
        run_cached(model, batch, vecs, lambda name: True, logits=True)
    elif case == "path_patch":
        last = n_layers - 1
        senders = [A.Node.head(last, h) for h in range(model.cfg.n_heads)] + [A.Node.mlp(last), A.Node.resid(last - 1)]
        A.path_patch(model, batch, senders, [A.Node.logits()], A.completion_logprob_metric(), new_steering=pen)
    elif case == "block_patching":
        A.block_patching(model, batch, pen)
    elif case == "block_patching_completion":
        A.block_patching(model, batch, pen, positions="completion")
    elif case == "teacher_forced_logprobs":
        with torch.no_grad():
            si.teacher_forced_logprobs(model, batch.tokens, batch.completion_mask, vecs,
                                       attention_mask=batch.attention_mask, prompt_mask=batch.prompt_mask)
    elif case == "persistence":
        A.persistence(model, batch, vecs)
    elif case == "attention_diff":
        A.attention_diff(model, batch, vecs)
    elif case == "token_shift":
        A.token_shift(model, batch, vecs)
    elif case == "residual_lens":
        A.residual_logit_lens(model, batch, vecs, positions="completion")
    done.set()
    th.join()
    return report("ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024, help="completion tokens per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-rows", type=int, default=1, help="rows the baseline caches (scaled to --rows)")
    ap.add_argument("--limit-gb", type=float, default=8.0, help="stop a case whose peak passes this many GB")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop a case after this many seconds")
    ap.add_argument("--cases", nargs="+", default=list(CASES[1:]), choices=CASES[1:] + EXTRA, help="which analyses to run")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        rows = args.baseline_rows if args.case == BASELINE else args.rows
        print(json.dumps(run_case(args.case, rows, args.tokens, args.threads, args.limit_gb, args.max_seconds)), flush=True)
        return
    results = []
    for case in [BASELINE, *args.cases]:
        cmd = [sys.executable, __file__, "--case", case, "--rows", str(args.rows), "--tokens", str(args.tokens),
               "--threads", str(args.threads), "--baseline-rows", str(args.baseline_rows), "--limit-gb", str(args.limit_gb)]
        if args.max_seconds is not None:
            cmd += ["--max-seconds", str(args.max_seconds)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")]
        if not lines:
            result = {"case": case, "rows": args.rows, "tokens": 0, "peak_gb": float("nan"), "seconds": float("nan"),
                      "status": f"failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:80]}"}
        else:
            result = json.loads(lines[-1])
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    base = results[0]
    scale = args.rows / base["rows"]
    print(f"baseline: {base['rows']} row(s) x {base['tokens']} positions peaked {base['peak_gb']:.2f} GB above the model; "
          f"x{scale:g} for {args.rows} rows = {base['peak_gb'] * scale:.2f} GB")
    print(f"{'case':<28}{'rows':>5}{'positions':>10}{'peak GB':>9}{'ratio':>7}{'seconds':>9}  status")
    for r in results:
        peak = r["peak_gb"] * (scale if r is base else 1)
        print(f"{r['case']:<28}{r['rows'] * (scale if r is base else 1):>5g}{r['tokens']:>10}{peak:>9.2f}"
              f"{peak / (base['peak_gb'] * scale):>7.2f}{r['seconds']:>9.0f}  {r['status']}")


if __name__ == "__main__":
    main()
