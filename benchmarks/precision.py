"""float32 vs bfloat16 on this machine: peak GEMM rates, each phase's achieved rate, one RL step vs the prototype.

Prints, all measured in this one process (no number is carried over from another run):

* the machine's peak matrix-multiply rate per dtype (the best of a few shapes, including a decode step's
  [64 x 576] x [576 x 1536] and a prefill's [4096 x 576] x [576 x 1536]);
* per dtype, each phase of the RL recipe on the model: prefill (no-grad forward over rows x tokens), gradient
  (forward + backward to one vector per layer over the same tokens) and decode (steered sampling), each as
  achieved GFLOP/s (FLOPs counted with ``torch.utils.flop_counter``'s formulas) and as a fraction of that dtype's peak;
* with ``--rl-step``: one step of the default recipe (8 prompts x 8 samples, add1, 32 new tokens, one vector per
  layer) with steerinterp's trainer in each dtype against the plain-PyTorch float32 prototype
  (``examples/rl_arithmetic/prototype_reference.py``), as a speed ratio;
* the gap between the sampler's and the trainer's log-probs of the same tokens, per dtype.

What ``dtype="auto"`` picks here and why is printed first. On a CPU without AMX-BF16 / AVX512-BF16, bfloat16 is
emulated and tens of times slower; its phases are then skipped unless asked for with ``--dtypes``.

    python benchmarks/precision.py                          # embedded model, auto dtypes, 2 threads
    python benchmarks/precision.py --rl-step                # + one RL step vs the prototype (minutes)
    python benchmarks/precision.py --model tiny --dtypes float32 bfloat16   # quick check of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # the documented base of dispatch modes
from torch.utils.flop_counter import flop_registry

import steerinterp as si
from steerinterp.models import automatic_dtype, cpu_bf16_flags
from steerinterp.models.precision import cpu_name, parse_dtype


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class CountFlops(TorchDispatchMode):
    """FLOPs of every op ``torch.utils.flop_counter`` has a formula for (matmuls, attention, convolutions),
    forward and backward. Unlike ``FlopCounterMode`` it registers no global module hooks, which would make
    ``generate`` step aside from the fast engine being timed."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_of(fn) -> int:
    with CountFlops() as counter:
        fn()
    return counter.total


