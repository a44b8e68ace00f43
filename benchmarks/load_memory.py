"""Peak host memory of loading a checkpoint as a HookedTransformer, against the old route.

A random Qwen2-shaped checkpoint of about 160M parameters (hidden 768, 12 layers, 12 heads, MLP 3072,
vocabulary 32,000, untied embeddings; stored in bfloat16 like most hub checkpoints, ``--disk-dtype``) is written once with
``save_pretrained``; each case then loads it in a fresh process and reports the peak resident memory
above the process's memory just before the load (after the imports and a warm-up load of a tiny
checkpoint, so the libraries' own memory does not count), as a ratio to the bytes of the loaded model's
parameters in the requested dtype, and the memory still held afterwards.

* ``baseline``: the route ``load_model`` took before (and TransformerLens's ``from_pretrained`` takes):
  the HF model in float32, TransformerLens's config and weight conversion, a HookedTransformer with its
  own parameters in the requested dtype filled by ``load_and_process_state_dict`` (no processing);
* ``load_model``: ``steerinterp.load_model(directory, dtype=...)``: the HF model in the requested dtype,
  parameters assigned to a meta-device HookedTransformer, made contiguous one at a time.

The peak is the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` before the
load (Linux); without that a thread samples ``VmRSS`` every millisecond.

    python benchmarks/load_memory.py [--dtypes float32 bfloat16] [--cases baseline load_model] [--disk-dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("baseline", "load_model")
SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
             intermediate_size=3072, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)


def write_checkpoint(directory: Path, disk_dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from steerinterp.models import tiny_tokenizer

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPE), dtype=getattr(torch, disk_dtype))
    hf.save_pretrained(str(directory))
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_baseline(directory: Path, dtype):
    """The route of load_model before this change (HF float32 -> converted -> copied into a HookedTransformer)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    cfg_dict = convert_hf_model_config(str(directory))
    cfg_dict.pop("tokenizer_name", None)
    cfg_dict.update(n_ctx=2048, default_prepend_bos=False, device="cpu", dtype=dtype, model_name="baseline")
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    state = get_pretrained_state_dict(str(directory), cfg, hf_model=hf)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="left")
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.requires_grad_(False)
    return model


def run_case(case: str, directory: Path, dtype_name: str, threads: int) -> dict:
    import gc
    import threading
    import time

    import torch

    torch.set_num_threads(threads)
    import transformer_lens  # noqa: F401  (imported before the baseline memory is read)
    import transformers  # noqa: F401

    import steerinterp as si
    from steerinterp.models import zoo_checkpoint

    dtype = getattr(torch, dtype_name)
    load = (lambda d: load_baseline(d, dtype)) if case == "baseline" else (
        lambda d: si.load_model(d, device="cpu", dtype=dtype))
    warm = load(zoo_checkpoint("qwen2"))  # lazy imports, tokenizer and allocator set-up
    del warm
    gc.collect()

    before = _status("VmRSS")
    exact = _reset_peak()
    sampled = [before]
    done = threading.Event()
    if not exact:
        def sample():
            while not done.is_set():
                sampled.append(_status("VmRSS"))
                time.sleep(0.001)
        threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    model = load(directory)
    seconds = time.perf_counter() - t0
    done.set()
    gc.collect()
    peak = _status("VmHWM") if exact else max(sampled)
    after = _status("VmRSS")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert all(p.dtype == dtype for p in model.parameters())
    return {"case": case, "dtype": dtype_name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "weights_gb": weights / 1e9, "peak_gb": (peak - before) / 1e9, "peak_ratio": (peak - before) / weights,
            "held_ratio": (after - before) / weights, "seconds": seconds, "exact_peak": exact}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--disk-dtype", default="bfloat16", help="dtype of the checkpoint's file (default bfloat16)")
    p.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint (default: a temp dir)")
    p.add_argument("--_child", nargs=3, metavar=("CASE", "DIR", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        case, directory, dtype = args._child
        print(json.dumps(run_case(case, Path(directory), dtype, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="steerinterp-load-memory-") as tmp:
        directory = write_checkpoint(args.dir or Path(tmp) / "qwen2-160m", args.disk_dtype)
        rows = []
        for dtype in args.dtypes:
            for case in args.cases:
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--_child", case,
                                      str(directory), dtype], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{case} {dtype} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Qwen2-shaped random checkpoint, {rows[0]['params_m']:.0f}M parameters ({args.disk_dtype} on disk); "
          "peak = resident memory above the process's before the load")
    print(f"{'case':<11} {'dtype':<9} {'weights GB':>10} {'peak GB':>8} {'peak/weights':>12} {'held/weights':>12} {'s':>6}")
    for r in rows:
        print(f"{r['case']:<11} {r['dtype']:<9} {r['weights_gb']:>10.3f} {r['peak_gb']:>8.3f} {r['peak_ratio']:>12.2f} "
              f"{r['held_ratio']:>12.2f} {r['seconds']:>6.1f}")
    if not all(r["exact_peak"] for r in rows):
        print("(peak sampled every millisecond: /proc/self/clear_refs was not writable)")


if __name__ == "__main__":
    main()
