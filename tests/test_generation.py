import pytest
import torch

import steerinterp as si
from steerinterp.errors import SteerInterpError
from steerinterp.models import zoo_checkpoint

PROMPTS = ["hello world, how are you", "a", "the quick brown fox jumps"]
ENGINES = ["hooked", "hf"]


def _vecs(model, scale=1.0, positions=None):
    g = torch.Generator().manual_seed(0)
    return si.SteeringSet.from_tensors(
        model, {1: scale * torch.randn(64, generator=g), 3: scale * torch.randn(64, generator=g)}, positions=positions
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steered", [False, True])
def test_batched_greedy_equals_one_by_one(tiny, engine, steered):
    vecs = _vecs(tiny) if steered else None
    batched = si.generate(tiny, PROMPTS, steering=vecs, max_new_tokens=12, temperature=0, engine=engine)
    assert batched.engine == engine
    for i, p in enumerate(PROMPTS):
        alone = si.generate(tiny, [p], steering=vecs, max_new_tokens=12, temperature=0, engine=engine)
        assert alone.completion_tokens[0] == batched.completion_tokens[i]
        assert alone.texts[0] == batched.texts[i]


@pytest.mark.parametrize("positions", [None, "prompt", "generated", slice(2, 9)])
def test_engines_are_token_identical(tiny, positions):
    vecs = _vecs(tiny, positions=positions)
    greedy = [si.generate(tiny, PROMPTS, steering=vecs, max_new_tokens=16, temperature=0, engine=e) for e in ENGINES]
    assert greedy[0].completion_tokens == greedy[1].completion_tokens
    sampled = [si.generate(tiny, PROMPTS, steering=vecs, max_new_tokens=16, seed=7, engine=e) for e in ENGINES]
    assert sampled[0].completion_tokens == sampled[1].completion_tokens


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("positions", [None, "prompt", "generated", slice(3, 8)])
def test_cached_generation_matches_a_full_forward(tiny, engine, positions):
    """Oracle: each greedy token is the argmax of a full (uncached) steered forward over its prefix."""
    vecs = _vecs(tiny, scale=3.0, positions=positions)
    out = si.generate(tiny, PROMPTS, steering=vecs, max_new_tokens=10, temperature=0, engine=engine)
    with torch.no_grad(), vecs.applied(tiny, prompt_mask=out.prompt_mask, attention_mask=out.attention_mask):
        logits = tiny(out.tokens, attention_mask=out.attention_mask)
    pred = logits[:, :-1].argmax(-1)
    target = out.tokens[:, 1:]
    m = out.completion_mask[:, 1:]
    assert torch.equal(pred[m], target[m])


def test_steering_changes_generation_and_positions_matter(tiny):
    base = si.generate(tiny, PROMPTS, max_new_tokens=8, temperature=0)
    strong = _vecs(tiny, scale=20.0)
    assert si.generate(tiny, PROMPTS, steering=strong, max_new_tokens=8, temperature=0).completion_tokens != (
        base.completion_tokens
    )
    # generated-only steering cannot change the first token: it is predicted at the last prompt position
    gen_only = si.generate(tiny, PROMPTS, steering=strong.with_positions("generated"), max_new_tokens=8, temperature=0)
    assert [t[0] for t in gen_only.completion_tokens] == [t[0] for t in base.completion_tokens]


def test_seeds(tiny):
    a = si.generate(tiny, PROMPTS, max_new_tokens=10, seed=1)
    b = si.generate(tiny, PROMPTS, max_new_tokens=10, seed=1)
    c = si.generate(tiny, PROMPTS, max_new_tokens=10, seed=2)
    assert a.completion_tokens == b.completion_tokens != c.completion_tokens
    tiny_p = si.generate(tiny, PROMPTS, max_new_tokens=10, seed=3, top_p=1e-6)
    greedy = si.generate(tiny, PROMPTS, max_new_tokens=10, temperature=0)
    assert tiny_p.completion_tokens == greedy.completion_tokens


def test_output_masks_and_eos(tiny):
    eos = tiny.tokenizer.eos_token_id
    # make EOS overwhelmingly likely after the first token with a vector along its unembedding
    push = si.SteeringSet.from_tensors(tiny, {3: 40 * tiny.W_U[:, eos] / tiny.W_U[:, eos].norm()},
                                       positions="generated")
    out = si.generate(tiny, PROMPTS, steering=push, max_new_tokens=10, temperature=0)
    assert out.finished.all()
    for row, m in zip(out.tokens, out.completion_mask):
        comp = row[m].tolist()
        assert comp[-1] == eos and eos not in comp[:-1]
    assert not (out.prompt_mask & out.completion_mask).any()
    assert torch.equal(out.attention_mask.bool(), out.prompt_mask | out.completion_mask)
    assert out.tokens.shape[1] == out.prompt_length + out.completion_lengths.max()
    no_stop = si.generate(tiny, PROMPTS, steering=push, max_new_tokens=6, temperature=0, stop_at_eos=False)
    assert (no_stop.completion_lengths == 6).all()
    assert list(out.to_frame().columns) == ["prompt", "completion", "n_tokens", "finished"]


def test_token_id_prompts_and_chunking(tiny):
    ids = [tiny.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    a = si.generate(tiny, ids, max_new_tokens=6, temperature=0)
    b = si.generate(tiny, PROMPTS, max_new_tokens=6, temperature=0, batch_size=2)
    assert a.completion_tokens == b.completion_tokens and b.tokens.shape[0] == 3


def test_chat_prompts(tiny):
    p = si.chat_prompts(tiny, ["hi"], system="be brief")
    assert p == ["<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10_000}, "context"),
        ({"engine": "vllm"}, "engine"),
        ({"engine": "bridge"}, "TransformerBridge"),
    ],
)
def test_bad_generation_args(tiny, kwargs, msg):
    with pytest.raises(SteerInterpError, match=msg):
        si.generate(tiny, ["hi"], **kwargs)


def test_bad_prompts(tiny):
    with pytest.raises(SteerInterpError, match="empty prompt"):
        si.generate(tiny, [""], max_new_tokens=2)
    with pytest.raises(SteerInterpError, match="no prompts"):
        si.generate(tiny, [], max_new_tokens=2)
    with pytest.raises(SteerInterpError, match="all strings"):
        si.generate(tiny, ["a", [1, 2]], max_new_tokens=2)


def test_hf_engine_refuses_hooks_it_cannot_mirror(tiny):
    v = si.SteeringSet([si.SteeringVector(torch.ones(64), "blocks.1.ln2.hook_normalized")])
    with pytest.raises(SteerInterpError, match="engine='hooked'"):
        si.generate(tiny, ["hi"], steering=v, engine="hf", max_new_tokens=2)
    assert si.generate(tiny, ["hi"], steering=v, max_new_tokens=2).engine == "hooked"


def test_processed_models_fall_back_to_the_hooked_engine():
    model = si.load_model("tiny", device="cpu", processed=True)
    with pytest.warns(UserWarning, match="fast rollout engine unavailable"):
        out = si.generate(model, ["hi"], max_new_tokens=2)
    assert out.engine == "hooked"


def test_mirror_is_rebuilt_when_weights_change():
    model = si.load_model("tiny", device="cpu")
    before = si.generate(model, PROMPTS, max_new_tokens=8, temperature=0, engine="hf")
    with torch.no_grad():
        model.blocks[2].mlp.W_out.mul_(5.0)  # e.g. an optimizer step in full fine-tuning
    after_hf = si.generate(model, PROMPTS, max_new_tokens=8, temperature=0, engine="hf")
    after_tl = si.generate(model, PROMPTS, max_new_tokens=8, temperature=0, engine="hooked")
    assert after_hf.completion_tokens == after_tl.completion_tokens != before.completion_tokens


def test_teacher_forced_logprobs(tiny):
    vecs = si.SteeringSet.zeros(tiny, [1, 3])
    with torch.no_grad():
        vecs[1].vector.normal_()
    out = si.generate(tiny, PROMPTS, steering=vecs, max_new_tokens=8, seed=0)
    lp = si.teacher_forced_logprobs(tiny, out.tokens, out.completion_mask, vecs,
                                    attention_mask=out.attention_mask)
    assert lp.shape == out.tokens.shape and (lp[~out.completion_mask] == 0).all() and (lp[out.completion_mask] < 0).all()
    # oracle: per-row, unpadded, by hand
    for b in range(len(PROMPTS)):
        real = out.attention_mask[b].bool()
        toks, comp = out.tokens[b][real][None], out.completion_mask[b][real]
        with torch.no_grad(), vecs.applied(tiny):
            ref = tiny(toks).log_softmax(-1)[0, :-1].gather(-1, toks[0, 1:, None])[:, 0]
        assert torch.allclose(lp[b][real][comp].detach(), ref[comp[1:]], atol=1e-5)
    # gradients reach the steering tensors only
    lp.sum().backward()
    assert vecs[1].vector.grad is not None and vecs[1].vector.grad.abs().sum() > 0
    assert vecs[3].vector.grad is not None
    assert all(p.grad is None for p in tiny.parameters())
    assert not any(p.requires_grad for p in tiny.parameters())


def test_teacher_forced_logprobs_do_not_touch_user_models_grad_flags():
    model = si.load_model("tiny", device="cpu")
    model.requires_grad_(True)
    vecs = si.SteeringSet.zeros(model, [2])
    toks = torch.tensor([[257, 72, 101, 108, 108]])
    cm = torch.tensor([[0, 0, 1, 1, 1]]).bool()
    si.teacher_forced_logprobs(model, toks, cm, vecs).sum().backward()
    assert all(p.grad is None for p in model.parameters()) and vecs[2].vector.grad is not None
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(SteerInterpError, match="first token"):
        si.teacher_forced_logprobs(model, toks, torch.ones_like(cm), vecs)


def test_per_prompt_seeds_make_samples_independent_of_batching(tiny):
    seeds = [11, 22, 33]
    together = si.generate(tiny, PROMPTS, max_new_tokens=10, seed=seeds)
    for i, p in enumerate(PROMPTS):
        alone = si.generate(tiny, [p], max_new_tokens=10, seed=[seeds[i]])
        assert alone.completion_tokens[0] == together.completion_tokens[i]
    reordered = si.generate(tiny, PROMPTS[::-1], max_new_tokens=10, seed=seeds[::-1])
    assert reordered.completion_tokens[::-1] == together.completion_tokens
    with pytest.raises(SteerInterpError, match="one seed per prompt"):
        si.generate(tiny, PROMPTS, max_new_tokens=2, seed=[1, 2])


def test_sampler_matches_the_distribution():
    from steerinterp.generation.sampling import next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20000, 4)
    g = [torch.Generator().manual_seed(0)]
    counts = torch.bincount(next_tokens(logits, 1.0, 1.0, g), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015)
    nucleus = torch.bincount(next_tokens(logits, 1.0, 0.7, g), minlength=4).float() / 20000
    assert nucleus[2] == 0 and nucleus[3] == 0 and abs(nucleus[0] - 0.625) < 0.015


