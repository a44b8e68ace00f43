"""RunDir and the round trip a new user makes: ``train`` a run, then ``analyze`` and ``report`` it with no
other arguments, from another working directory, for every task form; the trainer takes what it trains."""

import json

import pytest
import torch

import steerinterp as si
from steerinterp.app.cli import main
from steerinterp.errors import SteerInterpError
from steerinterp.rl import PARAMETRISATIONS, TrainConfig, Trainer, register_parametrisation
from steerinterp.rl.parametrisations import VectorParametrisation
from steerinterp.run_dir import RunDir
from steerinterp.tasks import arithmetic_task, load_task  # noqa: F401

TINY = ["--model", "tiny", "--steps", "1", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "4"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    gsm = [{"question": f"Tom has {a} apples and gets {b} more. How many?", "answer": f"{a}+{b}\n#### {a + b}"}
           for a in range(1, 7) for b in range(1, 4)]
    _jsonl(d / "gsm_train.jsonl", gsm[:12])
    _jsonl(d / "gsm_test.jsonl", gsm[12:])
    _jsonl(d / "math.jsonl", [{"problem": f"Compute ${a} \\times {b}$.", "answer": str(a * b)}
                              for a in range(2, 6) for b in range(2, 6)])
    return d


@pytest.mark.parametrize("form", ["arithmetic:add1", "arithmetic:add1:shared", "gsm8k", "math"])
def test_train_then_analyze_and_report_from_elsewhere(tmp_path, data_files, monkeypatch, capsys, form):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)  # relative paths below are relative to `work`
    task = {"gsm8k": "gsm8k:../data/gsm_train.jsonl,../data/gsm_test.jsonl", "math": "math:../data/math.jsonl"}.get(form, form)
    assert main(["train", *TINY, "--task", task, "--seed", "3", "--out", "R"]) == 0
    record = RunDir(work / "R").record()
    assert record.kind == "train" and record.model.name == "tiny" and record.seed == 3
    assert record.library_version == si.__version__
    rebuilt = load_task(record.task, verifier=record.verifier, seed=record.seed)  # the exact string the CLI accepts
    assert rebuilt.name == record.task_name and [p.id for p in rebuilt.test] == [p.id for p in load_task(
        task, seed=3).test]

    monkeypatch.chdir(elsewhere)
    run = str(work / "R")
    assert main(["analyze", run, "--only", "logit_lens,first_token"]) == 0
    assert main(["report", run]) == 0
    capsys.readouterr()
    page = (work / "R" / "report.html").read_text()
    assert "Logit lens" in page and "tiny" in page and record.task in page


def test_analyze_with_no_arguments_at_all(tmp_path, monkeypatch):
    """Every analysis of the default list, on a tiny run, from the run's record alone."""
    assert main(["train", *TINY, "--task", "arithmetic:add1:shared", "--out", str(tmp_path / "R")]) == 0
    monkeypatch.chdir(tmp_path.parent)
    assert main(["analyze", str(tmp_path / "R"), "--quick"]) == 0
    index = RunDir(tmp_path / "R").analysis_index()
    from steerinterp.app.pipeline import ANALYSES

    assert list(index) == list(ANALYSES)


