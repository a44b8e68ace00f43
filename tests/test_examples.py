"""Every example script imports and parses its flags on the current layout (their full runs take minutes on the
embedded model; tests/test_notebooks.py runs the notebooks end to end)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/*.py"))


def test_every_example_folder_has_a_script():
    assert len(SCRIPTS) >= 12


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_starts(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_adaptive_protocol_trains_resumably_and_reads_the_runs(tmp_path):
    """examples/adaptive_magnitudes: train.py (both arms, resumable) then seeds.py on the tiny model."""
    common = ["--model", "tiny", "--threads", "1", "--out", str(tmp_path)]
    train = [sys.executable, "examples/adaptive_magnitudes/train.py", *common, "--layers", "1,3", "--seeds", "0"]
    for steps in ("1", "2"):  # the second call resumes both runs for one more step
        proc = subprocess.run([*train, "--steps", steps], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for arm in ("adaptive", "adaptive_fixed_read"):
        lines = (tmp_path / "runs" / f"{arm}-seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2
    proc = subprocess.run([sys.executable, "examples/adaptive_magnitudes/seeds.py", *common], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pandas as pd

    runs = pd.read_csv(tmp_path / "seeds" / "runs.csv")
    assert set(runs.arm) == {"adaptive", "adaptive_fixed_read"} and set(runs.layer) == {1, 3}
    assert (runs[runs.arm == "adaptive_fixed_read"].cos_a_init > 1 - 1e-9).all()  # the control's a never moves
    assert (runs.steps == 2).all()
    heldout = pd.read_csv(tmp_path / "seeds" / "heldout.csv")
    assert set(heldout.arm) == {"base", "adaptive", "adaptive_fixed_read"}
    # add1's fixed split: 19 of its 40 held-out problems have their commuted twin among the training problems
    assert heldout[heldout.arm == "base"].twin_in_training.sum() == 19
    segments = pd.read_csv(tmp_path / "seeds" / "by_segment.csv")
    n_test = heldout[heldout.arm == "base"].problem.nunique()
    assert segments.groupby(["arm", "layer", "segment"]).problem.nunique().eq(n_test).all()  # a row per problem


def test_single_layer_protocol_feeds_the_sweep_and_all_pairs(tmp_path):
    """single_layer_sweep/train.py -> seeds.py (per-problem outcomes, format-only baselines) and
    composition/seeds.py (every pair of a seed's vectors) on the tiny model; a single layer's greedy answers must
    be the same in both files (same vectors, same greedy decoding)."""
    import pandas as pd

    import steerinterp as si
    from steerinterp.steering.io import read_metadata

    common = ["--model", "tiny", "--threads", "1"]
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    proc = run("examples/single_layer_sweep/train.py", *common, "--out", str(tmp_path / "sweep"), "--layers", "1,2,3",
               "--seeds", "0", "--steps", "2")  # step 1 is warm-up (lr 0): the vectors move at step 2
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("examples/single_layer_sweep/seeds.py", *common, "--out", str(tmp_path / "sweep"), "--samples", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    held = pd.read_csv(tmp_path / "sweep" / "seeds" / "heldout.csv")
    per_variant = held.groupby(["variant", "layer", "mode"]).problem.nunique()
    assert (per_variant == 40).all() and len(per_variant) == 3 * 2 + 3 * 2  # 3 baselines + 3 layers, greedy + sampled
    assert {"base, answer format forced", "base, 128 new tokens"} <= set(held.variant)
    assert held[(held.variant == "base") & (held["mode"] == "greedy")].twin_in_training.sum() == 19
    assert len(pd.read_csv(tmp_path / "sweep" / "seeds" / "runs.csv")) == 3  # the single layers only
    all_layers = si.SteeringSet.load(tmp_path / "sweep" / "runs" / "all-seed0" / "final", model=si.load_model("tiny"))
    assert len(all_layers) == si.load_model("tiny").cfg.n_layers  # the equal-budget all-layer arm beside them
    arm = pd.read_csv(tmp_path / "sweep" / "seeds" / "all_layers.csv")  # evaluated on the same problems
    assert set(arm.variant) == {"all layers"} and arm.groupby("mode").problem.nunique().eq(40).all()
    assert set(arm.steps) == {2} and arm.twin_in_training.sum() == held[held.variant == "base"].twin_in_training.sum()

    model = si.load_model("tiny")
    si.SteeringSet.from_tensors(model, {k: torch.full((model.cfg.d_model,), 0.01) for k in range(model.cfg.n_layers)}
                                ).save(tmp_path / "all", model=model)
    comp = ["examples/composition/seeds.py", *common, "--out", str(tmp_path / "comp"), "--layers", "1,2,3",
            "--runs", str(tmp_path / "sweep" / "runs")]
    proc = run(*comp, "--extra", f"fixed={tmp_path / 'all'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 variants reused, evaluating 9" in proc.stdout
    pairs = pd.read_csv(tmp_path / "comp" / "seeds" / "pairs_greedy.csv")
    assert set(pairs.variant) == {"base", "all", "fixed", "1+1", "1+2", "1+3", "2+2", "2+3", "3+3"}
    single = held[(held.variant == "single layer") & (held.layer == 2) & (held["mode"] == "greedy")]
    diagonal = pairs[pairs.variant == "2+2"]
    assert dict(zip(single.problem, single.correct)) == dict(zip(diagonal.problem, diagonal.correct))
    reference = pairs[pairs.variant == "all"]  # R's reference: the same seed's equal-budget all-layer run
    greedy_arm = arm[arm["mode"] == "greedy"]
    assert dict(zip(reference.problem, reference.correct)) == dict(zip(greedy_arm.problem, greedy_arm.correct))
    # a re-run reuses every variant whose vector files are unchanged, by digest, whatever its name
    proc = run(*comp, "--extra", f"renamed={tmp_path / 'all'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "9 variants reused, evaluating 0" in proc.stdout
    again = pd.read_csv(tmp_path / "comp" / "seeds" / "pairs_greedy.csv")
    assert set(again.variant) == set(pairs.variant) - {"fixed"} | {"renamed"}
    assert again[again.variant == "renamed"].correct.tolist() == pairs[pairs.variant == "fixed"].correct.tolist()
    proc = run(*comp, "--reference", str(tmp_path / "all"), "--extra")  # one reference for every seed
    assert proc.returncode == 0 and "8 variants reused, evaluating 0" in proc.stdout, proc.stderr[-2000:]
    info = json.loads((tmp_path / "comp" / "seeds" / "pairs_greedy.json").read_text())
    assert info["sources"]["0"]["all"] == [read_metadata(tmp_path / "all")["sha256"]] and not info["extra"]
    third = pd.read_csv(tmp_path / "comp" / "seeds" / "pairs_greedy.csv")
    assert third[third.variant == "all"].correct.tolist() == pairs[pairs.variant == "fixed"].correct.tolist()

    # two steps on the tiny model may see no reward signal (every sample wrong) and leave a vector at zero, whose
    # cosine with anything is 0: give such a run a non-zero vector so the identity below is tested
    g = torch.Generator().manual_seed(0)
    for final in sorted((tmp_path / "sweep" / "runs").glob("layer*-seed0/final")):
        vecs = si.SteeringSet.load(final, model=model)
        if all(float(v.vector.norm()) == 0 for v in vecs):
            si.SteeringSet.from_tensors(model, {v.layer: torch.randn(model.cfg.d_model, generator=g) for v in vecs}
                                        ).save(final, model=model)
    proc = run("examples/persistence/independent.py", *common, "--out", str(tmp_path / "pers"), "--layers", "1,2,3",
               "--runs", str(tmp_path / "sweep" / "runs"), "--problems", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = pd.read_csv(tmp_path / "pers" / "independent" / "persistence.csv")
    main = cells[cells.positions == "completion"]
    assert set(cells.positions) == {"completion", "prompt"}
    assert main.groupby("steered_layer").observed_layer.min().to_dict() == {1: 1, 2: 2, 3: 3}
    diagonal = main[main.steered_layer == main.observed_layer]
    assert (diagonal.diff_vector - 1).abs().max() < 1e-6  # delta = s_l at l, compared with s_l itself
    later = main[(main.observed_layer > main.steered_layer) & (main.observed_layer <= 3)]
    assert later.diff_vector.notna().all()  # compared with the other layers' own vectors
    per = pd.read_csv(tmp_path / "pers" / "independent" / "per_sample.csv")
    assert per.groupby(["steered_layer", "observed_layer"]).size().eq(4).all()


def test_multistep_protocol_trains_then_evaluates_finished_seeds(tmp_path):
    """examples/multistep: train.py (resumable all-layer runs on the multi-step task) then evaluate.py, which
    evaluates the base model and each finished seed once, each in its own file, and skips them on a re-run."""
    import pandas as pd

    common = ["--model", "tiny", "--threads", "1", "--out", str(tmp_path)]
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    proc = run("examples/multistep/train.py", *common, "--seeds", "0", "--steps", "2", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluate = ["examples/multistep/evaluate.py", *common, "--dtype", "float32", "--problems", "5", "--max-new-tokens", "6"]
    proc = run(*evaluate)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "base:" in proc.stdout and "all-seed0:" in proc.stdout
    rows = pd.read_csv(tmp_path / "heldout" / "all-seed0.csv")
    assert len(rows) == 5 * 3 and set(rows["mode"]) == {"greedy", "sampled"} and set(rows.train_seed) == {0}
    assert rows.problem.nunique() == 5 and rows.at_cap.dtype == bool and "first_word" in rows
    base = pd.read_csv(tmp_path / "heldout" / "base.csv")
    assert set(base.train_seed) == {-1} and list(base.problem[:5]) == list(rows.problem[:5])
    proc = run("examples/multistep/train.py", *common, "--seeds", "1", "--steps", "2", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(*evaluate)  # only the new seed is evaluated
    assert proc.returncode == 0 and "all-seed1:" in proc.stdout and "base:" not in proc.stdout, proc.stderr[-2000:]
    assert pd.read_csv(tmp_path / "heldout" / "base.csv").equals(base)
    info = json.loads((tmp_path / "heldout" / "info.json").read_text())
    assert info["problems"] == 5 and set(info["variants"]) == {"base", "all-seed0", "all-seed1"}
    assert info["variants"]["all-seed1"]["dtype"] == "float32" and info["variants"]["base"]["steering"] is None
    proc = run(*evaluate[:-1], "8")  # other settings would mix two protocols in one table: refused, one line
    assert proc.returncode != 0 and "max_new_tokens" in proc.stderr and "another --out" in proc.stderr


def test_first_token_substitution_runs_on_the_multistep_task(tmp_path):
    """examples/first_token_substitution with --task multistep:...: the papers' "To" and "Step" prefixes (not the
    arithmetic-only first operand), the task's completions, one results file per prefix."""
    import steerinterp as si

    model = si.load_model("embedded")  # the papers' prefixes need a real vocabulary ("To", "Step")
    last = model.cfg.n_layers - 1
    si.SteeringSet.from_tensors(model, {last: torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))}
                                ).save(tmp_path / "vec", model=model)
    proc = subprocess.run([sys.executable, "examples/first_token_substitution/run.py", "--threads", "1", "--out",
                           str(tmp_path / "out"), "--vectors", str(tmp_path / "vec"), "--task", "multistep:word_addsub",
                           "--problems", "2", "--heldout", "3", "--samples", "1", "--max-new-tokens", "4",
                           "--all-completions"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    controls = json.loads((tmp_path / "out" / "prefix_control.json").read_text())
    assert {"To", "Step"} <= set(controls) and "first operand" not in controls
    assert (tmp_path / "out" / "prefix_control_Step.csv").exists()


def test_first_token_substitution_without_the_prefix_control(tmp_path):
    """--no-prefix-control: the token shift of an all-layer set along sampled completions, and no held-out
    generation (the prefix control's files are not written)."""
    import pandas as pd

    import steerinterp as si

    model = si.load_model("tiny")
    g = torch.Generator().manual_seed(0)
    si.SteeringSet.from_tensors(model, {layer: torch.randn(model.cfg.d_model, generator=g)
                                        for layer in range(model.cfg.n_layers)}).save(tmp_path / "vec", model=model)
    proc = subprocess.run([sys.executable, "examples/first_token_substitution/run.py", "--model", "tiny", "--threads",
                           "1", "--out", str(tmp_path / "out"), "--vectors", str(tmp_path / "vec"), "--task",
                           "multistep:word_addsub", "--problems", "3", "--max-new-tokens", "5", "--all-completions",
                           "--no-prefix-control"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shift = pd.read_csv(tmp_path / "out" / "token_shift.csv")
    assert shift["pos"].min() == 0 and shift["pos"].max() == 4 and len(shift) == 3 * 5
    assert not list((tmp_path / "out").glob("prefix_control*"))


def test_penultimate_patching_runs_on_the_multistep_task(tmp_path):
    """examples/penultimate_patching with --task multistep:...: token-level patching and patched accuracy on that
    task's held-out problems (tiny model, a random penultimate vector)."""
    import pandas as pd

    import steerinterp as si

    model = si.load_model("tiny")
    pen = model.cfg.n_layers - 2
    si.SteeringSet.from_tensors(model, {pen: torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))}
                                ).save(tmp_path / "vec", model=model)
    proc = subprocess.run([sys.executable, "examples/penultimate_patching/run.py", "--model", "tiny", "--threads", "1",
                           "--out", str(tmp_path / "out"), "--vectors", str(tmp_path / "vec"), "--task",
                           "multistep:word_addsub", "--problems", "2", "--heldout", "3", "--max-new-tokens", "4",
                           "--stages", "tokens,accuracy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"first", "completion", "accuracy_greedy"} <= set(summary)
    table = pd.read_csv(tmp_path / "out" / "patched_accuracy.csv")
    assert {"no_patch", "base", "skip_layer"} <= set(table.variant)


def test_penultimate_patching_over_training_seeds(tmp_path):
    """examples/penultimate_patching/seeds.py on the tiny model: each seed's penultimate-layer run from the sweep is
    patched (effect_lost: exactly 0 for no patch and 1 for the base run), decoded per held-out problem under each
    patch, written per seed, and a re-run does nothing new."""
    import pandas as pd

    import steerinterp as si

    model = si.load_model("tiny")
    pen = model.cfg.n_layers - 2
    common = ["--model", "tiny", "--threads", "1"]
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    proc = run("examples/single_layer_sweep/train.py", *common, "--out", str(tmp_path / "sweep"), "--layers", str(pen),
               "--seeds", "0", "--steps", "2", "--no-all-layers")
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = tmp_path / "sweep" / "runs" / f"layer{pen}-seed0" / "final"
    g = torch.Generator().manual_seed(0)  # two steps may leave the vector at zero: give it a direction
    si.SteeringSet.from_tensors(model, {pen: 3 * torch.randn(model.cfg.d_model, generator=g)}).save(final, model=model)
    cmd = ["examples/penultimate_patching/seeds.py", *common, "--out", str(tmp_path / "pp"), "--runs",
           str(tmp_path / "sweep" / "runs"), "--problems", "3", "--heldout", "4", "--max-new-tokens", "4"]
    proc = run(*cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lost = pd.read_csv(tmp_path / "pp" / "seeds" / "effect_lost-seed0.csv").set_index(["positions", "patch"])
    for positions in ("first", "completion"):
        assert lost.loc[(positions, "no_patch"), "effect_lost"] == 0
        assert abs(lost.loc[(positions, "base"), "effect_lost"] - 1) < 1e-9
    acc = pd.read_csv(tmp_path / "pp" / "seeds" / "patched_accuracy-seed0.csv")
    assert {"no_patch", "base", "skip_attn", "skip_layer", "skip_head[0]", "skip_attn->mlp"} <= set(acc.patch)
    assert not any(acc.patch.str.startswith(("steer_head", "q[")))
    assert acc.groupby("patch").problem.nunique().eq(4).all() and set(acc["mode"]) == {"greedy"}
    proc = run(*cmd)
    assert proc.returncode == 0 and "seed 0:" not in proc.stdout, proc.stderr[-2000:]


def test_first_token_substitution_over_training_seeds(tmp_path):
    """examples/first_token_substitution/seeds.py on the embedded model with random last-layer vectors standing in
    for two seeds' sweep runs: the vector-free arms once, per seed a token-shift row per completion position and
    a held-out row per problem and sampling seed; a re-run adds nothing."""
    import pandas as pd

    import steerinterp as si

    model = si.load_model("embedded")  # "To" and the operands must be single tokens
    last = model.cfg.n_layers - 1
    g = torch.Generator().manual_seed(0)
    for seed in (0, 1):
        final = tmp_path / "runs" / f"layer{last}-seed{seed}" / "final"  # where a finished run keeps its vectors
        si.SteeringSet.from_tensors(model, {last: 20 * torch.randn(model.cfg.d_model, generator=g)}).save(final,
                                                                                                          model=model)
    cmd = [sys.executable, "examples/first_token_substitution/seeds.py", "--threads", "1", "--out", str(tmp_path / "ft"),
           "--runs", str(tmp_path / "runs"), "--problems", "3", "--heldout", "2", "--samples", "1",
           "--max-new-tokens", "3", "--all-completions"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "ft" / "seeds"
    base = pd.read_csv(out / "heldout-base.csv")
    assert set(base.variant) == {"base", "base + first operand", "base + To"} and set(base.train_seed) == {-1}
    assert base.groupby(["variant", "mode"]).problem.nunique().eq(2).all()
    for seed in (0, 1):
        held = pd.read_csv(out / f"heldout-seed{seed}.csv")
        assert set(held.variant) == {"steered"} and set(held.train_seed) == {seed} and len(held) == 2 * 2
        shift = pd.read_csv(out / f"token_shift-seed{seed}.csv")
        assert shift["pos"].min() == 0 and "dp[To]" in shift and (shift["kl"] >= 0).all()
    probs = pd.read_csv(out / "first_token_probs.csv")
    assert len(probs) == 4 and set(probs.token) == {"first operand", "To"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "seed " not in proc.stdout, proc.stderr[-2000:]
    assert len(pd.read_csv(out / "first_token_probs.csv")) == 4


def test_transfer_to_a_sibling_fine_tuned_on_another_level(tmp_path):
    """examples/transfer/sibling.py on the tiny model: the sibling's weights differ from the base model's, each
    model gets its own vectors, and every (seed, recipient, donor, decoding, problem) outcome is written."""
    import pandas as pd

    from steerinterp.models import load_finetuned, load_model

    argv = [sys.executable, "examples/transfer/sibling.py", "--model", "tiny", "--threads", "1", "--out", str(tmp_path),
            "--sibling-steps", "2", "--steps", "2", "--samples", "1"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "sibling"
    base, sibling = load_model("tiny"), load_finetuned(root / "finetune-arithmetic-sub2" / "final", base="tiny")
    changed = [n for n, p in sibling.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed  # fine-tuned on sub2: a different model
    info = json.loads((root / "info.json").read_text())
    assert info["sibling_parameters_changed"][0] == len(changed) and info["sibling_relative_weight_change"] > 0
    rows = pd.read_csv(root / "transfer.csv")
    cells = rows.groupby(["recipient", "donor", "mode"]).problem.nunique()
    assert len(cells) == 2 * 3 * 2 and (cells == 40).all()  # 2 recipients x (unsteered + 2 donors) x 2 decodings
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)  # a re-run resumes: no training
    assert proc.returncode == 0 and pd.read_csv(root / "transfer.csv").equals(rows)
    proc = subprocess.run([*argv, "--seeds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]  # another seed (another process may take it) adds its own rows
    both = pd.read_csv(root / "transfer.csv")
    assert sorted(both.train_seed.unique()) == [0, 1]
    assert both[both.train_seed == 0].reset_index(drop=True).equals(rows)


def test_diffsae_ablation_chooses_features_by_sign_and_runs(tmp_path):
    """examples/diffsae/ablate.py: features of correct generations have a positive frequency difference, those of
    incorrect ones a negative one, the control draws live features outside both; then the script end to end on
    the tiny model (run.py trains the SAE it loads)."""
    import runpy
    from types import SimpleNamespace

    import pandas as pd

    import steerinterp as si

    chosen_features = runpy.run_path(str(ROOT / "examples" / "diffsae" / "ablate.py"))["chosen_features"]
    diff = torch.tensor([0.3, -0.2, 0.0, 0.1, -0.5, 0.0, 0.0])
    fired = torch.tensor([0.5, 0.4, 0.0, 0.2, 0.6, 0.1, 0.3])
    freqs = SimpleNamespace(difference=diff, freq_correct=fired, freq_incorrect=torch.zeros(7),
                            top=lambda k, toward: (diff if toward == "correct" else -diff).argsort(descending=True)[:k].tolist())
    got = chosen_features(freqs, 3)
    assert got["correct"] == [0, 3] and got["incorrect"] == [4, 1]  # dead or zero-difference features never
    assert set(got["random live"]) == {5, 6}  # live, in neither list

    model = si.load_model("tiny")
    si.SteeringSet.from_tensors(model, {k: torch.full((model.cfg.d_model,), 0.05) for k in range(model.cfg.n_layers)}
                                ).save(tmp_path / "vectors", model=model)
    common = ["--model", "tiny", "--threads", "1", "--out", str(tmp_path), "--vectors", str(tmp_path / "vectors"),
              "--samples", "2"]
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    proc = run("examples/diffsae/run.py", *common, "--layers", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("examples/diffsae/ablate.py", *common, "--layer", "3", "--saes", str(tmp_path / "saes"), "--ks", "1,2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kl = pd.read_csv(tmp_path / "add1-layer3-ablation-kl.csv")
    assert (kl[kl.variant == "steered"].effect_lost == 0).all() and (kl.effect_lost >= 0).all()
    outcomes = pd.read_csv(tmp_path / "add1-layer3-ablation.csv")
    assert {"base", "steered", "top-1"} <= set(outcomes.variant)
    per_cell = outcomes.groupby(["kind", "variant", "mode"]).size()
    assert per_cell.xs("greedy", level="mode").eq(40).all() and per_cell.xs("sampled", level="mode").eq(80).all()


def test_example_task_options_take_the_tasks_own_token_budget():
    """add_task_arguments / example_task, shared by the analysis examples that run on any task: add1 keeps 32 new
    tokens, the multi-step level its recorded 256, and --max-new-tokens wins."""
    import argparse

    from steerinterp.app.examples import add_task_arguments, example_task

    ap = argparse.ArgumentParser()
    add_task_arguments(ap)
    task, tokens = example_task(ap.parse_args([]))
    assert task.name == "arithmetic:add1" and tokens == 32
    task, tokens = example_task(ap.parse_args(["--task", "multistep:word_addsub"]))
    assert task.name == "multistep:word_addsub" and tokens == 256
    assert example_task(ap.parse_args(["--task", "multistep:word_addsub", "--max-new-tokens", "128"]))[1] == 128


def test_a_library_error_ends_an_example_in_one_line(tmp_path):
    """A SteerInterpError that ends an example prints as ``PROG: error: MESSAGE`` with exit status 2, no traceback;
    STEERINTERP_TRACEBACK=1 brings the traceback back."""
    argv = [sys.executable, "examples/logit_lens/run.py", "--model", "tiny", "--threads", "1", "--out", str(tmp_path),
            "--vectors", str(tmp_path / "no-such-vectors")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py: error: ") and "no-such-vectors" in lines[0], proc.stderr
    env = {**os.environ, "STEERINTERP_TRACEBACK": "1"}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_rl_arithmetic_tags_a_bfloat16_run_and_keeps_its_held_out_rows(tmp_path):
    """examples/rl_arithmetic/run.py in bfloat16 on the tiny model: its files carry the dtype in their names (a
    float32 result of the same level is never overwritten) and every held-out completion is kept, per seed."""
    import pandas as pd

    proc = subprocess.run([sys.executable, "examples/rl_arithmetic/run.py", "--model", "tiny", "--threads", "1",
                           "--dtype", "bfloat16", "--steps", "1", "--seeds", "0", "--eval-samples", "1",
                           "--out", str(tmp_path), "--runs", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "add1-bfloat16-summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and not (tmp_path / "add1-summary.json").exists()
    raw = pd.read_csv(tmp_path / "add1-bfloat16-heldout.csv", dtype=str, keep_default_na=False)
    assert set(raw.training_seed) == {"", "0"} and set(raw.seed) == {"", "0"}  # written as integers, not 0.0
    rows = pd.read_csv(tmp_path / "add1-bfloat16-heldout.csv").fillna({"training_seed": -1})  # -1: the base model
    assert rows.groupby(["training_seed", "mode"]).size().to_dict() == {
        (-1, "greedy"): 40, (-1, "sampled"): 40, (0, "greedy"): 40, (0, "sampled"): 40}
    steered = rows[rows.training_seed == 0]
    assert steered[steered["mode"] == "greedy"].correct.mean() == summary["seeds"]["0"]["greedy_acc"]


def test_write_csv_keeps_a_carriage_return_inside_its_cell(tmp_path):
    """A completion holding "\\r" stays one cell of one row (pandas would write it unquoted: two rows on reading),
    and the file appears whole or not at all (no .part left behind)."""
    import csv

    import pandas as pd

    from steerinterp.app.examples import write_csv

    frame = pd.DataFrame({"completion": ["a\rb", "c\nd", "plain"], "correct": [True, False, True], "seed": [0, 1, 2]})
    write_csv(frame, tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv").equals(frame)
    with open(tmp_path / "t.csv", newline="") as fh:
        assert [r["completion"] for r in csv.DictReader(fh)] == ["a\rb", "c\nd", "plain"]
    plain = frame.assign(completion=["x", "y", "z"])
    write_csv(plain, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().startswith("completion,correct,seed\nx,")  # unquoted when safe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "t.csv"]
    by_token = pd.DataFrame({"n": [3, 4]}, index=pd.Index(["\r", "To"], name="token"))  # a "\r" in the index only
    write_csv(by_token, tmp_path / "i.csv", index=True)
    assert pd.read_csv(tmp_path / "i.csv", index_col="token").equals(by_token)


def test_logit_lens_language_test_over_training_seeds(tmp_path):
    """examples/logit_lens/seeds.py on the tiny model: one language table per finished all-layer run and lens, equal
    to the library's language_shares of that run's vectors (recomputed here); no finished run is a one-line error
    naming the script that trains them."""
    import pandas as pd

    import steerinterp as si
    from steerinterp import analysis as A

    model = si.load_model("tiny")
    g = torch.Generator().manual_seed(0)
    sets = {}
    for seed in (0, 3):
        sets[seed] = si.SteeringSet.from_tensors(
            model, {k: torch.randn(model.cfg.d_model, generator=g) for k in range(model.cfg.n_layers)})
        sets[seed].save(tmp_path / "runs" / f"all-seed{seed}" / "final", model=model)
    (tmp_path / "runs" / "all-seed5" / "final").mkdir(parents=True)  # unfinished: left out
    (tmp_path / "empty").mkdir()
    run = lambda *argv: subprocess.run([sys.executable, "examples/logit_lens/seeds.py", "--model", "tiny", "--threads",
                                        "1", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    proc = run("--out", str(tmp_path / "ll"), "--runs", str(tmp_path / "runs"), "--k", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "ll" / "seeds").glob("*.csv"))
    assert written == [f"language_{m}-seed{s}.csv" for m in ("norm", "raw") for s in (0, 3)]
    for seed, vecs in sets.items():
        for mode in ("raw", "norm"):
            got = pd.read_csv(tmp_path / "ll" / "seeds" / f"language_{mode}-seed{seed}.csv")
            want = A.language_shares(A.vector_logit_lens(model, vecs, mode=mode, k=5)).to_frame().drop(columns="scripts")
            assert set(got.train_seed) == {seed} and len(got) == 2 * model.cfg.n_layers
            pd.testing.assert_frame_equal(got.drop(columns="train_seed"), want.reset_index(drop=True),
                                          check_dtype=False)
    proc = run("--out", str(tmp_path / "ll2"), "--runs", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "single_layer_sweep/train.py" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