def test_sampler_never_picks_a_zero_probability_token(monkeypatch):
    """Rows whose mass sits on the last tokens, with zero-probability tokens before and after, and uniforms at
    the ends of [0, 1): the running sum's flat stretches are never chosen."""
    from steerinterp.generation import sampling

    probs = torch.zeros(4, 6)
    probs[:, 2], probs[:, 4] = 1e-30, 1.0  # a tiny but non-zero token, a dominant one, zeros elsewhere
    logits = probs.log()
    for u in (0.0, 1 - 2**-53, 0.5):
        with monkeypatch.context() as m:
            m.setattr(sampling, "uniforms", lambda n, generators, device, u=u: torch.full((n,), u, dtype=torch.float64))
            chosen, logprob = sampling.sample_next(logits, 1.0, 1.0, None)
        assert set(chosen.tolist()) <= {2, 4} and torch.isfinite(logprob).all()
    counts = torch.bincount(sampling.next_tokens(logits[:1].expand(4000, 6), 1.0, 1.0,
                                                  [torch.Generator().manual_seed(0)]), minlength=6)
    assert counts.tolist() == [0, 0, 0, 0, 4000, 0]


@pytest.mark.parametrize("layers", [[0], [2], [1, 3]])
def test_skipping_the_frozen_prefix_changes_nothing(tiny64, layers):
    """Log-probs and gradients are the same whether or not the blocks before the first vector run
    under autograd, and equal a plain full-logits computation."""
    g = torch.Generator().manual_seed(3)
    out = si.generate(tiny64, PROMPTS, max_new_tokens=6, seed=0)
    grads, lps = [], []
    values = {layer: torch.randn(64, generator=g, dtype=torch.float64) for layer in layers}
    for skip in (True, False):
        vecs = si.SteeringSet.from_tensors(tiny64, values, trainable=True)
        lp = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, vecs,
                                        attention_mask=out.attention_mask, skip_frozen_prefix=skip)
        (lp.sum()).backward()
        grads.append([v.vector.grad.clone() for v in vecs])
        lps.append(lp.detach())
        with torch.no_grad(), vecs.applied(tiny64, attention_mask=out.attention_mask, prompt_mask=out.prompt_mask):
            full = tiny64(out.tokens, attention_mask=out.attention_mask).log_softmax(-1)
        ref = full[:, :-1].gather(-1, out.tokens[:, 1:, None])[..., 0] * out.completion_mask[:, 1:]
        assert (lp.detach()[:, 1:] - ref).abs().max() < 1e-10
    assert (lps[0] - lps[1]).abs().max() < 1e-12
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("layers", [[0], [2], [0, 1, 2, 3]])
def test_shared_prompt_gradient_pass_is_exact(tiny64, layers):
    """Running each distinct prompt once (KV cache with gradients, copied to its G samples) gives the
    same log-probs and gradients as running every row in full."""
    prompts = [p for p in PROMPTS for _ in range(3)]
    out = si.generate(tiny64, prompts, max_new_tokens=7, seed=list(range(len(prompts))))
    results = []
    for shared in (False, True):
        g = torch.Generator().manual_seed(5)
        vecs = si.SteeringSet.from_tensors(
            tiny64, {layer: torch.randn(64, generator=g, dtype=torch.float64) for layer in layers}, trainable=True,
            positions=slice(1, 100))
        lp = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, vecs, attention_mask=out.attention_mask,
                                        prompt_mask=out.prompt_mask,
                                        prompt_length=out.prompt_length if shared else None)
        (lp * torch.linspace(-1, 1, lp.shape[0], dtype=lp.dtype)[:, None]).sum().backward()
        results.append((lp.detach(), [v.vector.grad.clone() for v in vecs]))
    (lp_a, g_a), (lp_b, g_b) = results
    assert (lp_a - lp_b).abs().max() < 1e-10
    for a, b in zip(g_a, g_b):
        assert (a - b).abs().max() < 1e-10 and a.abs().max() > 0


