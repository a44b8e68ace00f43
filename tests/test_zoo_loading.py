"""Every architecture of the zoo loads as a HookedTransformer that computes what transformers computes.

Tiny random checkpoints (``models.zoo``) of each family are loaded with ``load_model(directory)`` and
compared with plain ``transformers`` on the same checkpoint: float32 logits (left padding and an attention
mask included), bfloat16 loading, the recorded ModelSpec, the context length, hub names resolved from a
(fake) local Hugging Face cache, and the settings a HookedTransformer cannot reproduce (refused with a
pointer to ``backend="bridge"``). ``scripts/support_matrix.py`` renders the recorded properties.
"""

import json
import shutil

import pytest
import torch

import steerinterp as si
from steerinterp.errors import ModelLoadError
from steerinterp.models import ZOO, zoo_checkpoint
from steerinterp.types import model_spec

LOADS = "loads (logits vs HF)"
SEQ = 14  # longer than the zoo's sliding window (8)


def _hf(directory, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).eval()


def _batch(vocab: int, pad_id: int, seed: int = 0):
    """Two rows of SEQ tokens, the second left-padded by 4, with its attention mask and position ids."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, min(vocab, 256), (2, SEQ), generator=g)
    mask = torch.ones_like(toks)
    toks[1, :4], mask[1, :4] = pad_id, 0
    return toks, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _hf_logits(hf, toks, mask, pos):
    with torch.no_grad():
        return hf(input_ids=toks, attention_mask=mask, position_ids=pos).logits


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request):
    """(name, HookedTransformer in float32, the HF model) for each zoo architecture."""
    name = request.param
    d = zoo_checkpoint(name)
    return name, si.load_model(d, device="cpu"), _hf(d)


def test_logits_match_transformers(zoo, record_property):
    name, model, hf = zoo
    record_property("capability", LOADS)
    toks, mask, pos = _batch(model.cfg.d_vocab, model.tokenizer.pad_token_id)
    want = _hf_logits(hf, toks, mask, pos)
    with torch.no_grad():
        full = model(toks[:1])  # no padding, no mask
        padded = model(toks, attention_mask=mask)
    assert (full - want[:1]).abs().max() < 1e-4, name
    real = mask.bool()
    assert (padded[real] - want[real]).abs().max() < 1e-4, name
    assert want.abs().max() > 1e-2  # a non-trivial network
    record_property("support", "yes")


def test_parameters_are_contiguous_frozen_and_savable(zoo, tmp_path):
    from safetensors.torch import save_file

    _, model, _ = zoo
    assert all(p.is_contiguous() and not p.requires_grad for p in model.parameters())
    assert not model.training
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))  # no two parameters share memory


@pytest.mark.parametrize("name", list(ZOO))
def test_bfloat16_loads_and_is_close(name):
    d = zoo_checkpoint(name)
    model = si.load_model(d, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    spec = model_spec(model)
    assert spec.dtype == "bfloat16" and spec.n_ctx == model.cfg.n_ctx == 256 and spec.name == str(d)
    toks, mask, pos = _batch(model.cfg.d_vocab, model.tokenizer.pad_token_id)
    want = _hf_logits(_hf(d), toks, mask, pos)
    with torch.no_grad():
        got = model(toks, attention_mask=mask).float()
    real = mask.bool()
    err = (got[real] - want[real]).norm() / want[real].norm()
    assert err < 0.05, (name, float(err))


@pytest.mark.parametrize("name", list(ZOO))
def test_processed_weights_give_transformers_distribution(name):
    """processed=True folds and centres only where that keeps the function (not OLMo-2's post-norms, not
    W_U under Gemma-2's logit soft-cap)."""
    d = zoo_checkpoint(name)
    model = si.load_model(d, device="cpu", processed=True)
    toks = torch.randint(0, 256, (1, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = model(toks).log_softmax(-1), _hf(d)(toks).logits.log_softmax(-1)
    assert (got - want).abs().max() < 1e-4, name


@pytest.mark.parametrize("name", ["qwen3", "mistral", "gemma3"])
def test_context_length_is_honoured_up_to_the_checkpoints(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(zoo_checkpoint(name), d)
    config = json.loads((d / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (d / "config.json").write_text(json.dumps(config))
    assert si.load_model(d, device="cpu").cfg.n_ctx == 2048  # the default
    model = si.load_model(d, device="cpu", n_ctx=4096)
    assert model.cfg.n_ctx == model_spec(model).n_ctx == 4096  # TransformerLens alone gives 2048 (Qwen3, Mistral)
    assert si.load_model(zoo_checkpoint(name), device="cpu").cfg.n_ctx == 256  # default capped by the checkpoint
    with pytest.raises(ModelLoadError, match="max_position_embeddings") as e:
        si.load_model(d, device="cpu", n_ctx=8193)
    assert e.value.setting == "n_ctx" and "\n" not in str(e.value)


def _fake_hub(tmp_path, monkeypatch, repo_id: str, source):
    """A Hugging Face cache in tmp_path holding ``source`` as the snapshot of ``repo_id`` (refs/main)."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_name_loads_from_the_local_cache(tmp_path, monkeypatch):
    name = "Qwen/Qwen2.5-Math-1.5B"
    _fake_hub(tmp_path, monkeypatch, name, zoo_checkpoint("qwen2"))
    model = si.load_model(name, device="cpu")
    assert model_spec(model).name == name and model.cfg.model_name == name
    reference = si.load_model(zoo_checkpoint("qwen2"), device="cpu")
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    with torch.no_grad():
        assert torch.equal(model(toks), reference(toks))
    again = si.load_model_from_spec(model_spec(model), device="cpu")  # a run directory's record reloads it
    assert model_spec(again).name == name


def test_transformer_lens_alias_resolves_to_its_hub_name(tmp_path, monkeypatch):
    _fake_hub(tmp_path, monkeypatch, "gpt2", zoo_checkpoint("gpt2"))  # "gpt2-small" is TransformerLens's alias
    model = si.load_model("gpt2-small", device="cpu")
    assert model.cfg.original_architecture == "GPT2LMHeadModel" and model_spec(model).name == "gpt2-small"


def test_hub_name_offline_without_a_cached_copy_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="needs internet") as e:
        si.load_model("Qwen/Qwen2.5-Math-1.5B", device="cpu")
    assert "\n" not in str(e.value) and "local checkpoint directory" in str(e.value)
    with pytest.raises(ModelLoadError, match="not a TransformerLens model name"):
        si.load_model("no-such-model-anywhere", device="cpu")


# ---- architectures and settings outside the zoo ---------------------------------------------------------
def _checkpoint(tmp_path, config, seed=0):
    """A seeded random checkpoint of ``config`` with the zoo's tokenizer, in tmp_path."""
    from transformers import AutoModelForCausalLM

    from steerinterp.models import tiny_tokenizer

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_(0.2 * torch.randn_like(p) if "norm" in n else 0.08 * torch.randn_like(p))
    d = tmp_path / type(hf).__name__
    hf.save_pretrained(str(d))
    tiny_tokenizer().save_pretrained(str(d))
    return d


def _shape(**kw):
    from steerinterp.models import tiny_tokenizer

    tok = tiny_tokenizer()
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, **kw)


def _assert_matches(d, seq=SEQ):
    model, hf = si.load_model(d, device="cpu"), _hf(d)
    toks = torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(toks) - hf(toks).logits).abs().max() < 1e-4


def test_gemma_1_matches_transformers(tmp_path):
    from transformers import GemmaConfig

    _assert_matches(_checkpoint(tmp_path, GemmaConfig(**_shape(), hidden_act="gelu_pytorch_tanh")))


def test_yarn_rotary_scaling_matches_transformers(tmp_path):
    from transformers import Qwen2Config

    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    _assert_matches(_checkpoint(tmp_path, Qwen2Config(**_shape(), rope_parameters=rope)), seq=40)


def test_head_dim_other_than_hidden_over_heads(tmp_path):
    from transformers import LlamaConfig

    _assert_matches(_checkpoint(tmp_path, LlamaConfig(**{**_shape(), "head_dim": 32})))


def _config_only(tmp_path, config):
    """A directory with ``config`` and the zoo tokenizer but no weights (refusals come before the weights)."""
    d = tmp_path / "ckpt"
    shutil.copytree(zoo_checkpoint("qwen2"), d)
    (d / "model.safetensors").unlink()
    config.save_pretrained(str(d))
    return d


@pytest.mark.parametrize("case", ["unknown-architecture", "dynamic-rope", "llama-with-biases", "quantised"])
def test_what_a_hooked_transformer_cannot_reproduce_is_refused(case, tmp_path):
    from transformers import GraniteConfig, LlamaConfig

    config = {
        "unknown-architecture": lambda: GraniteConfig(**_shape()),
        "dynamic-rope": lambda: LlamaConfig(**_shape(), rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                         "rope_theta": 10000.0}),
        "llama-with-biases": lambda: LlamaConfig(**_shape(), attention_bias=True),
        "quantised": lambda: LlamaConfig(**_shape(), quantization_config={"quant_method": "awq", "bits": 4}),
    }[case]()
    config.architectures = [{"GraniteConfig": "GraniteForCausalLM"}.get(type(config).__name__, "LlamaForCausalLM")]
    with pytest.raises(ModelLoadError, match="backend='bridge'") as e:
        si.load_model(_config_only(tmp_path, config), device="cpu")
    assert config.architectures[0] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_model_does_not_depend_on_the_checkpoint_file_afterwards(weights, tmp_path):
    """The parameters live in ordinary memory: rewriting (or cutting short) the checkpoint changes nothing."""
    from transformers import AutoModelForCausalLM

    d = tmp_path / "ckpt"
    shutil.copytree(zoo_checkpoint("qwen2"), d)
    if weights == "bin":  # the .bin route (transformers' own loader, memory-mapped)
        (d / "model.safetensors").unlink()
        torch.save(AutoModelForCausalLM.from_pretrained(str(zoo_checkpoint("qwen2"))).state_dict(), d / "pytorch_model.bin")
    for dtype in (torch.float32, torch.bfloat16):
        model = si.load_model(d, device="cpu", dtype=dtype)
        toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
        with torch.no_grad():
            before = model(toks)
        for f in d.glob("*.safetensors") if weights == "safetensors" else d.glob("*.bin"):
            data = f.read_bytes()
            f.write_bytes(b"\0" * (len(data) // 2))  # rewritten in place, shorter
            with torch.no_grad():
                assert torch.equal(model(toks), before)
            f.write_bytes(data)
