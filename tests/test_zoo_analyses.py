"""Every analysis against plain ``transformers``, for every architecture of the zoo, or its one-line refusal.

The oracle is the checkpoint itself run by ``AutoModelForCausalLM`` (float64, eager attention) with forward
hooks that add the vectors to decoder-layer outputs and patch activations; the table ``SITES`` below says
where each activation lives in each family's modules (the oracle's own knowledge, not the library's).
Analyses that only run forwards through hooks are checked on a few architectures (Llama, Gemma-2 with its
sandwich norms and soft-caps, GPT-2 with LayerNorm and learned positions); those that do architecture
algebra (final norm, unembedding, soft-cap, per-head splits) on every architecture and both backends.

Each per-architecture test records ``capability`` (the analysis), ``support`` (``yes`` / ``refused`` /
``not loaded``) and ``max_error`` with pytest's ``record_property``, so that
``pytest --junitxml`` feeds a support matrix.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.errors import SteerInterpError
from steerinterp.models.zoo import ZOO, zoo_checkpoint

BACKENDS = ("hooked", "bridge")
ALL = [pytest.param(n, b, id=f"{n}-{b}") for n in ZOO for b in BACKENDS]
FEW = [pytest.param(n, b, id=f"{n}-{b}") for n in ("llama-3.1", "gemma2", "gpt2") for b in BACKENDS]
PROMPTS, COMPLETIONS = ["hello there", "a b"], [" yes it is", " no"]  # left- and right-padded rows
SOFT_CAPPED = {"gemma2"}  # final_logit_softcapping in the zoo's config
POST_NORMS = {"gemma2", "gemma3", "olmo2"}  # a norm between the attention output and the residual stream
TRACK = "e"
# a TransformerBridge in float64 turns left-padded rows into NaN (its sdpa attention on fully masked padding
# queries); the bridge runs in float32 here, with a float32 tolerance
DTYPE = {"hooked": torch.float64, "bridge": torch.float32}
TOL = {"hooked": 1e-6, "bridge": 1e-4}

# where activations live in each family's transformers modules (per decoder layer):
#   attn_add / mlp_add: the module whose output is added to the residual stream
#   mid_in: the module whose input is the residual between attention and MLP (only the MLP reads it)
#   o_in: the output projection, whose input is the heads' z; q/k/v: (module, offset in its last dimension
#   or None where the output is [batch, pos, heads, d_head], "hp" for [batch, heads, pos, d_head]) holding the
#   tensors attention scores read
_LLAMA = {"attn_add": "self_attn", "mlp_add": "mlp", "mid_in": "post_attention_layernorm", "o_in": "self_attn.o_proj",
          "q": ("self_attn.q_proj", 0), "k": ("self_attn.k_proj", 0), "v": ("self_attn.v_proj", 0)}
_GEMMA = {**_LLAMA, "attn_add": "post_attention_layernorm", "mlp_add": "post_feedforward_layernorm",
          "mid_in": "pre_feedforward_layernorm"}
SITES = {
    "llama-3.1": _LLAMA, "qwen2": _LLAMA, "qwen2-untied": _LLAMA, "mistral": _LLAMA,
    "qwen3": {**_LLAMA, "q": ("self_attn.q_norm", None), "k": ("self_attn.k_norm", None)},
    "phi3": {**_LLAMA, "q": ("self_attn.qkv_proj", 0), "k": ("self_attn.qkv_proj", 64), "v": ("self_attn.qkv_proj", 96)},
    "gemma2": _GEMMA,
    "gemma3": {**_GEMMA, "q": ("self_attn.q_norm", "hp"), "k": ("self_attn.k_norm", "hp")},  # [b, heads, pos, d]
    "olmo2": {**_LLAMA, "attn_add": "post_attention_layernorm", "mlp_add": "post_feedforward_layernorm",
              "mid_in": "mlp", "q": ("self_attn.q_norm", 0), "k": ("self_attn.k_norm", 0)},
    "gpt2": {"attn_add": "attn", "mlp_add": "mlp", "mid_in": "ln_2", "o_in": "attn.c_proj",
             "q": ("attn.c_attn", 0), "k": ("attn.c_attn", 64), "v": ("attn.c_attn", 128)},
}
assert set(SITES) == set(ZOO)

_MODELS: dict = {}
_ORACLES: dict = {}


def zoo_model(name, backend, record_property=None):
    """The zoo checkpoint loaded by steerinterp in float64 (cached), or a skip naming why it does not load."""
    key = (name, backend)
    if key not in _MODELS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _MODELS[key] = si.load_model(zoo_checkpoint(name), backend=backend, device="cpu", dtype=DTYPE[backend])
        except (NotImplementedError, AttributeError, SteerInterpError, KeyError, ValueError) as e:
            _MODELS[key] = e
    m = _MODELS[key]
    if isinstance(m, Exception):
        if record_property is not None:
            record_property("support", "not loaded")
        pytest.skip(f"{name} does not load with backend={backend!r}: {type(m).__name__}: {str(m)[:120]}")
    return m


class Oracle:
    """The plain transformers model of a zoo checkpoint, with vectors and patches as forward hooks."""

    def __init__(self, name):
        from transformers import AutoModelForCausalLM

        self.name, self.sites = name, SITES[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.hf = AutoModelForCausalLM.from_pretrained(str(zoo_checkpoint(name)), dtype=torch.float64,
                                                           attn_implementation="eager").eval()
        gpt2 = name == "gpt2"
        self.layers = self.hf.transformer.h if gpt2 else self.hf.model.layers
        self.norm = self.hf.transformer.ln_f if gpt2 else self.hf.model.norm
        self.layernorm = gpt2
        self.cap = getattr(self.hf.config, "final_logit_softcapping", None)
        self.w_u = self.hf.lm_head.weight.detach().T  # [d, vocab]
        self.d_head = self.hf.config.hidden_size // self.hf.config.num_attention_heads

    def module(self, layer, path):
        return self.layers[layer].get_submodule(path)

    @torch.no_grad()
    def run(self, batch, vectors=None, edits=(), attentions=False):
        """``(logits, record)`` of the padded batch, each row run alone without its padding (pads are 0):
        logits as the model returns them (soft-capped) and, per layer, its input (``in``), its output before
        (``raw``) and after (``out``) the vector; ``attentions`` adds ``record["attn"][layer]`` patterns.

        ``edits``: ``(layer, module path, "input" | "output", fn)``; ``fn(tensor) -> tensor`` replaces the
        module's first input or (first) output of the current row: read other runs' tensors of that row
        with ``self.rows(t)``, store tensors with ``self.keep(store, key, x)``."""
        vectors = vectors or {}
        full: dict = {}
        logits = None
        for r in range(len(batch)):
            real = batch.attention_mask[r].bool()
            self.cur = (r, real, len(batch))
            out, rec = self._run_row(batch.tokens[r, real][None], vectors, edits, attentions)
            out = out.logits
            if logits is None:
                logits = out.new_zeros((len(batch), batch.tokens.shape[1], out.shape[-1]))
            logits[r, real] = out[0]
            for kind, per_layer in rec.items():
                for li, t in per_layer.items():
                    if kind == "attn":  # keys padded too
                        keys = t.new_zeros(t.shape[:3] + (len(real),))
                        keys[..., real] = t
                        t = keys
                    self.keep(full.setdefault(kind, {}), li, t)
        return logits, full

    def rows(self, t):
        """The current row of a padded [batch, pos, ...] tensor, without its padding ([1, n, ...])."""
        r, real, _ = self.cur
        return t[r : r + 1, real]

    def keep(self, store, key, x):
        """Put the current row's ``x`` [1, n, ...] into ``store[key]``, a zero-padded [batch, pos, ...] tensor."""
        r, real, n_rows = self.cur
        if key not in store:
            store[key] = x.new_zeros((n_rows, len(real)) + tuple(x.shape[2:]))
        store[key][r, real] = x[0]
        return x

    def _run_row(self, tokens, vectors, edits, attentions):
        rec = {"in": {}, "raw": {}, "out": {}}
        handles = []

        def first(x):
            return x[0] if isinstance(x, tuple) else x

        def replace(x, new):
            return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new

        for li, layer in enumerate(self.layers):
            def pre(mod, args, kwargs, li=li):
                rec["in"][li] = (args[0] if args else kwargs["hidden_states"]).clone()

            def post(mod, args, kwargs, out, li=li):
                h = first(out)
                rec["raw"][li] = h.clone()
                if li in vectors:
                    h = h + vectors[li].to(h.dtype)
                rec["out"][li] = h
                return replace(out, h)

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post, with_kwargs=True))
        for li, path, side, fn in edits:
            mod = self.module(li, path)
            if side == "input":
                def epre(m, args, kwargs, fn=fn):
                    if args:
                        return (fn(args[0]),) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

                handles.append(mod.register_forward_pre_hook(epre, with_kwargs=True))
            else:
                handles.append(mod.register_forward_hook(lambda m, a, out, fn=fn: replace(out, fn(first(out)))))
        try:
            out = self.hf(input_ids=tokens, output_attentions=attentions)
        finally:
            for h in handles:
                h.remove()
        if attentions:  # [1, heads, q, k] -> stored as [1, q, heads, k] so that rows pad along positions
            rec["attn"] = {li: a.permute(0, 2, 1, 3) for li, a in enumerate(out.attentions)}
        return out, rec

    def readout(self, h):
        """Logits of residuals before the final norm, as the model computes them (norm, lm_head, soft-cap)."""
        logits = self.hf.lm_head(self.norm(h))
        return self.cap * torch.tanh(logits / self.cap) if self.cap else logits

    def scale(self, h):
        """The final norm's scale sigma(h) [..., 1]."""
        eps = getattr(self.norm, "eps", None) or getattr(self.norm, "variance_epsilon", None)
        c = h - h.mean(-1, keepdim=True) if self.layernorm else h
        return (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def linear(self, c):
        """The final norm's linear part (gain * centring) of c, from the transformers module itself:
        (norm(c) - norm(0)) * sigma(c)."""
        return (self.norm(c) - self.norm(torch.zeros_like(c))) * self.scale(c)

    def head_slice(self, kind, index, out):
        """The view of head / group ``index`` of a q / k / v tensor (position-major, see ``pos_major``)."""
        _, offset = self.sites[kind]
        if offset in (None, "hp"):
            return (slice(None), slice(None), index)
        lo = offset + index * self.d_head
        return (slice(None), slice(None), slice(lo, lo + self.d_head))

    def pos_major(self, kind, x):
        """A q / k / v module output with positions in dimension 1 (and back: the swap is its own inverse)."""
        return x.transpose(1, 2) if self.sites[kind][1] == "hp" else x

    def set_heads(self, kind, idx, source):
        """An edit that puts head / group ``idx`` of ``source`` (padded, position-major) into a q / k / v output."""
        def fn(x):
            x = self.pos_major(kind, x).clone()
            for i in idx:
                sl = self.head_slice(kind, i, x)
                x[sl] = self.rows(source)[sl]
            return self.pos_major(kind, x)
        return fn


def oracle(name) -> Oracle:
    if name not in _ORACLES:
        _ORACLES[name] = Oracle(name)
    return _ORACLES[name]


def vector(seed, scale=2.0, d=64):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def batch_for(model):
    return A.teacher_forcing_batch(model, PROMPTS, COMPLETIONS)


def kl(lp, lq):
    return (lp.exp() * (lp - lq)).sum(-1)


def done(record_property, err, backend, factor=1.0):
    """Record support and the largest error, and check it against the backend's tolerance (times factor)."""
    record_property("support", "yes")
    record_property("max_error", f"{err:.1e}")
    assert err < TOL[backend] * factor, err


# ---- read-outs through the final norm, unembedding and soft-cap ------------------------------------------


@pytest.mark.parametrize("name,backend", ALL)
def test_token_shift(name, backend, record_property):
    record_property("capability", "token_shift")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(1)
    res = A.token_shift(model, batch, si.SteeringSet.from_tensors(model, {1: s}), track=[TRACK]).to_frame()
    (base, _), (steer, _) = o.run(batch), o.run(batch, {1: s})
    sel = batch.predicting_mask
    lb, ls = torch.log_softmax(base[sel], -1), torch.log_softmax(steer[sel], -1)
    tid = int(model.tokenizer(TRACK, add_special_tokens=False)["input_ids"][0])
    err = max((torch.tensor(res["kl"].values) - kl(ls, lb)).abs().max().item(),
              (torch.tensor(res[f"dp[{TRACK}]"].values) - (ls[:, tid].exp() - lb[:, tid].exp())).abs().max().item())
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_residual_logit_lens(name, backend, record_property):
    record_property("capability", "residual_logit_lens")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(2)
    res = A.residual_logit_lens(model, batch, si.SteeringSet.from_tensors(model, {0: s}), positions="completion")
    (_, rb), (steer, rs) = o.run(batch), o.run(batch, {0: s})
    sel = batch.predicting_mask
    want = [kl(torch.log_softmax(o.readout(rs["out"][x][sel]), -1), torch.log_softmax(o.readout(rb["out"][x][sel]), -1)).mean()
            for x in range(model.cfg.n_layers)]
    err = (torch.tensor(res.kl) - torch.stack(want)).abs().max().item()
    assert torch.allclose(o.readout(rs["out"][model.cfg.n_layers - 1])[sel], steer[sel], atol=1e-9)  # the oracle's read-out
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", FEW)
def test_first_token_prob(name, backend, record_property):
    record_property("capability", "prefix_control.first_token_prob")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    s = vector(3)
    tid = int(model.tokenizer(TRACK, add_special_tokens=False)["input_ids"][0])
    got = A.first_token_prob(model, PROMPTS, tid, steering=si.SteeringSet.from_tensors(model, {2: s}))
    batch = A.teacher_forcing_batch(model, PROMPTS, [TRACK] * 2)
    out, _ = o.run(batch, {2: s})
    want = torch.softmax(out[torch.arange(2), batch.last_prompt_index], -1)[:, tid].mean()
    done(record_property, abs(got - float(want)), backend)


# ---- algebra on the final norm and the unembedding -------------------------------------------------------


@pytest.mark.parametrize("name,backend", ALL)
def test_vector_logit_lens(name, backend, record_property):
    record_property("capability", "vector_logit_lens")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    vecs = {1: vector(4), 2: vector(5)}
    m = torch.stack(list(vecs.values()))
    raw, norm = A.vector_logit_lens(model, vecs), A.vector_logit_lens(model, vecs, mode="norm")
    errs = []
    for res, lin in ((raw, m), (norm, o.linear(m))):
        dot = lin @ o.w_u
        cos = torch.nn.functional.normalize(lin, dim=-1) @ torch.nn.functional.normalize(o.w_u, dim=0)
        errs += [((res.dot - dot).abs().max() / dot.abs().max()).item(), (res.cos - cos).abs().max().item()]
    done(record_property, max(errs), backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_route_attribution(name, backend, record_property):
    record_property("capability", "route_attribution")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(6)
    vecs = si.SteeringSet.from_tensors(model, {0: s})
    if name in SOFT_CAPPED:
        with pytest.raises(SteerInterpError, match="soft-capped") as e:
            A.route_attribution(model, batch, vecs, tokens=[TRACK], positions="completion")
        record_property("support", "refused")
        record_property("refusal", str(e.value))
        return
    res = A.route_attribution(model, batch, vecs, tokens=[TRACK], positions="completion")
    got = dict(zip(res.to_frame()["component"], res.to_frame()["contribution"]))
    tid = int(model.tokenizer(TRACK, add_special_tokens=False)["input_ids"][0])
    sel = batch.predicting_mask
    site = o.sites
    cap = {}

    def grab(key):
        return lambda x: o.keep(cap, key, x.clone())

    def run(vectors, tag):
        edits = [(x, site[k + "_add"], "output", grab((tag, k, x))) for x in range(model.cfg.n_layers) for k in ("attn", "mlp")]
        return o.run(batch, vectors, edits)

    (base, rb), (steer, rs) = run(None, "b"), run({0: s}, "s")
    n = model.cfg.n_layers - 1
    hb, hs = rb["out"][n][sel], rs["out"][n][sel]
    inv_s, inv_b = 1 / o.scale(hs), 1 / o.scale(hb)
    w = o.w_u[:, tid]
    want = {"direct": (o.linear(s.expand_as(hs)) * inv_s) @ w, "norm": (o.linear(hb) * (inv_s - inv_b)) @ w}
    for x in range(1, model.cfg.n_layers):
        for k in ("attn", "mlp"):
            want[f"{k} {x}"] = (o.linear(cap[("s", k, x)][sel] - cap[("b", k, x)][sel]) * inv_s) @ w
    exact = (steer[sel][:, tid] - base[sel][:, tid]).mean().item()
    err = max(abs(got[c] - want[c].mean().item()) for c in want)
    err = max(err, abs(sum(got.values()) - exact), abs(res.to_frame().attrs["exact_logit_change"][TRACK] - exact))
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_logit_attribution(name, backend, record_property):
    record_property("capability", "logit_attribution")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    if name in SOFT_CAPPED:
        with pytest.raises(SteerInterpError, match="soft-caps") as e:
            A.logit_attribution(model, batch, TRACK, against="a")
        record_property("support", "refused")
        record_property("refusal", str(e.value))
        return
    res = A.logit_attribution(model, batch, TRACK, against="a", positions="completion")
    t, a = (int(model.tokenizer(x, add_special_tokens=False)["input_ids"][0]) for x in (TRACK, "a"))
    cap = {}

    def grab(key):
        return lambda x: o.keep(cap, key, x.clone())

    edits = [(x, o.sites[k + "_add"], "output", grab((k, x))) for x in range(model.cfg.n_layers) for k in ("attn", "mlp")]
    out, rec = o.run(batch, None, edits)
    sel = batch.predicting_mask
    h = rec["out"][model.cfg.n_layers - 1][sel]
    u = o.w_u[:, t] - o.w_u[:, a]

    def read(c):
        return (o.linear(c[sel]) / o.scale(h)) @ u

    want = {f"{k} {x}": read(cap[(k, x)]) for x in range(model.cfg.n_layers) for k in ("attn", "mlp")}
    if name == "gpt2":
        pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        want["embed"], want["pos_embed"] = read(o.hf.transformer.wte(batch.tokens)), read(o.hf.transformer.wpe(pos))
        beta = o.norm(torch.zeros(1, u.shape[0], dtype=u.dtype))[0]
        want["bias"] = (beta @ u).expand(int(sel.sum()))
    else:
        want["embed"] = read(rec["in"][0])
    frame = res.to_frame(per_position=True)
    got = {c: torch.tensor(frame[frame["component"] == c]["contribution"].values) for c in res.components}
    logit = out[sel][:, t] - out[sel][:, a]
    err = max((got[c] - want[c]).abs().max().item() for c in want)
    err = max(err, got["other"].abs().max().item(), (res.logit - logit).abs().max().item(), res.gap)
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_logit_attribution_by_head(name, backend, record_property):
    record_property("capability", "logit_attribution(heads=True)")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    if name in SOFT_CAPPED | POST_NORMS:
        with pytest.raises(SteerInterpError, match="soft-caps|heads") as e:
            A.logit_attribution(model, batch, TRACK, against="a", heads=True)
        record_property("support", "refused")
        record_property("refusal", str(e.value))
        return
    res = A.logit_attribution(model, batch, TRACK, against="a", positions="completion", heads=True)
    t, a = (int(model.tokenizer(x, add_special_tokens=False)["input_ids"][0]) for x in (TRACK, "a"))
    cap = {}
    last = model.cfg.n_layers - 1
    _, rec = o.run(batch, None, [(last, o.sites["o_in"], "input", lambda x: o.keep(cap, "z", x.clone()))])
    sel = batch.predicting_mask
    h, u = rec["out"][last][sel], o.w_u[:, t] - o.w_u[:, a]
    w_o = o.module(last, o.sites["o_in"]).weight  # Linear [d, h*dh]; GPT-2's Conv1D [h*dh, d]
    frame = res.to_frame(per_position=True)
    err = res.gap
    for hd in range(model.cfg.n_heads):
        cols = slice(hd * o.d_head, (hd + 1) * o.d_head)
        contrib = cap["z"][sel][:, cols] @ (w_o[cols] if name == "gpt2" else w_o[:, cols].T)
        want = (o.linear(contrib) / o.scale(h)) @ u
        got = torch.tensor(frame[frame["component"] == f"attn {last} head {hd}"]["contribution"].values)
        err = max(err, (got - want).abs().max().item())
    done(record_property, err, backend)


# ---- patching -------------------------------------------------------------------------------------------


def _sources(o, batch, vectors, layer, model):
    """What the patches read at ``layer`` in one transformers run: attention and MLP additions, z, q, k, v."""
    cap = {}

    def grab(key):
        return lambda x: o.keep(cap, key, x.clone())

    s = o.sites
    edits = [(layer, s["attn_add"], "output", grab("attn")), (layer, s["mlp_add"], "output", grab("mlp")),
             (layer, s["o_in"], "input", grab("z"))]
    edits += [(layer, s[k][0], "output", lambda x, k=k: (o.keep(cap, k, o.pos_major(k, x).clone()), x)[1])
              for k in ("q", "k", "v") if s[k][0] != s["q"][0] or k == "q"]
    o.run(batch, vectors, edits)
    for k in ("k", "v"):
        cap.setdefault(k, cap["q"])  # one fused module (Phi-3, GPT-2)
    return cap


def hf_patched_logits(o, batch, vectors, layer, patch, base, steered):
    """The steered transformers model with ``patch`` applied at ``layer`` (activations from ``base``)."""
    s = o.sites
    n_heads = o.hf.config.num_attention_heads
    edits, live = [], {}

    def set_z(idx):
        def fn(x):
            x = x.clone()
            for i in idx:
                x[..., i * o.d_head:(i + 1) * o.d_head] = o.rows(base["z"])[..., i * o.d_head:(i + 1) * o.d_head]
            return x
        return fn

    for kind, idx in (("q", patch.q_heads), ("k", patch.k_groups), ("v", patch.v_groups)):
        if idx:
            edits.append((layer, s[kind][0], "output", o.set_heads(kind, idx, base[kind])))
    if patch.z_heads:
        edits.append((layer, s["o_in"], "input", set_z(patch.z_heads)))

    def attn_out(x):
        x = o.rows(base["attn"]) if patch.attn else x
        live["attn"] = x
        return x

    edits.append((layer, s["attn_add"], "output", attn_out))
    if patch.mlp:
        edits.append((layer, s["mlp_add"], "output", lambda x: o.rows(base["mlp"])))
    if patch.touches_attention and patch.path == "mlp":  # the residual keeps the steered attention output
        edits.append((layer, "", "output", lambda x: x + o.rows(steered["attn"]) - live["attn"]))
    if patch.touches_attention and patch.path == "resid":  # the MLP reads the steered attention output
        edits.append((layer, s["mid_in"], "input", lambda x: x - live["attn"] + o.rows(steered["attn"])))
    assert n_heads
    out, _ = o.run(batch, vectors, edits)
    return out


@pytest.mark.parametrize("name,backend", ALL)
def test_block_patching(name, backend, record_property):
    record_property("capability", "block_patching")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(7, 3.0)
    vecs = si.SteeringSet.from_tensors(model, {0: s})
    patches = A.standard_patches(model)
    res = A.block_patching(model, batch, vecs, patches, layer=1, positions="completion")
    base = _sources(o, batch, None, 1, model)
    steered = _sources(o, batch, {0: s}, 1, model)
    sel = batch.predicting_mask
    lb = torch.log_softmax(o.run(batch)[0][sel], -1)
    ls = torch.log_softmax(o.run(batch, {0: s})[0][sel], -1)
    err = 0.0
    for i, p in enumerate(patches):
        if p.base_run:
            lp = lb
        else:
            lp = torch.log_softmax(hf_patched_logits(o, batch, {0: s}, 1, p, base, steered)[sel], -1)
        err = max(err, abs(res.kl_to_base[i] - kl(lp, lb).mean().item()), abs(res.kl_from_steered[i] - kl(ls, lp).mean().item()),
                  abs(res.effect_lost[i] - (kl(ls, lp).mean() / kl(ls, lb).mean()).item()))
    assert res.kl_to_base[res.names.index("no_patch")] > 1e-3  # the vector does something
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_path_patching(name, backend, record_property):
    record_property("capability", "path_patch")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(8, 3.0)
    tid = int(model.tokenizer(TRACK, add_special_tokens=False)["input_ids"][0])
    metric = A.token_logprob_metric(tid, "completion")
    sel = batch.predicting_mask

    def value(logits):
        lp = torch.log_softmax(logits, -1)[..., tid]
        return ((lp * sel).sum(-1) / sel.sum(-1)).mean().item()

    # the vector's residual node to the logits with everything frozen: the base run with s before the final norm
    last = model.cfg.n_layers - 1
    res = A.path_patch(model, batch, [A.Node.resid(1)], [A.Node.logits()], metric,
                       new_steering=si.SteeringSet.from_tensors(model, {1: s}))
    err = abs(res.values[0].item() - value(o.run(batch, {last: s})[0]))
    err = max(err, abs(res.reference - value(o.run(batch)[0])), abs(res.new - value(o.run(batch, {1: s})[0])))
    # the vector to one query head / key group / value group of the next block: that tensor from the steered run
    steered = _sources(o, batch, {0: s}, 1, model)
    vecs0 = si.SteeringSet.from_tensors(model, {0: s})
    for node, kind, idx in ((A.Node.q(1, 1), "q", 1), (A.Node.k(1, 0), "k", 0), (A.Node.v(1, 0), "v", 0)):
        got = A.path_patch(model, batch, [A.Node.resid(0)], [node], metric, new_steering=vecs0).values[0].item()

        want = value(o.run(batch, None, [(1, o.sites[kind][0], "output", o.set_heads(kind, [idx], steered[kind]))])[0])
        err = max(err, abs(got - want))
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_attention_diff(name, backend, record_property):
    record_property("capability", "attention_diff")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    s = vector(9, 3.0)
    res = A.attention_diff(model, batch, si.SteeringSet.from_tensors(model, {0: s})).to_frame()
    (_, base), (_, steer) = o.run(batch, attentions=True), o.run(batch, {0: s}, attentions=True)
    b_idx, q_idx = batch.positions("completion").nonzero(as_tuple=True)
    err = 0.0
    for x in range(model.cfg.n_layers):
        pb, ps = base["attn"][x][b_idx, q_idx], steer["attn"][x][b_idx, q_idx]  # [n, heads, keys]
        tv = 0.5 * (ps - pb).abs().sum(-1).mean(0)
        got = torch.tensor(res[res["layer"] == x]["tv"].values)
        err = max(err, (got - tv).abs().max().item())
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", ALL)
def test_patched_generation(name, backend, record_property):
    """The patched decoding engine's logits against the transformers model patched the same way."""
    from steerinterp.analysis.patched_generation import PatchedEngine

    record_property("capability", "patched_accuracy" + (" (bridge)" if backend == "bridge" else ""))
    model, o = zoo_model(name, backend, record_property), oracle(name)
    s = vector(10, 3.0)
    vecs = si.SteeringSet.from_tensors(model, {0: s})
    patch = A.Patch("skip_head[1]->resid", z_heads=(1,), path="resid")
    if backend == "bridge":
        with pytest.raises(SteerInterpError, match="KV caches") as e:
            PatchedEngine(model, 1, patch)
        record_property("support", "refused")
        record_property("refusal", str(e.value))
        return
    from steerinterp.steering.positions import TokenContext

    batch = A.teacher_forcing_batch(model, ["hello there"], [" yes"])  # one row: the engine sees no padding
    engine = PatchedEngine(model, 1, patch)
    engine.start(1)
    toks, one = batch.tokens[:, :-1], torch.ones(1, 1, dtype=torch.long)
    mask = torch.ones_like(toks)
    ctx = TokenContext.from_masks(mask, mask.bool())
    ctx.valid = None
    with engine.steering(vecs, ctx):
        first = engine.forward(toks, mask, mask)
        ctx.is_prompt = torch.zeros((1, 1), dtype=torch.bool)
        ctx.index = torch.tensor([[toks.shape[1]]])
        nxt = engine.forward(batch.tokens[:, -1:], one, torch.ones_like(batch.tokens))
    base = _sources(o, batch, None, 1, model)
    steered = _sources(o, batch, {0: s}, 1, model)
    logits = hf_patched_logits(o, batch, {0: s}, 1, patch, base, steered)
    err = max((first[0] - logits[0, -2]).abs().max().item(), (nxt[0] - logits[0, -1]).abs().max().item())
    done(record_property, err, backend)


# ---- analyses that only run forwards and read hooks: a few architectures ---------------------------------


@pytest.mark.parametrize("name,backend", FEW)
def test_persistence(name, backend, record_property):
    record_property("capability", "persistence")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    vecs = {0: vector(11), 1: vector(12)}
    res = A.persistence(model, batch, vecs, positions="all")
    sel = batch.attention_mask.bool().clone()
    sel[torch.arange(2), batch.attention_mask.cumsum(-1).argmax(-1)] = False  # the last real token is dropped
    _, rb = o.run(batch)
    err = 0.0
    for i, (layer, v) in enumerate(vecs.items()):
        _, rs = o.run(batch, {layer: v})
        for j in range(layer, model.cfg.n_layers):
            delta = rs["out"][j] - rb["out"][j]
            norm = delta[sel].norm(dim=-1).mean()
            err = max(err, abs(res.delta_norm[i, j].item() - norm.item()) / norm.item())
            final = delta[sel].mean(0) if j == model.cfg.n_layers - 1 else None
            if final is not None:
                err = max(err, (res.final_shifts[layer] - final).abs().max().item())
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", FEW)
def test_adaptive_magnitudes(name, backend, record_property):
    from steerinterp.steering import AdaptiveSteering

    record_property("capability", "adaptive_magnitudes")
    model, o = zoo_model(name, backend, record_property), oracle(name)
    batch = batch_for(model)
    last = model.cfg.n_layers - 1  # at the last block, the adapter does not change its own input
    ad = AdaptiveSteering.init(model, [last], seed=0)
    with torch.no_grad():
        ad.b[last].copy_(vector(13))
    res = A.adaptive_magnitudes(model, batch, ad).to_frame()
    cap = {}
    down = "mlp.c_proj" if name == "gpt2" else "mlp.down_proj"
    o.run(batch, None, [(last, down, "input", lambda x: o.keep(cap, "u", x.clone()))])
    u = cap["u"][batch.attention_mask.bool()]
    want = ad.magnitude(last, u).detach()
    err = ((torch.tensor(res["magnitude"].values) - want).abs().max() / want.abs().max()).item()
    done(record_property, err, backend)


@pytest.mark.parametrize("name,backend", FEW)
def test_combine_and_residual_map(name, backend, record_property):
    record_property("capability", "composition.combine+transfer.fit_residual_map")
    model = zoo_model(name, backend, record_property)
    batch = batch_for(model)
    a = si.SteeringSet.from_tensors(model, {1: vector(14)})
    zero = A.combine(a, a, scales=[0, 0])
    res = A.token_shift(model, batch, zero).to_frame()
    fit = A.fit_residual_map(model, model, ["hello there, how are you", "a b c d e f"])
    assert min(fit.r2.values()) > 1 - 1e-4  # a model mapped onto itself (least squares on few tokens)
    err = float(res["kl"].abs().max())
    done(record_property, err, backend)
