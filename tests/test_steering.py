import pytest
import torch

import steerinterp as si
from steerinterp.errors import SteeringFileError, SteerInterpError
from tests.conftest import tokens_of

TEXTS = ["hello world, this is a test", "short"]


def _logits(model, vecs, toks, mask=None):
    with torch.no_grad(), vecs.applied(model, attention_mask=mask):
        return model(toks, attention_mask=mask)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_four_block_output_placements_are_identical(tiny64, layer):
    model = tiny64
    toks, _ = tokens_of(model, TEXTS[:1])
    s = torch.randn(model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(layer))
    ref = _logits(model, si.SteeringSet([si.SteeringVector(s, f"blocks.{layer}.hook_resid_post")]), toks)
    mlp = _logits(model, si.SteeringSet([si.SteeringVector(s, f"blocks.{layer}.hook_mlp_out")]), toks)
    pre = _logits(model, si.SteeringSet([si.SteeringVector(s, f"blocks.{layer + 1}.hook_resid_pre")]), toks)
    b_out = model.blocks[layer].mlp.b_out
    old = b_out.data.clone()
    try:
        b_out.data = s.clone()
        with torch.no_grad():
            bias = model(toks)
    finally:
        b_out.data = old
    with torch.no_grad():
        base = model(toks)
    assert (ref - base).abs().max() > 1e-2  # the vector does something
    for other in (mlp, pre, bias):
        assert (ref - other).abs().max() < 1e-12


def test_zero_vector_leaves_logits_unchanged(tiny):
    toks, _ = tokens_of(tiny, TEXTS[:1])
    vecs = si.SteeringSet.zeros(tiny, "all")
    with torch.no_grad():
        assert torch.equal(_logits(tiny, vecs, toks), tiny(toks))


def test_scale_multiplies_the_vector(tiny64):
    toks, _ = tokens_of(tiny64, TEXTS[:1])
    s = torch.randn(64, dtype=torch.float64)
    a = _logits(tiny64, si.SteeringSet.from_tensors(tiny64, {1: s}).scaled(2.5), toks)
    b = _logits(tiny64, si.SteeringSet.from_tensors(tiny64, {1: 2.5 * s}), toks)
    assert (a - b).abs().max() < 1e-12


def test_hooks_are_removed_after_an_exception(tiny):
    vecs = si.SteeringSet.from_tensors(tiny, {0: torch.ones(64), 2: torch.ones(64)})
    with pytest.raises(RuntimeError, match="boom"):
        with vecs.applied(tiny):
            assert len(tiny.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 1
            raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny.hook_dict.values())


def test_attach_handle_survives_reset_hooks_and_removes(tiny):
    toks, _ = tokens_of(tiny, TEXTS[:1])
    vecs = si.SteeringSet.from_tensors(tiny, {1: torch.randn(64)})
    with torch.no_grad():
        base = tiny(toks)
        steered = _logits(tiny, vecs, toks)
        handle = vecs.attach(tiny)
        try:
            tiny.reset_hooks()  # the user's own reset does not silently drop an attached vector
            assert torch.equal(tiny(toks), steered)
        finally:
            handle.remove()
        handle.remove()  # idempotent
        assert torch.equal(tiny(toks), base)
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny.hook_dict.values())


def test_nested_sets_add_up(tiny64):
    toks, _ = tokens_of(tiny64, TEXTS[:1])
    a, b = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    va, vb = si.SteeringSet.from_tensors(tiny64, {1: a}), si.SteeringSet.from_tensors(tiny64, {1: b})
    with torch.no_grad(), va.applied(tiny64), vb.applied(tiny64):
        both = tiny64(toks)
    summed = _logits(tiny64, si.SteeringSet.from_tensors(tiny64, {1: a + b}), toks)
    assert (both - summed).abs().max() < 1e-12


def _manual(model, toks, layer, s, sel):
    """Oracle: add s by hand at the positions where sel is True."""

    def hook(act, hook):
        return act + sel[..., None].to(act.dtype) * s

    with torch.no_grad():
        return model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)])


def test_position_slice_and_mask_match_a_hand_written_hook(tiny64):
    toks, _ = tokens_of(tiny64, TEXTS[:1])
    s = torch.randn(64, dtype=torch.float64)
    n = toks.shape[1]
    sel = torch.zeros(1, n, dtype=torch.bool)
    sel[0, 2:5] = True
    got = _logits(tiny64, si.SteeringSet.from_tensors(tiny64, {1: s}, positions=slice(2, 5)), toks)
    assert (got - _manual(tiny64, toks, 1, s, sel)).abs().max() < 1e-12
    mask = torch.tensor([True, False, True])
    sel = torch.zeros(1, n, dtype=torch.bool)
    sel[0, :3] = mask
    got = _logits(tiny64, si.SteeringSet.from_tensors(tiny64, {1: s}, positions=mask), toks)
    assert (got - _manual(tiny64, toks, 1, s, sel)).abs().max() < 1e-12


