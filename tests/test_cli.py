import json
import subprocess
import sys

import pytest

from steerinterp.app.cli import main


def _run(args):
    return subprocess.run([sys.executable, "-m", "steerinterp", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "tiny", "--layers", "9", "--out", "{tmp}/a"], "layer 9 is out of range"),
        (["train", "--model", "tiny", "--task", "gsm8k:/no/such.jsonl", "--out", "{tmp}/b"], "does not exist"),
        (["train", "--model", "tiny", "--task", "sudoku", "--out", "{tmp}/c"], "unknown task"),
        (["train", "--model", "tiny", "--group-size", "1", "--out", "{tmp}/d"], "group_size"),
        (["train", "--model", "tiny", "--problem-sampling", "learnability", "--replay-fraction", "2", "--out", "{tmp}/e"],
         "replay_fraction must be in [0, 1], got 2.0"),
        (["train", "--model", "tiny", "--warmup-ratio", "1.5", "--out", "{tmp}/g"], "warmup_ratio must be in [0, 1), got 1.5"),
        (["train", "--model", "tiny", "--task", "arithmetic:add1:overlap", "--out", "{tmp}/f"], "unknown split 'overlap'"),
        (["generate", "hi", "--model", "tiny", "--vectors", "{tmp}/missing"], "no steering file"),
        (["eval", "--model", "tiny", "--finetuned", "{tmp}/nothing"], "no fine-tuned weights"),
        (["train", "--model", "tiny", "--temperature", "0", "--out", "{tmp}/h"], "temperature must be > 0"),
        (["train", "--model", "tiny", "--max-grad-norm", "0", "--out", "{tmp}/i"], "max_grad_norm must be > 0"),
        (["train", "--model", "tiny", "--max-grad-norm", "-1", "--out", "{tmp}/j"], "[--max-grad-norm]"),
        (["train", "--model", "tiny", "--threads", "-1", "--out", "{tmp}/k"], "--threads: must be >= 1"),
        (["train", "--model", "tiny", "--out", "{tmp}/a_file"], "is a file, not a run directory"),
        (["train", "--model", "tiny", "--group-size", "two", "--out", "{tmp}/l"], "invalid"),
        (["analyze", "{tmp}"], "holds no run record"),
        (["train", "--model", "tiny", "--dtype", "int8", "--out", "{tmp}/m"], "not a floating-point torch dtype"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    (tmp_path / "a_file").write_text("not a directory")
    proc = _run([a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerinterp: error:") and message in err[0], proc.stderr


def test_old_module_path_runs_as_a_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "steerinterp.cli", "report", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_train_eval_generate_on_the_tiny_model(tmp_path, capsys):
    assert main(["train", "--model", "tiny", "--steps", "2", "--group-size", "2", "--prompts-per-step", "2",
                 "--max-new-tokens", "3", "--layers", "1,3", "--warmup-ratio", "0", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final" / "vectors.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["warmup_ratio"] == 0
    assert main(["train", "--model", "tiny", "--steps", "3", "--group-size", "2", "--prompts-per-step", "2",
                 "--max-new-tokens", "3", "--layers", "1,3", "--warmup-ratio", "0", "--out", str(tmp_path / "run"),
                 "--resume"]) == 0
    assert main(["eval", "--model", "tiny", "--vectors", str(tmp_path / "run" / "final"), "--samples", "1",
                 "--limit", "3", "--max-new-tokens", "3", "--out", str(tmp_path / "eval.csv")]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "run" in out and (tmp_path / "eval.csv").is_file()
    assert main(["generate", "hello", "--model", "tiny", "--max-new-tokens", "3",
                 "--vectors", str(tmp_path / "run" / "final")]) == 0


def test_dtype_flag_is_recorded_and_kept_on_resume(tmp_path):
    common = ["--model", "tiny", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "3",
              "--layers", "1", "--out", str(tmp_path / "run")]
    assert main(["train", *common, "--steps", "1", "--dtype", "bf16"]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["model"]["dtype"] == "bfloat16" and record["dtype_reason"] == "asked for"
    assert main(["train", *common, "--steps", "2", "--resume"]) == 0  # no --dtype: the recorded one, not "auto"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["dtype"] == "bfloat16"
    assert main(["train", *common[:-1], str(tmp_path / "new"), "--steps", "1"]) == 0  # a new run: auto
    record = json.loads((tmp_path / "new" / "run.json").read_text())
    assert record["model"]["dtype"] == "float32" and record["dtype_reason"] == "STEERINTERP_DTYPE=float32"


def test_train_vectors_on_a_fine_tuned_model(tmp_path):
    common = ["--model", "tiny", "--steps", "1", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "3"]
    assert main(["train", *common, "--parametrisation", "full", "--full-params", "blocks.3.mlp", "--lr", "1e-2",
                 "--out", str(tmp_path / "ft")]) == 0
    assert main(["train", *common, "--finetuned", str(tmp_path / "ft" / "final"), "--layers", "2",
                 "--out", str(tmp_path / "vec")]) == 0
    assert (tmp_path / "vec" / "final" / "vectors.safetensors").is_file()


@pytest.mark.parametrize("command", ["demo", "analyze", "report", "generate", "train", "eval"])
def test_every_help_page_renders(command, capsys):
    """argparse formats help strings with %: a '%' in a setting's help once crashed `train --help`."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: steerinterp" in capsys.readouterr().out
