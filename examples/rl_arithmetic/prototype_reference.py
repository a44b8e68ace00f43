"""The plain-PyTorch prototype of MODELS.md section 11, rebuilt as a reference for steerinterp's trainer.

No steerinterp code in the training loop: a transformers ``LlamaForCausalLM`` built from the same
checkpoint, a forward hook adding one vector after each decoder layer (zero init), ``generate`` for
sampling, a full forward for the gradient, RLOO, token-normalised REINFORCE, AdamW lr 3e-3 (no warmup),
gradient-norm clip 2.0, 8 prompts x 8 samples x 32 new tokens per step, reward +1 when the last number
of the completion is the sum, else -1. Problems are drawn at random from all 81 single-digit sums each
step (MODELS.md does not say how the prototype drew them). The trained vectors are then evaluated with
steerinterp's ``evaluate`` on the same test problems as ``run.py --split shared``, so both trainers are
scored by one evaluation.

    python examples/rl_arithmetic/prototype_reference.py --seeds 0 1 --steps 40
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp.models.gguf import gguf_to_hf_checkpoint
from steerinterp.tasks import arithmetic_task
from steerinterp.tasks.evaluation import evaluate

PROMPT = "What is {a} + {b}? Answer with just the number."


def last_number_reward(completion: str, answer: int) -> float:
    numbers = re.findall(r"-?\d+", completion)
    return 1.0 if numbers and int(numbers[-1]) == answer else -1.0


def train_prototype(hf, tok, problems, *, seed, steps, lr=3e-3, clip=2.0, n_prompts=8, group=8, max_new_tokens=32,
                    on_step=None):
    """RLOO on one vector per decoder layer; returns the vectors [n_layers, d_model] and per-step metrics.

    ``on_step(row)`` is called with each step's metrics (e.g. to print progress)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    vectors = torch.nn.Parameter(torch.zeros(hf.config.num_hidden_layers, hf.config.hidden_size))
    opt = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)

    def adder(i):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + vectors[i],) + output[1:]
            return output + vectors[i]
        return hook

    handles = [layer.register_forward_hook(adder(i)) for i, layer in enumerate(hf.model.layers)]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    try:
        for step in range(steps):
            batch = rng.sample(problems, n_prompts)
            texts = [tok.apply_chat_template([{"role": "user", "content": PROMPT.format(a=a, b=b)}], tokenize=False,
                                             add_generation_prompt=True) for a, b in batch for _ in range(group)]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            t0 = time.perf_counter()
            torch.manual_seed(seed * 100_003 + step)
            with torch.no_grad():
                out = hf.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id)
            t_sample = time.perf_counter() - t0
            prompt_len = enc["input_ids"].shape[1]
            completion = out[:, prompt_len:]
            is_eos = (completion == eos).int()
            mask = (is_eos.cumsum(1) - is_eos) == 0  # tokens up to and including the first end-of-turn
            texts_out = tok.batch_decode([c[m] for c, m in zip(completion, mask)], skip_special_tokens=True)
            rewards = torch.tensor([last_number_reward(t, a + b) for t, (a, b) in
                                    zip(texts_out, [p for p in batch for _ in range(group)])]).view(n_prompts, group)
            adv = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (group - 1)).flatten()
            t0 = time.perf_counter()
            attn = torch.cat([enc["attention_mask"], mask.long()], dim=1)
            positions = (attn.cumsum(1) - 1).clamp(min=0)
            logits = hf(input_ids=out, attention_mask=attn, position_ids=positions).logits[:, prompt_len - 1:-1]
            logp = logits.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
            loss = -(adv[:, None] * logp * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([vectors], clip)
            opt.step()
            t_grad = time.perf_counter() - t0
            rows.append({"step": step, "accuracy": float((rewards > 0).float().mean()),
                         "completion_len": float(mask.sum(1).float().mean()), "grad_norm": float(grad_norm),
                         "vector_norm_mean": float(vectors.detach().norm(dim=1).mean()),
                         "seconds_sampling": t_sample, "seconds_gradient": t_grad, "example": texts_out[0]})
            if on_step is not None:
                on_step(rows[-1])
    finally:
        for h in handles:
            h.remove()
    return vectors.detach().clone(), pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = gguf_to_hf_checkpoint()
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.padding_side = "left"
    task = arithmetic_task("add1", split="shared")
    problems = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"task": repr(task), "steps": args.steps, "trainer": "plain PyTorch prototype (MODELS.md section 11)",
               "seeds": {}}
    for seed in args.seeds:
        hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval().requires_grad_(False)
        vectors, df = train_prototype(hf, tok, problems, seed=seed, steps=args.steps, on_step=lambda r: print(
            f"step {r['step']}: acc {r['accuracy']:.3f} len {r['completion_len']:.1f} "
            f"({r['seconds_sampling']:.1f} s + {r['seconds_gradient']:.1f} s)", flush=True))
        del hf
        model = si.load_model()
        steering = si.SteeringSet.zeros(model, "all")
        with torch.no_grad():
            for v, row in zip(steering, vectors):
                v.vector.copy_(row)
        row = evaluate(model, task, {"prototype": steering}, samples=args.eval_samples).to_frame().to_dict("records")[0]
        row.update({
            "sec_sampling_per_step": float(df["seconds_sampling"].mean()),
            "sec_gradient_per_step": float(df["seconds_gradient"].mean()),
            "train_acc_last5": float(df["accuracy"].tail(5).mean()),
            "first_step_acc_50": int(df.index[df["accuracy"] >= 0.5][0]) if (df["accuracy"] >= 0.5).any() else None,
            "first_step_acc_85": int(df.index[df["accuracy"] >= 0.85][0]) if (df["accuracy"] >= 0.85).any() else None,
            "vector_norm_mean": float(df["vector_norm_mean"].iloc[-1]),
        })
        summary["seeds"][seed] = row
        df.drop(columns=["example"]).to_csv(out / f"add1-shared-prototype-seed{seed}-metrics.csv", index=False)
        steering.save(out / "vectors" / f"add1-shared-prototype-seed{seed}")
        print(json.dumps(row, indent=1, default=str), flush=True)
        (out / "add1-shared-prototype-summary.json").write_text(json.dumps(summary, indent=2, default=str))
        del model


if __name__ == "__main__":
    main()
