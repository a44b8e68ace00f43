"""Direct logit attribution on unprocessed weights: components add up to the model's own logit difference."""

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.errors import SteerInterpError
from tests.conftest import random_vector as _vec

PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a colour.<|im_end|>\n"]
COMPLETIONS = ["To solve it: 5", "hello there", "red"]
A_ID, B_ID = 84, 83  # two byte tokens of the tiny tokenizer


@pytest.fixture(scope="module")
def batch64(tiny64):
    return A.teacher_forcing_batch(tiny64, PROMPTS, COMPLETIONS)


def _forward_logits(model, batch, steering=None):
    with torch.no_grad(), A.batch.steering_context(model, steering, batch):
        return model(batch.tokens, attention_mask=batch.attention_mask).double()


@pytest.mark.parametrize("heads", [False, True])
def test_components_add_up_to_the_true_logit_difference(tiny64, batch64, heads):
    r = A.logit_attribution(tiny64, batch64, A_ID, against=B_ID, positions="completion", heads=heads, batch_size=2)
    logits = _forward_logits(tiny64, batch64)
    sel = batch64.positions("completion")
    true = (logits[..., A_ID] - logits[..., B_ID])[sel]
    assert torch.equal(r.sample, sel.nonzero()[:, 0]) and torch.equal(r.position, sel.nonzero()[:, 1])
    assert torch.allclose(r.logit, true, atol=1e-12)  # the model's own logit difference
    assert torch.allclose(r.total, true, atol=1e-9, rtol=1e-9) and r.gap < 1e-9
    assert r.components[0] == "embed" and r.components[-2:] == ["other", "bias"]
    assert r.contributions[:, -1].abs().max() == 0  # Llama: no final-norm bias, no b_U
    assert r.contributions[:, -2].abs().max() < 1e-9  # no hooks: the components are the whole stream
    if heads:  # the heads of a layer add up to its attention output's share (b_O = 0)
        plain = A.logit_attribution(tiny64, batch64, A_ID, against=B_ID, positions="completion")
        for layer in range(tiny64.cfg.n_layers):
            cols = [i for i, c in enumerate(r.components) if c.startswith(f"attn {layer} ")]
            assert len(cols) == tiny64.cfg.n_heads + 1
            whole = plain.contributions[:, plain.components.index(f"attn {layer}")]
            assert torch.allclose(r.contributions[:, cols].sum(1), whole, atol=1e-9)
    frame = r.to_frame()
    assert list(frame["component"]) == r.components and frame.attrs["label"] == "logit difference"
    assert len(r.to_frame(per_position=True)) == r.contributions.numel() and r.plot().data


def test_transformer_lens_logit_attrs_misses_the_final_norm_weight(tiny64, batch64):
    """TransformerLens's cache.logit_attrs(cache.decompose_resid()) divides by the norm scale but never
    multiplies by ln_final.w: on unprocessed weights its terms do not add up to the logit difference."""
    toks = batch64.tokens[:1]
    logits, cache = tiny64.run_with_cache(toks)
    true = float(logits[0, -1, A_ID] - logits[0, -1, B_ID])
    stack, labels = cache.decompose_resid(layer=-1, return_labels=True)
    tl = cache.logit_attrs(stack[:, :, -1], tokens=torch.tensor([A_ID]), incorrect_tokens=torch.tensor([B_ID]), pos_slice=-1)
    u = tiny64.W_U[:, A_ID] - tiny64.W_U[:, B_ID]
    gamma_less = (stack[:, 0, -1] / cache["ln_final.hook_scale"][0, -1]) @ u  # what TransformerLens computes
    assert torch.allclose(tl[:, 0], gamma_less, atol=1e-12)
    assert abs(float(tl.sum()) - true) > 1e-2  # the documented discrepancy
    r = A.logit_attribution(tiny64, cache, A_ID, against=B_ID, positions=-1)
    assert r.total.item() == pytest.approx(true, abs=1e-9) and r.logit.item() == pytest.approx(true, abs=1e-12)
    # the correct TransformerLens call: scale the stack AND multiply by the final norm's weight
    fixed = (cache.apply_ln_to_stack(stack[:, :, -1], layer=-1, pos_slice=-1) * tiny64.ln_final.w) @ (
        tiny64.W_U[:, A_ID] - tiny64.W_U[:, B_ID])
    assert float(fixed.sum()) == pytest.approx(true, abs=1e-9)
    ours = {c: r.contributions[0, i] for i, c in enumerate(r.components)}
    names = {"embed": "embed", **{f"{x}_{k}_out": f"{k} {x}" for x in range(tiny64.cfg.n_layers) for k in ("attn", "mlp")}}
    assert labels == list(names)
    for label, value in zip(labels, fixed[:, 0]):
        assert float(value) == pytest.approx(float(ours[names[label]]), abs=1e-12)