def test_prompt_length_must_separate_prompt_from_completion(tiny):
    toks = torch.tensor([[257, 72, 101, 108, 108]])
    cm = torch.tensor([[0, 0, 1, 1, 1]]).bool()
    with pytest.raises(SteerInterpError, match="prompt_length=3"):
        si.teacher_forced_logprobs(tiny, toks, cm, prompt_length=3)


@pytest.mark.parametrize("prompt_length", [None, 100])
def test_sequences_longer_than_the_context_are_a_clear_error(tiny, prompt_length):
    n_ctx = tiny.cfg.n_ctx
    vecs = si.SteeringSet.zeros(tiny, [2])
    toks = torch.randint(3, 200, (2, n_ctx + 44), generator=torch.Generator().manual_seed(0))
    cm = torch.zeros_like(toks, dtype=torch.bool)
    cm[:, 100:] = True
    with pytest.raises(SteerInterpError, match=f"^{n_ctx + 44} tokens exceed the model's context of {n_ctx} ") as err:
        si.teacher_forced_logprobs(tiny, toks, cm, vecs, prompt_length=prompt_length)
    assert "\n" not in str(err.value)
    # left padding takes no position: a batch wider than the context runs when every row fits
    mask = torch.ones_like(toks)
    mask[0, :44] = 0
    with pytest.raises(SteerInterpError, match=f"^{n_ctx + 44} tokens exceed .* \\(row 1\\)"):
        si.teacher_forced_logprobs(tiny, toks, cm, vecs, attention_mask=mask, prompt_length=prompt_length)
    mask[1, :44] = 0
    cm &= mask.bool()
    lp = si.teacher_forced_logprobs(tiny, toks, cm, vecs, attention_mask=mask, prompt_length=prompt_length)
    assert lp.shape == toks.shape and torch.isfinite(lp).all()


