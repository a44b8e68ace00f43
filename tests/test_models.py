import json

import pytest
import torch

import steerinterp as si
from steerinterp.errors import ModelLoadError
from steerinterp.models import TinyConfig, tiny_checkpoint, tiny_hf_model


def test_tiny_is_llama_style(tiny):
    cfg = tiny.cfg
    assert cfg.normalization_type == "RMS" and cfg.gated_mlp and cfg.positional_embedding_type == "rotary"
    assert cfg.n_key_value_heads < cfg.n_heads  # grouped-query attention
    assert cfg.original_architecture == "LlamaForCausalLM"
    assert not any(p.requires_grad for p in tiny.parameters())


def test_tiny_is_seeded():
    a, _ = tiny_hf_model(TinyConfig(seed=1))
    b, _ = tiny_hf_model(TinyConfig(seed=1))
    c, _ = tiny_hf_model(TinyConfig(seed=2))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_matches_its_hf_checkpoint(tiny):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint()))
    toks = torch.tensor([[257, 72, 101, 108, 108, 111, 32, 119]])
    with torch.no_grad():
        assert (tiny(toks) - hf(toks).logits).abs().max() < 1e-5


def test_processed_weights_give_the_same_distribution(tiny):
    processed = si.load_model("tiny", device="cpu", processed=True)
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    with torch.no_grad():
        a = tiny(toks).log_softmax(-1)
        b = processed(toks).log_softmax(-1)
    assert (a - b).abs().max() < 1e-4
    # folding changes the weights themselves (norm scales move into the matrices)
    assert not torch.allclose(tiny.blocks[0].attn.W_Q, processed.blocks[0].attn.W_Q)


def test_local_checkpoint_directory_with_llama_in_its_name(tmp_path, tiny):
    # TransformerLens 3.9 guesses architectures from words in the path; a local dir must still load
    hf, tok = tiny_hf_model()
    d = tmp_path / "my-llama-checkpoint"
    hf.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    model = si.load_model(d, device="cpu")
    toks = torch.tensor([[257, 72, 101]])
    with torch.no_grad():
        assert torch.allclose(model(toks), tiny(toks), atol=1e-6)


def test_relayout_is_bit_identical(tiny):
    from steerinterp.models import relayout_for_speed

    model = si.load_model("tiny", device="cpu")
    toks = torch.tensor([[257, 72, 101, 108]])
    # undo the layout: contiguous storage, as TransformerLens creates it
    for b in model.blocks:
        for n in ("W_gate", "W_in", "W_out"):
            getattr(b.mlp, n).data = getattr(b.mlp, n).data.contiguous()
    model.unembed.W_U.data = model.unembed.W_U.data.contiguous()
    assert not model.blocks[0].mlp.W_gate.T.is_contiguous()
    with torch.no_grad():
        before = model(toks)
        relayout_for_speed(model)
        after = model(toks)
    assert model.blocks[0].mlp.W_gate.T.is_contiguous()
    assert torch.equal(before, after)


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a TransformerLens model name"):
        si.load_model("no-such-model-anywhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        si.load_model(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelLoadError, match="backend"):
        si.load_model("tiny", backend="vllm")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="needs internet"):
        si.load_model("gpt2", device="cpu")


def test_tiny_checkpoint_cache_is_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    d = tiny_checkpoint(TinyConfig(seed=5))
    (d / "steerinterp_manifest.json").unlink()  # an interrupted write leaves no manifest
    d2 = tiny_checkpoint(TinyConfig(seed=5))
    assert d2 == d and (d / "steerinterp_manifest.json").is_file()
    assert json.loads((d / "steerinterp_manifest.json").read_text())["seed"] == 5
