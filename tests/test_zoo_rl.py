"""One RL step's quantities agree with transformers autograd for every architecture of the zoo.

The quantity an RL step differentiates is the per-token log-probability of a completion under the
steered model. For each zoo architecture it is computed with steerinterp's own API (a trainable
``SteeringSet`` at a middle layer's ``blocks.L.hook_resid_post``, ``teacher_forced_logprobs``; with and
without the shared-prompt KV cache an RL group uses) and with plain ``transformers`` (the same vector
added by a forward hook on the output of decoder layer L), on a left-padded batch; the log-probs must
agree to 1e-4 and the gradients of a policy-gradient loss with respect to the vector to 1e-3 (relative).
"""

import pytest
import torch

import steerinterp as si
from steerinterp.generation.decode import teacher_forced_logprobs
from steerinterp.models import ZOO, zoo_checkpoint
from steerinterp.steering import SteeringSet

RL = "RL gradients vs HF"
P, C = 6, 5  # prompt and completion lengths


@pytest.fixture(scope="module", params=list(ZOO))
def pair(request):
    from transformers import AutoModelForCausalLM

    d = zoo_checkpoint(request.param)
    return request.param, si.load_model(d, device="cpu"), AutoModelForCausalLM.from_pretrained(str(d)).eval()


def _batch(pad_id: int):
    """Three rows: prompts of P tokens (row 1 left-padded by 2, row 2 repeating row 0's prompt as an RL
    group does) followed by C completion tokens."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 256, (3, P + C), generator=g)
    toks[2, :P] = toks[0, :P]
    mask = torch.ones_like(toks)
    toks[1, :2], mask[1, :2] = pad_id, 0
    completion = torch.zeros_like(toks, dtype=torch.bool)
    completion[:, P:] = True
    return toks, mask, completion


def _hf_layer(hf, layer: int):
    return hf.transformer.h[layer] if hasattr(hf, "transformer") else hf.model.layers[layer]


def _hf_logprobs(hf, layer, vector, toks, mask, completion):
    """Completion log-probs of the HF model with ``vector`` added to decoder layer ``layer``'s output."""
    def add(module, args, out):
        if isinstance(out, tuple):
            return (out[0] + vector,) + tuple(out[1:])
        return out + vector

    handle = _hf_layer(hf, layer).register_forward_hook(add)
    try:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = hf(input_ids=toks, attention_mask=mask, position_ids=pos).logits
    finally:
        handle.remove()
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, toks[:, 1:, None])[..., 0]
    out = torch.zeros(toks.shape)
    out[:, 1:] = torch.where(completion[:, 1:], lp, torch.zeros_like(lp))
    return out


@pytest.mark.parametrize("shared_prompt", [False, True], ids=["rows", "shared-prompt"])
def test_rl_logprobs_and_vector_gradients_match_transformers(pair, shared_prompt, record_property):
    name, model, hf = pair
    record_property("capability", RL)
    layer = model.cfg.n_layers // 2
    g = torch.Generator().manual_seed(1)
    vector = 0.5 * torch.randn(model.cfg.d_model, generator=g)
    advantages = torch.tensor([1.0, -0.5, 0.25])
    toks, mask, completion = _batch(model.tokenizer.pad_token_id)

    steering = SteeringSet.from_tensors(model, {layer: vector}, trainable=True)
    lp = teacher_forced_logprobs(model, toks, completion, steering, attention_mask=mask,
                                 prompt_length=P if shared_prompt else None)
    (-(lp.sum(-1) * advantages).sum()).backward()
    grad = steering[layer].vector.grad

    hf_vector = vector.clone().requires_grad_(True)
    want = _hf_logprobs(hf, layer, hf_vector, toks, mask, completion)
    (-(want.sum(-1) * advantages).sum()).backward()

    assert (lp.detach() - want.detach()).abs().max() < 1e-4, name
    assert hf_vector.grad.norm() > 1e-3  # the loss depends on the vector
    rel = (grad - hf_vector.grad).norm() / hf_vector.grad.norm()
    assert rel < 1e-3, (name, float(rel))
    record_property("support", "yes")