def test_slices_count_real_tokens_under_left_padding(tiny64):
    toks, mask = tokens_of(tiny64, TEXTS)  # second row is left-padded
    s = torch.randn(64, dtype=torch.float64)
    vecs = si.SteeringSet.from_tensors(tiny64, {1: s}, positions=slice(0, 3))
    batched = _logits(tiny64, vecs, toks, mask)
    single, _ = tokens_of(tiny64, TEXTS[1:])
    alone = _logits(tiny64, vecs, single)
    assert (batched[1, -single.shape[1] :] - alone[0]).abs().max() < 1e-9


def test_prompt_positions_need_a_prompt_mask(tiny):
    toks, _ = tokens_of(tiny, TEXTS[:1])
    vecs = si.SteeringSet.from_tensors(tiny, {1: torch.randn(64)}, positions="prompt")
    with pytest.raises(SteerInterpError, match="where the prompt ends"), torch.no_grad(), vecs.applied(tiny):
        tiny(toks)
    pm = torch.zeros_like(toks, dtype=torch.bool)
    pm[:, :4] = True
    with torch.no_grad():
        a = _logits(tiny, si.SteeringSet.from_tensors(tiny, {1: vecs[1].vector}, positions=slice(0, 4)), toks)
        with vecs.applied(tiny, prompt_mask=pm):
            b = tiny(toks)
    assert torch.equal(a, b)


def test_constructors_and_views(tiny):
    vecs = si.SteeringSet.zeros(tiny, layers=[3, 1])
    assert vecs.layers == [1, 3] and vecs.hook_names == ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    assert all(p.requires_grad for p in vecs.parameters()) and len(vecs.parameters()) == 2
    assert set(vecs.tensors) == {1, 3}
    fixed = si.SteeringSet.from_tensors(tiny, {2: torch.ones(64)})
    assert fixed.parameters() == [] and fixed[2].vector.sum() == 64
    assert len(si.SteeringSet.zeros(tiny, "all")) == tiny.cfg.n_layers


@pytest.mark.parametrize(
    "layers, msg",
    [(9, "out of range"), ([-1], "out of range"), ("3,x", "comma-separated"), ([], "no layers")],
)
def test_bad_layers(tiny, layers, msg):
    with pytest.raises(SteerInterpError, match=msg):
        si.SteeringSet.zeros(tiny, layers)


def test_bad_vectors_are_refused(tiny):
    with pytest.raises(SteerInterpError, match="NaN or inf"):
        si.SteeringSet.from_tensors(tiny, {1: torch.full((64,), float("nan"))})
    with pytest.raises(SteerInterpError, match="d_model"):
        si.SteeringSet.from_tensors(tiny, {1: torch.ones(65)})
    with pytest.raises(SteerInterpError, match="no hook point"):
        si.SteeringSet([si.SteeringVector(torch.ones(64), "blocks.1.hook_nonsense")]).validate(tiny)
    with pytest.raises(SteerInterpError, match="same hook"):
        si.SteeringSet([si.SteeringVector(torch.ones(64), "blocks.1.hook_resid_post")] * 2)
    with pytest.raises(SteerInterpError, match="width"), torch.no_grad():
        v = si.SteeringSet([si.SteeringVector(torch.ones(64), "blocks.1.hook_mlp_out")])
        v.vectors[0].hook_name = "blocks.1.mlp.hook_pre"  # 128 wide
        with v.applied(tiny):
            tiny(torch.tensor([[1, 2, 3]]))


