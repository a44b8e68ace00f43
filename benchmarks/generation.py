"""Steered sampling speed: steerinterp.generate (fast and hooked engines) vs transformers generate with hooks.

All run in this process with the same thread count, sample at temperature 1 with one vector per layer
added after every block (the papers' setting; transformers gets an equivalent forward hook on each decoder
layer), and generate exactly --new-tokens tokens per row (no EOS stop). Prints tokens/s and the ratios to
transformers (goal for the fast engine: >= 0.9). Where the auto engine is the fast one, it is timed again with
``HFEngine(model, pack=False)``: the same engine multiplying by the plain weights, not oneDNN pre-packed ones
(``generation.packed_linear``; packing applies to bfloat16 on a CPU), and ``packed_layers`` records how many
layers the auto engine packed.

    python benchmarks/generation.py                        # the embedded SmolLM2-135M
    python benchmarks/generation.py --zoo qwen2 phi3 gpt2  # random models of those architectures, SmolLM2's shape
    python benchmarks/generation.py --zoo all --tiny       # the zoo's tiny checkpoints (coverage, seconds)

    [--batches 1 8 32] [--new-tokens 128] [--threads 2] [--repeats 2] [--no-hooked]

``--zoo`` builds, per architecture, a random checkpoint with the zoo's settings (biases, q/k norms, fused
projections, sandwich norms, soft-caps, ...) at the embedded model's size (d_model 576, 30 layers, 9 heads
of 64, 3 key/value heads, MLP 1536, SmolLM2's 49,152-token tokenizer) in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import steerinterp as si
from steerinterp.generation.engines import HFEngine, current_mirror

QUESTIONS = [
    "What is 3 + 4? Answer with just the number.",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "What is 12*7? Think step by step.",
    "Name three colours.",
]

#: the embedded SmolLM2-135M's shape
SMOL = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64)


def decoder_layers(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def hf_generate(hf, tok, prompts, vectors, new_tokens, seed):
    handles = [
        layer.register_forward_hook(lambda m, a, out, v=v: (out[0] + v,) + out[1:] if isinstance(out, tuple) else out + v)
        for layer, v in zip(decoder_layers(hf), vectors)
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


def zoo_shaped_config(name: str, tok):
    """The zoo's ``name`` config (its settings) at SmolLM2's shape, for tokenizer ``tok``."""
    from steerinterp.models.tiny import tiny_tokenizer
    from steerinterp.models.zoo import ZOO

    d = ZOO[name](tiny_tokenizer()).to_dict()
    shape = dict(SMOL, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if d.get("model_type") == "gpt2":
        shape = dict(n_embd=576, n_layer=30, n_head=9, n_inner=1536, **{k: shape[k] for k in (
            "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")})
    if "sliding_window" in d and d["sliding_window"]:
        shape["sliding_window"] = 4096  # the real models' window (the zoo's 8 is there to test masking)
    if "query_pre_attn_scalar" in d:
        shape["query_pre_attn_scalar"] = SMOL["head_dim"]
    d.update(shape)
    for k in ("architectures", "transformers_version", "dtype", "torch_dtype", "layer_types"):  # layer_types: the
        # class's own pattern for 30 layers (Gemma-2 alternates, Gemma-3 has 5 sliding to 1 full)
        d.pop(k, None)
    return type(ZOO[name](tiny_tokenizer())).from_dict(d)


def zoo_shaped_checkpoint(name: str, directory: Path) -> Path:
    """A random ``name`` checkpoint (the zoo's settings) at SmolLM2's shape and tokenizer, saved in ``directory``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerinterp.models.gguf import gguf_to_hf_checkpoint

    tok = AutoTokenizer.from_pretrained(str(gguf_to_hf_checkpoint()))
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(zoo_shaped_config(name, tok))
    hf.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def bench(label, model, hf, tok, args, rows: list[dict]):
    tok.padding_side = "left"
    g = torch.Generator().manual_seed(0)
    tensors = {layer: 0.5 * torch.randn(model.cfg.d_model, generator=g) for layer in range(model.cfg.n_layers)}
    vecs = si.SteeringSet.from_tensors(model, tensors)
    vectors = [tensors[layer] for layer in range(model.cfg.n_layers)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = si.generate(model, QUESTIONS[:1], steering=vecs, max_new_tokens=2).engine  # build the mirror once
    mirror = current_mirror(model) if engine == "hf" else None
    note = f"copied {mirror.copied_fraction:.3f}" if mirror is not None else "; ".join(str(w.message) for w in caught)
    print(f"\n{label}: auto engine = {engine} ({note})", flush=True)
    ratios = []
    for b in args.batches:
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(b)]
        prompts = si.chat_prompts(model, questions) if getattr(model.tokenizer, "chat_template", None) else questions
        base, ours, unpacked, hooked = [], [], [], []
        packed_layers = 0
        for r in range(args.repeats):
            base.append(timed(lambda p=prompts, r=r: hf_generate(hf, tok, p, vectors, args.new_tokens, r)))
            auto = HFEngine(model) if engine == "hf" else "auto"  # what "auto" picks, kept to read packed_layers
            arms = [(ours, auto)]
            if engine == "hf":  # the fast engine again, multiplying by the plain weights (no pre-packing)
                arms.append((unpacked, HFEngine(model, pack=False)))
            for times, e in arms[:: 1 if r % 2 == 0 else -1]:  # alternate the order: the first run of a pair is slower
                times.append(timed(lambda p=prompts, r=r, e=e: si_generate(model, p, vecs, args.new_tokens, r, e)))
            packed_layers = getattr(auto, "packed_layers", 0)
            if args.hooked:
                hooked.append(timed(lambda p=prompts, r=r: si_generate(model, p, vecs, args.new_tokens, r, "hooked")))
        hb, ho = statistics.median(base), statistics.median(ours)
        hu = statistics.median(unpacked) if unpacked else None
        hh = statistics.median(hooked) if hooked else None
        cell = lambda v, hb=hb: f" {v:.1f} ({v / hb:.2f}x) |" if v is not None else " |"
        print(f"| {label} | {b} | {hb:.1f} |" + cell(ho) + cell(hu) + cell(hh), flush=True)
        ratios.append(ho / hb)
        rows.append({"model": label, "batch": b, "engine": engine, "transformers": hb, "fast": ho, "hooked": hh,
                     "fast_unpacked": hu, "packed_layers": packed_layers})
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hooked", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the HookedTransformer reference engine (default on)")
    ap.add_argument("--dtype", default="auto", help="steerinterp's model dtype (auto: bfloat16 on an AMX / "
                    "AVX512-BF16 CPU, else float32); transformers always runs float32, the baseline the goals name")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file (benchmarks/results/)")
    ap.add_argument("--zoo", nargs="+", metavar="ARCH", help="zoo architectures (models.ZOO names, or 'all')")
    ap.add_argument("--tiny", action="store_true", help="with --zoo: the zoo's tiny checkpoints, not SmolLM2's shape")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from steerinterp.models import resolve_dtype

    choice = resolve_dtype(args.dtype, "cpu")
    print(f"threads={args.threads} new_tokens={args.new_tokens} repeats={args.repeats} (median tokens/s; "
          "one steering vector per layer, temperature 1)")
    print(f"steerinterp in {choice.name} ({choice.reason}); transformers in float32")
    print("| model | batch | transformers generate | steerinterp auto engine | fast engine, plain weights | "
          "steerinterp hooked engine |")
    print("|---|---|---|---|---|---|")
    ratios, rows = [], []
    if not args.zoo:
        from steerinterp.models.gguf import gguf_to_hf_checkpoint

        directory = gguf_to_hf_checkpoint()
        model = si.load_model(device="cpu", dtype=choice.dtype)
        hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        ratios += bench("SmolLM2-135M (embedded)", model, hf, AutoTokenizer.from_pretrained(str(directory)), args, rows)
    else:
        from steerinterp.models.zoo import ZOO, zoo_checkpoint

        names = list(ZOO) if args.zoo == ["all"] else args.zoo
        for name in names:
            with tempfile.TemporaryDirectory(prefix=f"steerinterp-bench-{name}-") as tmp:
                directory = zoo_checkpoint(name) if args.tiny else zoo_shaped_checkpoint(name, Path(tmp))
                model = si.load_model(directory, device="cpu", dtype=choice.dtype)
                hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
                label = f"{name} ({'tiny' if args.tiny else 'SmolLM2 shape'})"
                ratios += bench(label, model, hf, AutoTokenizer.from_pretrained(str(directory)), args, rows)
                del model, hf
    print(f"\nmin fast-engine ratio {min(ratios):.2f} (goal >= 0.90)")
    if args.json:
        from steerinterp.models import cpu_bf16_flags
        from steerinterp.models.precision import cpu_name

        record = {"cpu": cpu_name(), "bf16_flags": cpu_bf16_flags(), "date": time.strftime("%Y-%m-%d"),
                  "time": time.strftime("%H:%M:%S"),
                  "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
                  "dtype": choice.name, "dtype_reason": choice.reason, "transformers_dtype": "float32", "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
