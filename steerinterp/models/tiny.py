"""The tiny random model: a real Hugging Face Llama checkpoint on disk, seeded, for fast tests.

Because it is an HF checkpoint directory, every path a user's model takes (directory loading, the
fast rollout mirror, parity checks) runs in the unit tests too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from steerinterp._files import atomic_dir, cache_dir


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the random test model. Defaults: 4 layers, d_model 64, 4 query / 2 key-value heads."""

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    n_ctx: int = 256
    rope_theta: float = 10000.0
    seed: int = 0
    init_std: float = 0.08


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + 3 ChatML specials) with a ChatML chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=template,
        model_max_length=4096,
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )


def tiny_hf_model(cfg: TinyConfig = TinyConfig()):
    """The seeded random ``LlamaForCausalLM`` behind ``load_model("tiny")``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        max_position_embeddings=cfg.n_ctx,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random norm scales so that folding them is non-trivial
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(cfg.init_std * torch.randn(p.shape, generator=gen))
    return model.eval(), tok


def tiny_checkpoint(cfg: TinyConfig = TinyConfig()) -> Path:
    """Write (once, atomically) the tiny model as an HF checkpoint directory and return its path."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    directory = cache_dir() / "checkpoints" / f"tiny-random-{digest}"
    marker = directory / "steerinterp_manifest.json"
    if marker.is_file():
        return directory
    model, tok = tiny_hf_model(cfg)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "steerinterp_manifest.json").write_text(json.dumps(asdict(cfg)))
    return directory