def test_save_load_roundtrip(tiny, tmp_path):
    vecs = si.SteeringSet.from_tensors(tiny, {0: torch.randn(64), 3: torch.randn(64)}, scale=0.5)
    vecs = si.SteeringSet(vecs.vectors[:1] + [si.SteeringVector(vecs[3].vector, vecs[3].hook_name, 2.0,
                                                                  si.Positions.from_mask(torch.tensor([1, 0, 1]).bool()))])
    path = vecs.save(tmp_path / "run", model=tiny, info={"note": "test"})
    assert path.name == "vectors.safetensors" and (tmp_path / "run" / "metadata.json").is_file()
    loaded = si.SteeringSet.load(tmp_path / "run", model=tiny)
    assert loaded.layers == [0, 3] and loaded.info["note"] == "test"
    assert [v.scale for v in loaded] == [0.5, 2.0]
    assert loaded[3].positions.kind == "mask" and loaded[3].positions.mask.tolist() == [True, False, True]
    for a, b in zip(vecs, loaded):
        assert torch.equal(a.vector, b.vector)
    from steerinterp.steering.io import read_metadata

    meta = read_metadata(tmp_path / "run")
    assert meta["model"]["d_model"] == 64 and meta["model"]["n_layers"] == 4 and meta["library_version"]
    trainable = si.SteeringSet.load(path, model=tiny, trainable=True)
    assert len(trainable.parameters()) == 2
    single = vecs.save(tmp_path / "one.safetensors")
    assert single.name == "one.safetensors" and si.SteeringSet.load(single).layers == [0, 3]


def test_load_into_the_wrong_model_is_a_clear_error(tiny, tmp_path):
    vecs = si.SteeringSet.from_tensors(tiny, {3: torch.randn(64)})
    vecs.save(tmp_path / "v")
    wide = si.load_model("tiny", device="cpu", tiny=si.TinyConfig(d_model=32, n_heads=2, n_kv_heads=1))
    with pytest.raises(SteeringFileError, match="d_model 64 but the model has 32"):
        si.SteeringSet.load(tmp_path / "v", model=wide)
    shallow = si.load_model("tiny", device="cpu", tiny=si.TinyConfig(n_layers=2))
    with pytest.raises(SteeringFileError, match="no hook 'blocks.3.hook_resid_post'"):
        si.SteeringSet.load(tmp_path / "v", model=shallow)


def test_damaged_files_are_refused(tiny, tmp_path):
    path = si.SteeringSet.from_tensors(tiny, {1: torch.randn(64)}).save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(SteeringFileError, match="damaged or truncated"):
        si.SteeringSet.load(tmp_path / "trunc.safetensors")
    altered = bytearray(data)
    altered[-3] ^= 0xFF  # flip bits inside the tensor data
    (tmp_path / "alt.safetensors").write_bytes(bytes(altered))
    with pytest.raises(SteeringFileError, match="altered"):
        si.SteeringSet.load(tmp_path / "alt.safetensors")
    with pytest.raises(SteeringFileError, match="no steering file"):
        si.SteeringSet.load(tmp_path / "missing")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(SteeringFileError, match="not written by SteeringSet.save"):
        si.SteeringSet.load(tmp_path / "foreign.safetensors")


