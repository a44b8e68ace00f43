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


def _plain_forward(model, toks):
    """Logits from TransformerLens's own MLP / unembed forwards (which copy W.T.contiguous() every call)."""
    from transformer_lens.components import GatedMLP, Unembed

    mods = [b.mlp for b in model.blocks] + [model.unembed]
    classes = [type(m) for m in mods]
    try:
        for m in mods:
            m.__class__ = GatedMLP if isinstance(m, GatedMLP) else Unembed
        with torch.no_grad():
            return model(toks)
    finally:
        for m, c in zip(mods, classes):
            m.__class__ = c


def test_relayout_keeps_transformer_lens_layout_and_follows_every_edit():
    from transformer_lens.components import GatedMLP, Unembed

    from steerinterp.models import relayout_for_speed

    model = si.load_model("tiny", device="cpu")
    assert type(model.blocks[0].mlp) is not GatedMLP and isinstance(model.blocks[0].mlp, GatedMLP)
    assert isinstance(model.unembed, Unembed)
    assert all(p.is_contiguous() for p in model.parameters())  # TransformerLens's own layout
    toks = torch.tensor([[257, 72, 101, 108], [1, 2, 3, 4]])

    def close(a, b):
        return torch.allclose(a, b, rtol=0, atol=1e-5 * b.abs().max().item())

    plain = _plain_forward(model, toks)
    with torch.no_grad():
        assert close(model(toks), plain)  # another BLAS path than TransformerLens's: equal to rounding
        assert close(model(toks[:1, :1]), _plain_forward(model, toks[:1, :1]))  # decode-shaped input
        relayout_for_speed(model)  # idempotent
        assert close(model(toks), plain)
    # no cached copy of a weight exists: in-place edits, also through .data (no version bump), are seen at once
    with torch.no_grad():
        model.W_U[:, 5] += 1.0
        model.blocks[1].mlp.W_in.data.mul_(1.5)
        model.blocks[2].mlp.W_out.data.zero_()
        edited = model(toks)
    assert not close(edited, plain) and close(edited, _plain_forward(model, toks))
    model.unembed.W_U.requires_grad_(True)  # gradients flow through the fast forward
    out = model(toks)
    out[..., 5].sum().backward()
    assert close(out.detach(), edited) and model.unembed.W_U.grad is not None
    model.unembed.W_U.requires_grad_(False)
    model.to(torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(toks), _plain_forward(model, toks), rtol=0, atol=1e-12)


def test_state_dict_saves_and_reloads_to_identical_logits(tmp_path):
    import copy

    from safetensors.torch import load_file, save_file

    model = si.load_model("tiny", device="cpu")
    toks = torch.tensor([[257, 72, 101, 108, 9]])
    with torch.no_grad():
        before = model(toks)
    assert model.W_U.view(-1).shape == (model.cfg.d_model * model.cfg.d_vocab,)
    assert model.blocks[0].mlp.W_gate.view(-1).numel() == model.cfg.d_model * model.cfg.d_mlp
    assert set(model.state_dict()) == set(si.load_model("tiny", device="cpu").state_dict())
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    fresh = si.load_model("tiny", device="cpu", tiny=si.models.TinyConfig(seed=3))  # other weights
    fresh.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(fresh(toks), before)
        assert torch.equal(clone(toks), before)


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
