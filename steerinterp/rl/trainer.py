"""RLOO training of steering vectors (or adaptive steering, or the model's own weights) on a Task.

One step (PAPER_NOTES section 3): draw prompts, sample G completions each at temperature 1 with the
current steering, score them with the task's verifier, compute group advantages (RLOO by default),
and take one AdamW step on the token-normalised REINFORCE loss, with gradient-norm clipping and a
linear warmup then constant learning rate. On-policy, no KL, no PPO clipping.

Exact resumption: sampling seeds are derived from (seed, step, prompt slot, sample), the data order
from (seed, epoch) and, with ``problem_sampling="learnability"``, from each problem's last group accuracy
(steerinterp.rl.problem_sampler), and checkpoints hold parameters, optimizer, scheduler, data position, RNG states
and metrics, written atomically. A run interrupted and resumed ends with the same parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steerinterp.errors import SteerInterpError
from steerinterp.generation.decode import generate, gradient_rows, teacher_forced_logprobs
from steerinterp.models.loading import dtype_choice
from steerinterp.rl.advantages import ADVANTAGES, compute_advantages
from steerinterp.rl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from steerinterp.rl.distributed import DistInfo, all_gather_list, all_reduce_sum, barrier, init_from_env
from steerinterp.rl.loss import reinforce_loss
from steerinterp.rl.parametrisations import PARAMETRISATIONS, get_parametrisation
from steerinterp.rl.problem_sampler import PROBLEM_SAMPLING, ProblemSampler
from steerinterp.run_dir import RunDir, RunRecord
from steerinterp.tasks.base import Task
from steerinterp.tasks.spec import task_digest
from steerinterp.tasks.validation import check_prompt_lengths
from steerinterp.types import model_device, model_fingerprint, model_spec


def _opt(default, help: str, **extra):
    """A config field with the help text (and choices) its command-line flag shows."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Hyper-parameters. Defaults: the embedded-model recipe that reproduces the papers' effect on CPU
    (the papers themselves: lr 1e-3 all-layer on 7B models, G=16, 128 prompts/step).

    Each field's ``metadata["help"]`` is its documentation; ``steerinterp train`` builds one flag per field
    from it (``--group-size`` for ``group_size``), so the defaults live here only."""

    steps: int = _opt(40, "RL steps (optimizer updates)")
    layers: str | list[int] = _opt("all", "layers that get a vector: all | 12 | 3,7")
    parametrisation: str = _opt("vector", "what is trained: vector (the papers'), adaptive (rank-1 token-wise), "
                                          "adaptive_fixed_read (its control: a frozen at init) or full (the model's "
                                          "weights)", choices=lambda: list(PARAMETRISATIONS))
    full_params: list[str] | None = _opt(None, "for parametrisation full: parameter-name parts to train "
                                                "(comma-separated; default all)")
    lr: float = _opt(3e-3, "AdamW learning rate")
    group_size: int = _opt(8, "samples per prompt (G); RLOO needs >= 2")
    prompts_per_step: int = _opt(8, "prompts per step")
    max_new_tokens: int = _opt(32, "tokens sampled per completion")
    temperature: float = _opt(1.0, "sampling temperature (> 0; the papers' 1)")
    top_p: float = _opt(1.0, "nucleus sampling threshold (1 = off)")
    advantage: str = _opt("rloo", "group advantage", choices=lambda: list(ADVANTAGES))
    warmup_ratio: float = _opt(0.03, "share of steps with linear learning-rate warmup (the papers' 3%; 0 = none)")
    max_grad_norm: float = _opt(2.0, "gradient-norm clip")
    weight_decay: float = _opt(0.0, "AdamW decoupled weight decay")
    betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas")
    seed: int = _opt(0, "seed of sampling, data order and initialisation")
    checkpoint_every: int = _opt(1, "write a checkpoint every N steps (with an output directory)")
    micro_batch: int = _opt(64, "sequences per forward/backward in the gradient pass, at most (fewer when their "
                                "activations would exceed the gradient memory budget; metrics: micro_batch_used)")
    engine: str = _opt("auto", "rollout engine: auto, hooked, hf or bridge", choices=lambda: ["auto", "hooked", "hf", "bridge"])
    problem_sampling: str = _opt("epochs", "epochs (the papers') or learnability (replay problems whose last group "
                                           "had mixed rewards)", choices=lambda: list(PROBLEM_SAMPLING))
    replay_fraction: float = _opt(0.5, "for learnability: the share of each step's prompts that is replayed")

    def validate(self) -> None:
        get_parametrisation(self.parametrisation)
        for name in ("steps", "group_size", "prompts_per_step", "max_new_tokens", "checkpoint_every", "micro_batch"):
            if getattr(self, name) < 1:
                raise SteerInterpError(f"{name} must be >= 1, got {getattr(self, name)}", setting=name)
        if self.group_size < 2:
            raise SteerInterpError("group_size must be >= 2: RLOO needs other samples of the same prompt",
                                   setting="group_size")
        if not self.lr > 0:
            raise SteerInterpError(f"lr must be > 0, got {self.lr}", setting="lr")
        if not 0 <= self.warmup_ratio < 1:
            raise SteerInterpError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}", setting="warmup_ratio")
        if not self.temperature > 0:
            raise SteerInterpError(f"temperature must be > 0 for RL (sampling and log-probs at the same temperature), "
                                   f"got {self.temperature}", setting="temperature")
        if not 0 < self.top_p <= 1:
            raise SteerInterpError(f"top_p must be in (0, 1], got {self.top_p}", setting="top_p")
        if not self.max_grad_norm > 0:
            raise SteerInterpError(f"max_grad_norm must be > 0 (the gradient-norm clip), got {self.max_grad_norm}",
                                   setting="max_grad_norm")
        if not self.weight_decay >= 0:
            raise SteerInterpError(f"weight_decay must be >= 0, got {self.weight_decay}", setting="weight_decay")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SteerInterpError(f"betas must be two numbers in [0, 1), got {self.betas}", setting="betas")
        ProblemSampler(1, self.seed, self.problem_sampling, self.replay_fraction)  # checks both settings

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


# fields that may differ between a run and its resumption
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "micro_batch", "engine"}


@dataclass
class TrainResult:
    """What training returns: the steering it trained (None for full fine-tuning), per-step metrics, and
    ``trained``, the object the parametrisation trained (the steering, or ``FullWeights``)."""

    steering: object | None  # SteeringSet / AdaptiveSteering (None for full fine-tuning)
    metrics: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    trained: object | None = None

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in m.items() if not isinstance(v, (list, dict))} for m in self.metrics])

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_frame()
        fig = make_subplots(rows=1, cols=3, subplot_titles=("training accuracy", "completion length", "seconds"))
        fig.add_trace(go.Scatter(x=df["step"], y=df["accuracy"], name="accuracy"), 1, 1)
        fig.add_trace(go.Scatter(x=df["step"], y=df["completion_len"], name="tokens"), 1, 2)
        fig.add_trace(go.Scatter(x=df["step"], y=df["seconds_sampling"], name="sampling"), 1, 3)
        fig.add_trace(go.Scatter(x=df["step"], y=df["seconds_gradient"], name="gradient"), 1, 3)
        fig.update_layout(height=320, showlegend=True)
        return fig

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def sample_seed(seed: int, step: int, slot: int, sample: int) -> int:
    """Seed of one sample: a function of its coordinates only (not of batching or process layout)."""
    x = (seed * 1_000_003 + step) * 1_000_033 + slot * 1_009 + sample
    return x % (2**63 - 1)


class Trainer:
    """Train a steering object (or the model's weights) on a task with RLOO.

    ``Trainer(model, task, TrainConfig(...), out_dir, steering=vecs).train()`` trains ``vecs`` in place and
    returns it in the result; without ``steering`` the config's parametrisation builds its default (zero
    vectors at ``config.layers`` for ``"vector"``). ``out_dir`` (a path or a ``RunDir``) gets the run's
    record, metrics, checkpoints and final result.
    """

    def __init__(self, model, task: Task, config: TrainConfig | None = None, out_dir=None, *, steering=None,
                 progress: bool = True, dist: DistInfo | None = None):
        self.model, self.task = model, task
        self.config = cfg = config or TrainConfig()
        self.config.validate()
        self.run = out_dir if isinstance(out_dir, RunDir) or out_dir is None else RunDir(out_dir)
        self.progress = progress
        self.dist = dist or init_from_env(model_device(model))
        if cfg.prompts_per_step % self.dist.world_size:
            raise SteerInterpError(
                f"prompts_per_step={cfg.prompts_per_step} must divide evenly over {self.dist.world_size} processes"
            )
        check_prompt_lengths(task, model, cfg.max_new_tokens)  # a row too long for the context fails now, not at step N
        self.parametrisation = get_parametrisation(cfg.parametrisation)
        self.trained = self.parametrisation.default(model, cfg) if steering is None else steering
        self.parametrisation.check(model, self.trained)
        self.steering = self.parametrisation.steering(self.trained)
        self.params = self.parametrisation.tensors(self.trained)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        warmup = math.ceil(cfg.steps * cfg.warmup_ratio)
        # transformers' constant_with_warmup: lr * min(1, step / warmup) (the papers' HF Trainer schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 1.0 if warmup == 0 or s >= warmup else s / warmup
        )
        self.step_index = 0
        self.sampler = ProblemSampler(len(task.train), cfg.seed, cfg.problem_sampling, cfg.replay_fraction)
        self.metrics: list[dict] = []

    @property
    def out_dir(self) -> Path | None:
        return self.run.path if self.run is not None else None

    # ---- one step ---------------------------------------------------------------------------------------
    def step(self) -> dict:
        cfg, model, d = self.config, self.model, self.dist
        indices, n_replayed = self.sampler.draw(cfg.prompts_per_step, self.step_index)
        problems = [self.task.train[i] for i in indices]
        per_rank = cfg.prompts_per_step // d.world_size
        first_slot = d.rank * per_rank
        mine = problems[first_slot : first_slot + per_rank]
        G = cfg.group_size
        prompts = [p for p in self.task.prompts(model, mine) for _ in range(G)]
        seeds = [sample_seed(cfg.seed, self.step_index, first_slot + i, g) for i in range(len(mine)) for g in range(G)]

        t0 = time.perf_counter()
        out = generate(model, prompts, steering=self.steering, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, seed=seeds, engine=cfg.engine)
        t_sample = time.perf_counter() - t0

        rows = [(mine[i // G], text) for i, text in enumerate(out.texts)]
        scored = [self.task.score(text, p) for p, text in rows]  # one verification per sample
        rewards = torch.tensor([r for r, _ in scored], dtype=torch.float32)
        correct = [c for _, c in scored]
        adv = compute_advantages(rewards.view(len(mine), G), cfg.advantage).view(-1)

        t1 = time.perf_counter()
        device = out.tokens.device
        n_tok_local = out.completion_mask.sum()
        n_tok = int(all_reduce_sum(n_tok_local.clone().to(torch.float64), d).item())
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        gap = torch.zeros(3, dtype=torch.float64)  # sum |sampler - trainer| log-prob, sum of differences, max
        # rows per forward/backward: the configured micro-batch, fewer when their activations would exceed the
        # gradient memory budget (long completions); the gradient is the same sum either way, up to rounding
        rows = gradient_rows(model, out.tokens.shape[1], int(out.completion_mask.sum(-1).max()), cfg.micro_batch,
                             group=G)
        for s in range(0, len(prompts), rows):
            sl = slice(s, s + rows)
            lp = teacher_forced_logprobs(model, out.tokens[sl], out.completion_mask[sl], self.steering,
                                         attention_mask=out.attention_mask[sl], prompt_mask=out.prompt_mask[sl],
                                         temperature=cfg.temperature, train_weights=self.parametrisation.trains_weights,
                                         prompt_length=out.prompt_length)
            loss = reinforce_loss(lp, out.completion_mask[sl], adv[sl].to(device), n_tokens=n_tok)
            loss.backward()
            diff = (out.logprobs[sl] - lp.detach().float())[out.completion_mask[sl]].double().cpu()
            if diff.numel():
                gap += torch.stack([diff.abs().sum(), diff.sum(), torch.zeros((), dtype=torch.float64)])
                gap[2] = max(gap[2], diff.abs().max())
            loss_total += float(loss.detach())
        params = list(self.params.values())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            all_reduce_sum(p.grad, d)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        t_grad = time.perf_counter() - t1

        # metrics over all processes
        all_rewards = all_gather_list(rewards.tolist(), d)
        all_correct = all_gather_list(correct, d)
        all_adv = torch.tensor(all_gather_list(adv.tolist(), d))
        lengths = all_gather_list(out.completion_lengths.tolist(), d)
        groups = torch.tensor(all_rewards).view(-1, G)
        self.sampler.record(indices, torch.tensor(all_correct, dtype=torch.float64).view(-1, G).mean(1).tolist())
        m = {
            "step": self.step_index,
            "reward_mean": float(torch.tensor(all_rewards).mean()),
            "accuracy": sum(all_correct) / len(all_correct),
            "groups_with_signal": float((groups.max(1).values != groups.min(1).values).float().mean()),
            "replayed": n_replayed,
            "adv_mean": float(all_adv.mean()),
            "adv_std": float(all_adv.std()) if len(all_adv) > 1 else 0.0,
            "adv_abs_mean": float(all_adv.abs().mean()),
            "loss": float(all_reduce_sum(torch.tensor(loss_total, dtype=torch.float64), d)),
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": n_tok,
            "micro_batch_used": rows,
            # the sampler's and the trainer's log-probs of the same tokens (different engines; in bfloat16 they
            # differ by rounding): mean |difference|, the KL(sampler || trainer) estimate mean(lp_s - lp_t), max
            "logprob_gap": float(all_reduce_sum(gap[0].clone(), d)) / max(n_tok, 1),
            "sampler_trainer_kl": float(all_reduce_sum(gap[1].clone(), d)) / max(n_tok, 1),
            "logprob_gap_max": float(gap[2]),
            "completion_len": sum(lengths) / len(lengths),
            "seconds_sampling": t_sample,
            "seconds_gradient": t_grad,
            "engine": out.engine,
            "example": out.texts[0][:200],
        }
        m.update(self.parametrisation.stats(self.trained))
        self.step_index += 1
        return m

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step_index,
            **self.sampler.state_dict(),  # epoch, position, last accuracy per problem
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "task": self.task.name,
            "metrics": list(self.metrics),
        }

    def load_state(self, state: dict) -> None:
        saved, now = state["config"], self.config.to_dict()
        defaults = TrainConfig().to_dict()  # settings added since a checkpoint was written had their defaults
        changed = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
        if changed:
            k = changed[0]
            raise SteerInterpError(f"cannot resume: {k} was {saved.get(k, defaults[k])!r} in the checkpoint, now {now[k]!r}",
                                   setting=k)
        if state["task"] != self.task.name:
            raise SteerInterpError(f"cannot resume: the checkpoint trained on {state['task']!r}, not {self.task.name!r}")
        if set(state["params"]) != set(self.params):
            raise SteerInterpError(f"cannot resume: the checkpoint trained {sorted(state['params'])[:3]}..., this trainer "
                                   f"trains {sorted(self.params)[:3]}...; give the same steering object")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k].to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step_index = state["step"]
        self.sampler.load_state_dict(state)
        self.metrics = list(state["metrics"])

    # ---- the loop ---------------------------------------------------------------------------------------
    def train(self, resume: bool = False, *, stop_after: int | None = None, overwrite: bool = False) -> TrainResult:
        """Run until ``config.steps`` (or ``stop_after`` more steps).

        With an output directory: ``resume=True`` continues from its checkpoint (and refuses a directory
        that holds a run but no checkpoint, rather than start over); without it, a directory that holds a
        run is refused unless ``overwrite=True``, which deletes that run first.
        """
        writing = self.run.writing() if self.run is not None and self.dist.is_main else contextlib.nullcontext()
        with writing:
            return self._train(resume, stop_after, overwrite)

    def is_finished(self) -> bool:
        """True when the output directory already holds this run trained to the end: the same config (up to the
        fields a resumption may change), all ``config.steps`` steps in its metrics and the final result written.
        Reads only (no write lock: other processes may be reading or training other runs); a run of another
        task, verifier or model is refused as ``train(resume=True)`` would."""
        run = self.run
        if run is None or not run.holds_run() or not any(run.final_dir.glob("*.safetensors")):
            return False
        record = run.record()
        self._check_same_run(record, task_digest(self.task), model_fingerprint(self.model))
        mine = json.loads(json.dumps(self.config.to_dict()))
        theirs = {k: v for k, v in (record.config or {}).items() if k != "trained"}
        same = all(theirs.get(k) == v for k, v in mine.items() if k not in _RESUMABLE_CHANGES)
        return same and theirs.get("steps") == self.config.steps and len(run.metrics()) == self.config.steps

    def _train(self, resume: bool, stop_after: int | None, overwrite: bool) -> TrainResult:
        cfg = self.config
        if self.run is not None and self.dist.is_main:
            self._open_run(resume, overwrite)
        barrier(self.dist)
        if self.run is not None and not self.dist.is_main and resume:
            state = load_checkpoint(self.run.checkpoint_dir)
            if state is not None:
                self.load_state(state)
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step_index + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step_index, desc="train", disable=not (self.progress and self.dist.is_main))
        while self.step_index < end:
            m = self.step()
            self.metrics.append(m)
            if self.run is not None and self.dist.is_main:
                self.run.append_metrics(m)
            bar.update(1)
            bar.set_postfix(acc=f"{m['accuracy']:.2f}", len=f"{m['completion_len']:.1f}",
                            s=f"{m['seconds_sampling']:.0f}+{m['seconds_gradient']:.0f}")
            if self.run is not None and (self.step_index % cfg.checkpoint_every == 0 or self.step_index == cfg.steps):
                if self.dist.is_main:
                    save_checkpoint(self.run.checkpoint_dir, self.state())
                barrier(self.dist)
        bar.close()
        if self.run is not None and self.step_index >= cfg.steps and self.dist.is_main:
            self._save_final()
        return TrainResult(self.steering, list(self.metrics), self.out_dir, trained=self.trained)

    def _open_run(self, resume: bool, overwrite: bool) -> None:
        run = self.run
        task_id, model_id = task_digest(self.task), model_fingerprint(self.model)
        if resume:
            if run.holds_run():
                self._check_same_run(run.record(), task_id, model_id)
            state = load_checkpoint(run.checkpoint_dir)
            if state is not None:
                self.load_state(state)
            elif run.holds_run():
                raise SteerInterpError(f"{run.path} holds a run but no checkpoint to resume from; "
                                       "start a new run elsewhere or overwrite it", setting="overwrite")
        elif run.holds_run():
            if not overwrite:
                raise SteerInterpError(f"{run.path} already holds a run; resume it, overwrite it, or choose a new "
                                       "directory", setting="resume")
            run.clear()
        run.write_record(RunRecord(
            kind="train", model=model_spec(self.model), task=self.task.spec, task_name=self.task.name,
            verifier=self.task.verifier, seed=self.config.seed,
            config={**self.config.to_dict(), "trained": sorted(self.params)},
            task_digest=task_id, model_fingerprint=model_id, dtype_reason=dtype_choice(self.model).reason))
        run.write_metrics(self.metrics)

    def _check_same_run(self, record: RunRecord, task_id: str, model_id: str) -> None:
        """Refuse to resume a run with another verifier, other task data, or another model."""
        if record.verifier is not None and record.verifier != self.task.verifier:
            raise SteerInterpError(f"cannot resume: the run was scored by verifier {record.verifier!r}, not "
                                   f"{self.task.verifier!r}", setting="verifier")
        if record.task_digest is not None and record.task_digest != task_id:
            raise SteerInterpError(f"cannot resume: the task's problems or prompts differ from the run's "
                                   f"({record.task or record.task_name}: the data changed since)", setting="task")
        now = model_spec(self.model).dtype
        if record.model is not None and record.model.dtype not in (None, now):
            raise SteerInterpError(f"cannot resume: the run was trained in {record.model.dtype} and this model is "
                                   f"{now}; load it with dtype={record.model.dtype!r} (--dtype {record.model.dtype})",
                                   setting="dtype")
        if record.model_fingerprint is not None and record.model_fingerprint != model_id:
            was = record.model.describe() if record.model is not None else "another model"
            raise SteerInterpError(f"cannot resume: the run was trained on {was}; this model's weights differ "
                                   f"(d_model {self.model.cfg.d_model})", setting="model")

    def _save_final(self) -> None:
        final = self.run.final_dir
        final.mkdir(parents=True, exist_ok=True)
        info = {"task": self.task.name, "steps": self.step_index, "config": self.config.to_dict()}
        self.parametrisation.save_final(self.trained, self.model, final, info)


def train(model, task: Task, config: TrainConfig | None = None, out_dir=None, *, steering=None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Convenience wrapper: ``Trainer(model, task, config, out_dir, steering=steering).train(resume)``."""
    return Trainer(model, task, config, out_dir, steering=steering, progress=progress).train(resume=resume)
