"""Generation: steered decoding (batched, left-padded, KV-cached) and teacher-forced log-probs.

    decode.py     generate, GenerationOutput, teacher_forced_logprobs, encode_prompts, left_pad
    engines.py    the Engine Protocol; HookedEngine (reference), HFEngine (fast mirror), BridgeEngine
    hf_mirror.py  the checkpoint's transformers class on a HookedTransformer's weights, self-checked
    sampling.py   the one sampler (greedy / temperature / top-p) every engine shares
"""

from steerinterp.generation.decode import (
    GenerationOutput,
    encode_prompts,
    frozen_weights,
    generate,
    left_pad,
    teacher_forced_logprobs,
)
from steerinterp.generation.engines import BridgeEngine, Engine, HFEngine, HookedEngine, choose_engine

__all__ = [
    "BridgeEngine", "Engine", "GenerationOutput", "HFEngine", "HookedEngine", "choose_engine", "encode_prompts",
    "frozen_weights", "generate", "left_pad", "teacher_forced_logprobs",
]