def test_train_refuses_to_overwrite_and_resume_never_starts_over(tmp_path, capsys):
    out = str(tmp_path / "R")
    assert main(["train", *TINY, "--out", out]) == 0
    assert main(["train", *TINY, "--out", out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", out, "--overwrite"]) == 0
    # resume takes the recorded settings: no flags but --out
    assert main(["train", "--out", out, "--resume", "--steps", "2"]) == 0
    assert len(RunDir(out).metrics()) == 2
    RunDir(out).checkpoint_dir.rename(tmp_path / "moved")
    assert main(["train", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and "[--overwrite]" in err


def test_library_errors_name_settings_and_the_cli_adds_flags(tiny, capsys):
    with pytest.raises(SteerInterpError) as e:
        TrainConfig(group_size=1).validate()
    assert e.value.setting == "group_size" and "--" not in str(e.value)
    assert main(["train", "--model", "tiny", "--group-size", "1", "--out", "x"]) == 2
    assert "[--group-size]" in capsys.readouterr().err


def test_every_config_field_is_a_flag_with_the_dataclass_default():
    import dataclasses

    from steerinterp.app.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--group-size", "4", "--betas", "0.8,0.9", "--full-params",
                              "a,b", "--layers", "3,7"])
    cfg = config_from_args(args, TrainConfig)
    assert cfg.group_size == 4 and cfg.betas == (0.8, 0.9) and cfg.full_params == ["a", "b"] and cfg.layers == "3,7"
    assert cfg.lr == TrainConfig().lr  # not given: the dataclass default
    sub = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "cfg_lr")
    assert str(TrainConfig().lr) in sub.help
    flags = {a.dest for a in parser._subparsers._group_actions[0].choices["train"]._actions}
    assert {f"cfg_{f.name}" for f in dataclasses.fields(TrainConfig)} <= flags


def test_trainer_trains_the_steering_it_is_given_and_returns_it(tiny, tmp_path):
    from test_trainer import FirstTokenTask, _good_set

    task = FirstTokenTask(_good_set(tiny))
    vecs = si.SteeringSet.zeros(tiny, [1, 2])
    cfg = TrainConfig(steps=3, group_size=8, prompts_per_step=8, max_new_tokens=2, lr=0.05, warmup_ratio=0)
    result = Trainer(tiny, task, cfg, tmp_path / "R", steering=vecs, progress=False).train()
    assert result.steering is vecs and result.trained is vecs
    assert all(v.vector.detach().abs().sum() > 0 for v in vecs)  # trained in place
    assert RunDir(tmp_path / "R").record().config["trained"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert torch.equal(si.SteeringSet.load(tmp_path / "R" / "final").tensors[1], vecs.tensors[1].detach())
    with pytest.raises(SteerInterpError, match="not trainable"):
        Trainer(tiny, task, cfg, steering=si.SteeringSet.from_tensors(tiny, {1: torch.zeros(64)}))
    with pytest.raises(SteerInterpError, match="AdaptiveSteering"):
        Trainer(tiny, task, TrainConfig(parametrisation="adaptive"), steering=vecs)


def test_parametrisations_come_from_the_registry(tiny):
    calls = []

    class Probe(VectorParametrisation):
        name = "probe"

        def default(self, model, config):
            calls.append("default")
            return super().default(model, config)

    register_parametrisation(Probe())
    try:
        cfg = TrainConfig(steps=1, group_size=2, prompts_per_step=2, max_new_tokens=3, parametrisation="probe")
        Trainer(tiny, arithmetic_task("add1"), cfg, progress=False).train()
        assert calls == ["default"]
    finally:
        PARAMETRISATIONS.pop("probe")
    with pytest.raises(SteerInterpError, match="parametrisation='lora'"):
        TrainConfig(parametrisation="lora").validate()


def test_run_dir_reads_runs_from_before_it(tmp_path):
    old = tmp_path / "old_train"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"task": "arithmetic:add2/shared", "seed": 4, "steps": 3}))
    rec = RunDir(old).record()
    assert rec.task == "arithmetic:add2:shared" and rec.seed == 4 and rec.model is None
    demo = tmp_path / "old_demo"
    demo.mkdir()
    (demo / "run.json").write_text(json.dumps({"model": "x", "task": "arithmetic:add1", "task_spec": "arithmetic:add1",
                                               "steps": 8}))
    assert RunDir(demo).record().model == si.ModelSpec() and RunDir(demo).record().task == "arithmetic:add1"
    (tmp_path / "file").write_text("")
    with pytest.raises(SteerInterpError, match="is a file"):
        RunDir(tmp_path / "file")


def test_torn_metrics_line_is_skipped_with_a_warning(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"step": 0}, {"step": 1}])
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 2, "acc')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [m["step"] for m in run.metrics()] == [0, 1]


def test_analysis_index_cannot_point_outside_the_run(tmp_path):
    run = RunDir(tmp_path / "R").make()
    run.analysis_dir.mkdir()
    (run.analysis_dir / "index.json").write_text(json.dumps(
        {"x": {"note": "", "seconds": 0, "tables": {"t": "../../secret.csv"}, "figures": []}}))
    with pytest.raises(SteerInterpError, match="outside"):
        run.analysis_table("../../secret.csv")


def test_run_tables_keep_a_carriage_return_inside_its_cell(tmp_path):
    """The evaluation and analysis tables a run directory writes read back as the rows written, even when a
    completion or token holds "\\r" (pandas alone writes it unquoted and a reader splits the row)."""
    import pandas as pd

    run = RunDir(tmp_path / "R")
    frame = pd.DataFrame({"completion": ["3 + 4 = 7\r", "8"], "correct": [True, False]})
    assert pd.read_csv(run.write_evaluation(frame)).equals(frame)
    run.write_analysis({"lens": {"note": "", "seconds": 0.0, "tables": {"top": frame}, "figures": []}})
    assert run.analysis_table(run.analysis_index()["lens"]["tables"]["top"]).equals(frame)