def peak_gemm(dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """GFLOP/s of a few matrix products (the decode and prefill shapes of the embedded model, one square)."""
    shapes = {"decode [64x576]x[576x1536]": (64, 576, 1536), "prefill [4096x576]x[576x1536]": (4096, 576, 1536),
              "square 1024^3": (1024, 1024, 1024)}
    rates = {}
    g = torch.Generator().manual_seed(0)
    for label, (m, k, n) in shapes.items():
        a = torch.randn(m, k, generator=g).to(dtype)
        b = torch.randn(k, n, generator=g).to(dtype)
        def product(a=a, b=b):
            return a @ b

        first = seconds(product, 1)  # warm-up (kernel selection, packing); one more try when slow
        best = min(first, seconds(product, 1 if first > 1.0 else max(repeats, 3)))
        rates[label] = 2 * m * k * n / best / 1e9
    return rates


def phases(model, rows: int, tokens: int, new_tokens: int, repeats: int) -> tuple[dict[str, tuple[float, int]], str]:
    """(seconds, FLOPs) of prefill, gradient and decode on ``model`` with one random vector per layer, and the
    engine ``generate`` decoded with ("hf": the fast mirror; "hooked": the fallback)."""
    g = torch.Generator().manual_seed(0)
    vecs = si.SteeringSet.zeros(model, "all")
    with torch.no_grad():
        for v in vecs:
            v.vector.copy_(torch.randn(v.vector.shape, generator=g) * 0.3)
    ids = torch.randint(10, model.cfg.d_vocab - 10, (rows, tokens), generator=g)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, tokens // 2:] = True

    def prefill():
        with torch.no_grad(), vecs.applied(model):
            model(ids, return_type="logits")

    def gradient():
        for p in vecs.parameters():
            p.grad = None
        si.teacher_forced_logprobs(model, ids, completion, vecs).sum().backward()

    prompts = [[int(t) for t in row[: tokens // 2]] for row in ids[:rows]]

    engines = []

    def decode():
        engines.append(si.generate(model, prompts, steering=vecs, max_new_tokens=new_tokens, seed=list(range(rows)),
                                   stop_at_eos=False).engine)

    out = {}
    for name, fn in (("prefill", prefill), ("gradient", gradient), ("decode", decode)):
        fn()  # warm-up
        out[name] = (seconds(fn, repeats), flops_of(fn))
    return out, engines[-1]


def logprob_gap(model, new_tokens: int = 24) -> tuple[float, float]:
    """Mean and max |sampler - trainer| log-prob of the same sampled tokens (add1 prompts, random vectors)."""
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    prompts = [p for p in task.prompts(model, task.train[:4]) for _ in range(4)]
    vecs = si.SteeringSet.zeros(model, "all")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in vecs:
            v.vector.copy_(torch.randn(v.vector.shape, generator=g) * 0.3)
    out = si.generate(model, prompts, steering=vecs, max_new_tokens=new_tokens, seed=list(range(len(prompts))))
    with torch.no_grad():
        lp = si.teacher_forced_logprobs(model, out.tokens, out.completion_mask, vecs, attention_mask=out.attention_mask)
    diff = (out.logprobs - lp.float())[out.completion_mask].abs()
    return float(diff.mean()), float(diff.max())


def rl_step_seconds(model) -> float:
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.tasks import load_task

    trainer = Trainer(model, load_task("arithmetic:add1"), TrainConfig(steps=2))
    trainer.step()  # warm-up (engine build)
    t = time.perf_counter()
    trainer.step()
    return time.perf_counter() - t


def prototype_step_seconds() -> float:
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerinterp.models.gguf import gguf_to_hf_checkpoint

    path = Path(__file__).resolve().parents[1] / "examples" / "rl_arithmetic" / "prototype_reference.py"
    spec = importlib.util.spec_from_file_location("prototype_reference", path)
    proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proto)
    directory = gguf_to_hf_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    hf.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.padding_side = "left"
    problems = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    _, rows = proto.train_prototype(hf, tok, problems, seed=0, steps=2)
    last = rows.iloc[-1]
    return float(last["seconds_sampling"] + last["seconds_gradient"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="embedded (default) or tiny")
    ap.add_argument("--dtypes", nargs="+", default=None,
                    help="dtypes to run the phases in (default: float32, plus bfloat16 where the hardware has it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rows", type=int, default=64, help="rows of the prefill / gradient / decode batch")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per row of the prefill and gradient passes")
    ap.add_argument("--new-tokens", type=int, default=24, help="decode: new tokens per row")
    ap.add_argument("--rl-step", action="store_true", help="also time one RL step against the prototype")
    ap.add_argument("--json", default=None, help="also write everything printed to this JSON file")
    ap.add_argument("--note", default=None, help="a line kept in the JSON record (what this run is a baseline for)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    auto = automatic_dtype("cpu")
    flags = cpu_bf16_flags()
    print(f"threads={args.threads}; CPU bfloat16 flags: {', '.join(flags) or 'none'}; "
          f"dtype='auto' -> {auto.name} ({auto.reason})")
    dtypes = [parse_dtype(d) for d in args.dtypes] if args.dtypes else \
        [torch.float32] + ([torch.bfloat16] if flags else [])
    if not args.dtypes and not flags:
        print("bfloat16 phases skipped: emulated on this CPU (pass --dtypes float32 bfloat16 to run them anyway)")

    record = {"cpu": cpu_name(), "bf16_flags": flags, "auto": [auto.name, auto.reason],
              "threads": args.threads, "torch": torch.__version__, "model": args.model or "embedded",
              "rows": args.rows, "tokens": args.tokens, "new_tokens": args.new_tokens,
              "note": args.note, "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S"),
              "peak_gflops": {}, "phases": {}, "logprob_gap": {}}
    peaks = {}
    print("\npeak GEMM (GFLOP/s):")
    for dt in (torch.float32, torch.bfloat16):
        rates = peak_gemm(dt, args.repeats)
        peaks[dt] = max(rates.values())
        record["peak_gflops"][str(dt).removeprefix("torch.")] = rates
        print(f"  {str(dt).removeprefix('torch.'):9s} " + " | ".join(f"{k}: {v:.1f}" for k, v in rates.items()))
    print(f"  bfloat16 / float32 peak: {peaks[torch.bfloat16] / peaks[torch.float32]:.2f}x")

    results = {}
    for dt in dtypes:
        model = si.load_model(args.model, dtype=dt, device="cpu")
        name = str(dt).removeprefix("torch.")
        results[dt], engine = phases(model, args.rows, args.tokens, args.new_tokens, args.repeats)
        record.setdefault("decode_engine", {})[name] = engine
        print(f"\n{name}: {args.rows} rows x {args.tokens} tokens (gradient: last {args.tokens // 2} are the "
              f"completion); decode {args.rows} x {args.new_tokens} new tokens with the {engine} engine")
        for phase, (sec, flops) in results[dt].items():
            rate = flops / sec / 1e9
            print(f"  {phase:8s} {sec:7.2f} s  {flops / 1e9:8.1f} GFLOP  {rate:7.1f} GFLOP/s  "
                  f"{rate / peaks[dt]:5.1%} of the {name} peak")
        record["phases"][name] = {p: {"seconds": sec, "gflop": flops / 1e9, "gflops": flops / sec / 1e9,
                                      "fraction_of_peak": flops / sec / 1e9 / peaks[dt]}
                                  for p, (sec, flops) in results[dt].items()}
        mean_gap, max_gap = logprob_gap(model)
        record["logprob_gap"][name] = {"mean_abs": mean_gap, "max_abs": max_gap}
        print(f"  sampler vs trainer log-probs of the same tokens: mean |diff| {mean_gap:.2e}, max {max_gap:.2e}")
        if args.rl_step and args.model in (None, "embedded"):
            results[dt]["rl_step"] = (rl_step_seconds(model), 0)
            print(f"  one RL step (8 x 8, add1, 32 tokens, all layers): {results[dt]['rl_step'][0]:.1f} s")
            record.setdefault("rl_step_seconds", {})[name] = results[dt]["rl_step"][0]
    if len(results) > 1:
        base = results[dtypes[0]]
        for dt in dtypes[1:]:
            print(f"\n{str(dt).removeprefix('torch.')} speed-up over {str(dtypes[0]).removeprefix('torch.')}: " +
                  ", ".join(f"{p} {base[p][0] / results[dt][p][0]:.2f}x" for p in results[dt]))
    if args.rl_step and args.model in (None, "embedded"):
        proto = prototype_step_seconds()
        print(f"\nprototype (plain PyTorch, float32) one step: {proto:.1f} s")
        record["prototype_step_seconds"] = proto
        for dt in dtypes:
            print(f"  steerinterp {str(dt).removeprefix('torch.')}: {proto / results[dt]['rl_step'][0]:.2f}x faster")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
