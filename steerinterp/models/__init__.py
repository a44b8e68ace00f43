"""Models: loading any checkpoint as a TransformerLens model, the tiny test model, the embedded GGUF, chat.

This room imports nothing from generation, rl, analysis, sae or app.

    precision.py  dtype="auto": bfloat16 on a GPU or an AMX-BF16 / AVX512-BF16 CPU, float32 elsewhere;
                float32_arithmetic(): a context computing a half-precision model's function in float32
    loading.py  load_model (embedded / tiny / local HF directory / TransformerLens name; hooked or bridge),
                load_finetuned, load_model_from_spec, relayout_for_speed
    convert.py  a checkpoint's config.json -> TransformerLens config and state dict, for every supported family
    tiny.py     TinyConfig and the seeded random Llama checkpoint behind load_model("tiny")
    zoo.py      tiny random checkpoints of every supported architecture (Llama-3.1, Qwen2/3, Mistral, Phi-3,
                Gemma-2/3, OLMo-2, GPT-2) for offline tests
    gguf.py     the embedded SmolLM2 GGUF -> a cached HF checkpoint (dequantise, unpermute q/k, tokenizer)
    chat.py     chat_prompts and the papers' system prompt
"""

from steerinterp.models.chat import PAPER_SYSTEM_PROMPT, chat_prompts
from steerinterp.models.loading import (
    EMBEDDED,
    TINY,
    checkpoint_config,
    default_device,
    dtype_choice,
    hub_snapshot,
    load_finetuned,
    load_model,
    load_model_from_spec,
    relayout_for_speed,
)
from steerinterp.models.precision import (
    DtypeChoice,
    automatic_dtype,
    cpu_bf16_flags,
    float32_arithmetic,
    resolve_dtype,
)
from steerinterp.models.tiny import TinyConfig, tiny_checkpoint, tiny_hf_model, tiny_tokenizer
from steerinterp.models.zoo import ZOO, zoo_checkpoint, zoo_hf_model

__all__ = [
    "EMBEDDED", "PAPER_SYSTEM_PROMPT", "TINY", "ZOO", "DtypeChoice", "TinyConfig", "automatic_dtype", "chat_prompts",
    "checkpoint_config", "cpu_bf16_flags", "default_device", "dtype_choice", "float32_arithmetic", "hub_snapshot",
    "load_finetuned", "load_model", "load_model_from_spec", "relayout_for_speed", "resolve_dtype", "tiny_checkpoint",
    "tiny_hf_model", "tiny_tokenizer", "zoo_checkpoint", "zoo_hf_model",
]