def test_model_spec_is_recorded_and_reloads(tiny):
    spec = si.model_spec(tiny)
    assert spec.name == "tiny" and spec.dtype == "float32" and not spec.processed
    again = si.load_model_from_spec(spec)
    assert torch.equal(again.W_U, tiny.W_U)


def test_eval_reads_the_run_and_keeps_every_variant(tmp_path, capsys):
    for name in ("a/R", "b/R", "base"):
        assert main(["train", *TINY, "--task", "arithmetic:add1:shared", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.csv"
    assert main(["eval", "--run", str(tmp_path / "a" / "R"), "--vectors", str(tmp_path / "b" / "R" / "final"),
                 str(tmp_path / "base" / "final"), "--limit", "2", "--samples", "1", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0  # model and task from a/R's record: no --model tiny needed
    import pandas as pd

    variants = list(pd.read_csv(out)["variant"].unique())
    assert variants == ["base", "R", "R#2", "base#2"]


def test_diff_sae_refuses_differences_that_are_all_zero(tiny):
    from steerinterp import sae as S

    vecs = si.SteeringSet.zeros(tiny, [1])
    gens = S.sample_labelled(tiny, arithmetic_task("add1"), vecs, problems=arithmetic_task("add1").train[:2],
                             samples_per_problem=1, max_new_tokens=3)
    d = S.collect_differences(tiny, gens, vecs, [2])["blocks.2.hook_resid_post"]
    with pytest.raises(SteerInterpError, match="every difference at blocks.2.hook_resid_post is zero"):
        S.train_diff_sae(d)


def test_run_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    import pandas as pd

    run = RunDir(tmp_path / "R")
    run.write_summary("old")
    run.write_record(si.run_dir.RunRecord(kind="train", model=None, task="arithmetic:add1", task_name="x"))
    run.write_analysis({"a": {"note": "old", "tables": {"t": pd.DataFrame({"x": [1]})}, "figures": []}})
    before = sorted(p.name for p in run.path.rglob("*"))

    def full_disk(fd):
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    for write in (lambda: run.write_summary("new"), lambda: run.write_metrics([{"step": 0}]),
                  lambda: run.write_report("<html>"), lambda: run.write_record(run.record())):
        with pytest.raises(OSError, match="no space"):
            write()
    monkeypatch.undo()

    class Broken:
        def to_json(self):
            raise RuntimeError("figure failed half-way")

    with pytest.raises(RuntimeError):
        run.write_analysis({"b": {"note": "new", "tables": {"t": pd.DataFrame({"x": [2]})}, "figures": [Broken()]}})
    assert run.summary() == "old\n" and run.record().task == "arithmetic:add1"
    assert list(run.analysis_index()) == ["a"] and sorted(p.name for p in run.path.rglob("*")) == before


def test_run_files_get_the_permissions_a_plain_write_gives(tmp_path):
    """Atomic writes go through mkstemp / mkdtemp, and safetensors writes, owner-only files; run files, checkpoints,
    SAEs and difference stores must get the mode a plain open() or mkdir() would give under the process's umask (a
    group-shared results folder stays readable)."""
    import os

    import pandas as pd

    from steerinterp import sae as S
    from steerinterp.rl.checkpoint import save_checkpoint
    from steerinterp.sae.collect import DiffActivations

    old = os.umask(0o027)
    try:
        run = RunDir(tmp_path / "R")
        run.write_summary("x")
        run.write_analysis({"a": {"note": "n", "tables": {"t": pd.DataFrame({"x": [1]})}, "figures": []}})
        save_checkpoint(run.checkpoint_dir, {"step": 1, "vector": torch.ones(3)})
        n = 64  # a DiffSAE and a difference store: safetensors' own writer makes owner-only files
        diffs = DiffActivations("blocks.0.hook_resid_post", torch.randn(n, 8, generator=torch.Generator().manual_seed(0)),
                                torch.arange(n) % 8, torch.arange(n), torch.zeros(n, dtype=torch.long),
                                torch.ones(n, dtype=torch.bool), torch.arange(8) % 2 == 0, problem=torch.arange(8))
        S.write_difference_store(run.path / "diffs", [{diffs.hook_name: diffs}], labels=diffs.labels.tolist())
        S.train_diff_sae(diffs, d_sae=8, k=2, batch_size=16, passes=1).save(run.path / "sae")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        (tmp_path / "plain_dir").mkdir()
        written = [p for p in run.path.rglob("*")]
        assert written and any(p.is_dir() for p in written) and any(p.is_file() for p in written)
        for p in written:
            want = (tmp_path / "plain_dir") if p.is_dir() else plain
            assert oct(p.stat().st_mode & 0o777) == oct(want.stat().st_mode & 0o777), p
    finally:
        os.umask(old)