def test_plain_prompts_get_the_bos_their_tokenizer_adds():
    """Gemma / Llama tokenizers put BOS in front of a text; generate does too (once: a chat template's own BOS
    is not doubled), so plain-text prompts read as the model was trained. SmolLM2-, Qwen-style tokenizers add
    none. (TransformerLens's wrapped tokenizer always adds one, so the rule is read from the checkpoint's.)"""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from steerinterp.generation.decode import encode_prompts
    from steerinterp.models.loading import prompt_bos
    from steerinterp.models.zoo import zoo_hf_model

    plain = si.load_model(zoo_checkpoint("qwen2"), device="cpu")
    assert prompt_bos(plain) is None
    assert encode_prompts(plain, ["hi"])[0] == [plain.tokenizer("hi", add_special_tokens=False)["input_ids"]]

    hf, tok = zoo_hf_model("gemma3")  # a checkpoint whose tokenizer adds BOS, like Gemma's
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        tok.save_pretrained(d)
        assert AutoTokenizer.from_pretrained(d)("hi")["input_ids"][0] == tok.bos_token_id
        model = si.load_model(d, device="cpu")
    bos = tok.bos_token_id
    assert prompt_bos(model) == bos
    ids, _ = encode_prompts(model, ["hi", f"{tok.bos_token}already"])
    assert ids[0][0] == bos and ids[0][1] != bos
    assert ids[1][0] == bos and ids[1][1] != bos