def test_nan_vectors_are_not_saved(tiny, tmp_path):
    vecs = si.SteeringSet.zeros(tiny, [1])
    with torch.no_grad():
        vecs[1].vector[0] = float("inf")
    with pytest.raises(SteerInterpError, match="NaN or inf"):
        vecs.save(tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_protocol_is_satisfied(tiny):
    assert isinstance(tiny, si.HookedModel)


# ---- the vector file's header: covered by the digest, checked field by field -------------------------------

def _saved(tiny, tmp_path, name="v.safetensors"):
    vecs = si.SteeringSet.from_tensors(tiny, {1: torch.randn(64)}, scale=0.5)
    return vecs.save(tmp_path / name, model=tiny, info={"task": "arithmetic:add1"})


def _rewrite(path, edit=None, *, fmt=2, tensors_edit=None, out=None):
    """Re-write a saved file with its header (and tensors) edited; ``fmt`` picks the digest it carries."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save

    from steerinterp.steering import io

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["steerinterp"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_edit is not None:
        tensors_edit(tensors)
    if fmt == 1:
        meta["format"] = io.FORMAT_V1
    if edit is not None:
        edit(meta)
    if fmt == 1:
        meta["sha256"] = io.tensor_digest(tensors)
    elif fmt == 2:
        meta["sha256"] = io.file_digest(tensors, meta)  # a forged digest: the header checks still apply
    out = out or path.with_name(f"edited-{path.name}")
    out.write_bytes(save(tensors, metadata={"steerinterp": json.dumps(meta)}))
    return out


def _one_line_error(path, match):
    with pytest.raises(SteeringFileError, match=match) as err:
        si.SteeringSet.load(path)
    assert "\n" not in str(err.value) and path.name in str(err.value)
    return err.value


@pytest.mark.parametrize("old, new", [
    (b"blocks.1.hook_resid_post", b"blocks.2.hook_resid_post"),  # the hook moved to another layer
    (b'"scale\\": 0.5', b'"scale\\": 9e9'),  # a huge scale
    (b'"scale\\": 0.5', b'"scale\\": NaN'),  # a NaN scale (eval would report 0% without a word)
    (b"arithmetic:add1", b"arithmetic:add2"),  # the info
    (b"tiny-llama-s0", b"tiny-llama-s1"),  # the model record
])
def test_header_edits_are_refused_as_altered(tiny, tmp_path, old, new):
    path = _saved(tiny, tmp_path)
    data = path.read_bytes()
    assert data.count(old) >= 1, old
    (tmp_path / "edited.safetensors").write_bytes(data.replace(old, new))
    _one_line_error(tmp_path / "edited.safetensors", "altered after saving")


def test_format_2_is_written_and_format_1_files_still_load(tiny, tmp_path):
    from steerinterp.steering import io

    path = _saved(tiny, tmp_path)
    assert io.read_metadata(path)["format"] == "steerinterp.steering/2"
    old = _rewrite(path, fmt=1, out=tmp_path / "old.safetensors")
    assert io.read_metadata(old)["format"] == "steerinterp.steering/1"
    a, b = si.SteeringSet.load(path, model=tiny), si.SteeringSet.load(old, model=tiny)
    assert torch.equal(a[1].vector, b[1].vector) and a[1].scale == b[1].scale == 0.5 and b.info == a.info
    # format 1 covers the tensors only: altered tensor bytes are still refused
    flipped = _rewrite(path, fmt=1, out=tmp_path / "flip.safetensors")
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    _one_line_error(flipped, "altered after saving")


def test_shipped_format_1_files_load():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*/results/**/vectors.safetensors"))
    if not shipped:
        pytest.skip("no example results in this checkout")
    for f in shipped:
        vecs = si.SteeringSet.load(f)
        assert len(vecs) >= 1 and all(v.vector.shape == (576,) for v in vecs)


def _set(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def _entry(key, value):
    def edit(meta):
        meta["vectors"][0][key] = value
    return edit


def _drop(key, entry=False):
    def edit(meta):
        del (meta["vectors"][0] if entry else meta)[key]
    return edit


MALFORMED = [
    (_drop("vectors"), "header field 'vectors' is missing"),
    (_drop("info"), "header field 'info' is missing"),
    (_drop("model"), "header field 'model' is missing"),
    (_set("vectors", {"hook_name": "blocks.1.hook_resid_post"}), "'vectors' is an object, not a list"),
    (_set("info", [1, 2]), "'info' is a list, not an object"),
    (_set("model", "tiny"), "'model' is a string, not an object"),
    (_set("created", 20260101), "'created' is a number, not a string"),
    (lambda m: m["model"].update(n_layers="four"), "n_layers='four'"),
    (lambda m: m["model"].update(spec=["tiny"]), "spec is a list"),
    (lambda m: m["vectors"].__setitem__(0, "blocks.1.hook_resid_post"), "vector 0 is a string, not an object"),
    (_drop("hook_name", entry=True), "vector 0 has no 'hook_name'"),
    (_drop("scale", entry=True), "vector 0 has no 'scale'"),
    (_entry("hook_name", 3), "hook_name 3; it must be a non-empty string"),
    (_entry("hook_name", ""), "hook_name ''"),
    (_entry("scale", "big"), "scale 'big' \\(a string\\); it must be a number"),
    (_entry("scale", None), "scale None \\(null\\)"),
    (_entry("scale", True), "scale True \\(a boolean\\)"),
    (_entry("scale", float("nan")), "scale nan; scales must be finite"),
    (_entry("scale", float("inf")), "scale inf; scales must be finite"),
    (_entry("scale", float("-inf")), "scale -inf; scales must be finite"),
    (_entry("trainable", "yes"), "trainable 'yes'"),
    (_entry("positions", "all"), "positions 'all'; it must be an object"),
    (_entry("positions", {"kind": "sometimes"}), "positions kind 'sometimes'; known kinds are"),
    (_entry("positions", {"kind": "slice", "start": -1, "stop": None}), "positions start=-1"),
    (_entry("positions", {"kind": "slice", "start": 0, "stop": 2.5}), "positions stop=2.5"),
    (_entry("positions", {"kind": "mask"}), "tensor 'positions_mask.0' is missing"),
    (lambda m: m["vectors"].append(dict(m["vectors"][0])), "lists 2 vectors but tensor 'vector.1' is missing"),
]


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("edit, match", MALFORMED)
def test_malformed_headers_are_one_line_file_errors(tiny, tmp_path, fmt, edit, match):
    path = _rewrite(_saved(tiny, tmp_path), edit, fmt=fmt)
    _one_line_error(path, match)


@pytest.mark.parametrize("fmt", [1, 2])
def test_malformed_tensors_and_counts_are_file_errors(tiny, tmp_path, fmt):
    path = _saved(tiny, tmp_path)

    def extra(t):
        t["vector.1"] = torch.ones(64)
    _one_line_error(_rewrite(path, tensors_edit=extra, fmt=fmt), "tensor 'vector.1' belongs to no vector entry")

    def matrix(t):
        t["vector.0"] = torch.ones(2, 64)
    _one_line_error(_rewrite(path, tensors_edit=matrix, fmt=fmt), "1-D float vector")

    def nan(t):
        t["vector.0"][3] = float("nan")
    _one_line_error(_rewrite(path, tensors_edit=nan, fmt=fmt), "NaN or inf")

    masked = si.SteeringSet([si.SteeringVector(torch.ones(64), "blocks.1.hook_resid_post",
                                               positions=torch.tensor([True, False]))]).save(tmp_path / "m.safetensors")

    def twos(t):
        t["positions_mask.0"] = torch.tensor([2, 0], dtype=torch.uint8)
    _one_line_error(_rewrite(masked, tensors_edit=twos, fmt=fmt), "values other than 0 and 1")

    def floats(t):
        t["positions_mask.0"] = torch.tensor([1.0, 0.0])
    _one_line_error(_rewrite(masked, tensors_edit=floats, fmt=fmt), "a position mask is a non-empty 0/1")
    _one_line_error(_rewrite(masked, _entry("positions", {"kind": "all"}), fmt=fmt),
                    "'positions_mask.0' belongs to no vector entry")


@pytest.mark.parametrize("fmt", [1, 2])
def test_headers_the_classes_refuse_are_file_errors(tiny, tmp_path, fmt):
    path = si.SteeringSet.from_tensors(tiny, {1: torch.ones(64), 2: torch.ones(64)}).save(tmp_path / "two.safetensors")
    dup = _rewrite(path, lambda m: m["vectors"][1].update(hook_name="blocks.1.hook_resid_post"), fmt=fmt)
    _one_line_error(dup, "two vectors at the same hook 'blocks.1.hook_resid_post'.*re-save the vectors")


def test_unreadable_headers_are_one_line_file_errors(tmp_path):
    from safetensors.torch import save

    for text, match in [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list, not an object"),
                        ('{"format": "steerinterp.steering/9"}', "has format 'steerinterp.steering/9'"),
                        ('{"format": "steerinterp.steering/2"}', "'sha256' is missing")]:
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(save({"vector.0": torch.ones(64)}, metadata={"steerinterp": text}))
        _one_line_error(bad, match)


def test_non_finite_scales_are_refused(tiny):
    v = torch.ones(64)
    for scale in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SteerInterpError, match="must be a finite number"):
            si.SteeringVector(v, "blocks.1.hook_resid_post", scale)
    for scale in ("2", None, True, torch.tensor(2.0)):
        with pytest.raises(SteerInterpError, match="pass a float"):
            si.SteeringVector(v, "blocks.1.hook_resid_post", scale)
    vecs = si.SteeringSet.from_tensors(tiny, {1: v}, scale=2)
    assert vecs[1].scale == 2.0 and isinstance(vecs[1].scale, float)
    with pytest.raises(SteerInterpError, match="factor"):
        vecs.scaled(float("nan"))
    with pytest.raises(SteerInterpError, match="finite"):
        vecs.scaled(1e308).scaled(1e308)  # overflows to inf
    with pytest.raises(SteerInterpError, match="finite"):
        si.SteeringSet.from_tensors(tiny, {1: v}, scale=float("nan"))


def test_loading_into_another_model_warns_naming_both(tiny, tmp_path):
    import warnings

    path = _saved(tiny, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model it was saved for: no warning
        si.SteeringSet.load(path, model=tiny)
        si.SteeringSet.load(path)
    other = si.load_model("tiny", device="cpu", tiny=si.TinyConfig(seed=1))
    with pytest.warns(UserWarning, match="saved for another model") as rec:
        si.SteeringSet.load(path, model=other)
    msg = str(rec[0].message)
    assert "tiny-llama-s0" in msg and "tiny-llama-s1" in msg and "\n" not in msg
    deeper = si.load_model("tiny", device="cpu", tiny=si.TinyConfig(n_layers=6))
    with pytest.warns(UserWarning, match="recorded 4 layers, this model has 6"):
        si.SteeringSet.load(path, model=deeper)
    # a file that recorded only the width (saved without a model) has nothing to compare
    bare = si.SteeringSet.from_tensors(tiny, {1: torch.ones(64)}).save(tmp_path / "bare.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        si.SteeringSet.load(bare, model=other)