def test_steering_lands_in_other_and_float32_and_next_token(tiny, tiny64, batch64):
    v = _vec(tiny64, 4)
    vecs = si.SteeringSet.from_tensors(tiny64, {1: v})
    r = A.logit_attribution(tiny64, batch64, "next", positions="completion", steering=vecs)
    logits = _forward_logits(tiny64, batch64, vecs)
    sel = batch64.positions("completion")
    nxt = batch64.tokens[:, 1:][sel[:, :-1]]
    assert torch.allclose(r.logit, logits[sel].gather(1, nxt[:, None])[:, 0], atol=1e-12)
    assert r.gap < 1e-9 and r.label == "logit"
    # the vector, written at block 1, is the "other" term: v through the frozen final norm
    _, cache = A.batch.run_cached(tiny64, batch64, vecs, ["ln_final.hook_scale"])
    scale = cache["ln_final.hook_scale"][sel].double()
    expect = (v.double() * tiny64.ln_final.w.double() * tiny64.W_U.double()[:, nxt].T / scale).sum(-1)
    assert torch.allclose(r.contributions[:, r.components.index("other")], expect, atol=1e-9)
    # float32: the same identity to float32 rounding
    batch32 = A.teacher_forcing_batch(tiny, PROMPTS, COMPLETIONS)
    r32 = A.logit_attribution(tiny, batch32, A_ID, against=B_ID, positions="all")
    assert r32.gap < 1e-4 * max(1.0, float(r32.logit.abs().max()))


def test_logit_attribution_errors(tiny64, batch64):
    _, cache = tiny64.run_with_cache(batch64.tokens[:1], names_filter=["hook_embed"])
    with pytest.raises(SteerInterpError, match="cache lacks"):
        A.logit_attribution(tiny64, cache, A_ID)
    _, full = tiny64.run_with_cache(batch64.tokens[:1])
    with pytest.raises(SteerInterpError, match="needs a Batch"):
        A.logit_attribution(tiny64, full, A_ID, positions="completion")
    with pytest.raises(SteerInterpError, match="not a cache|give a Batch"):
        A.logit_attribution(tiny64, full, "next", positions="all")
    with pytest.raises(SteerInterpError, match="outside the vocabulary"):
        A.logit_attribution(tiny64, batch64, 10**6)
    with pytest.raises(SteerInterpError, match=r"\[batch\] or \[batch, seq\]"):
        A.logit_attribution(tiny64, batch64, torch.tensor([1, 2]))
    with pytest.raises(SteerInterpError, match="Batch, a GenerationOutput or an ActivationCache"):
        A.logit_attribution(tiny64, [1, 2, 3], A_ID)


def test_on_processed_weights_transformer_lens_agrees():
    """With fold_ln the final norm's weight lives in W_U, and TransformerLens's call is right."""
    model = si.load_model("tiny", device="cpu", dtype=torch.float64, processed=True)
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    logits, cache = model.run_with_cache(toks)
    tl = cache.logit_attrs(cache.decompose_resid(layer=-1)[:, :, -1], tokens=torch.tensor([A_ID]),
                           incorrect_tokens=torch.tensor([B_ID]), pos_slice=-1)
    r = A.logit_attribution(model, cache, A_ID, against=B_ID, positions=-1)
    true = float(logits[0, -1, A_ID] - logits[0, -1, B_ID])
    assert float(tl.sum()) == pytest.approx(true, abs=1e-9) and r.total.item() == pytest.approx(true, abs=1e-9)
