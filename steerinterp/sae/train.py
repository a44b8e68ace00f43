"""Training a DiffSAE with sae-lens, offline, on differences in memory or on disk.

sae-lens's ``SAETrainer`` does the optimisation (its TopK / BatchTopK / standard / JumpReLU / gated
/ Matryoshka training classes, looked up in its registry by ``architecture``); steerinterp supplies
the activation stream (``activation_batches``), the held-out split, the quality report and resuming.

Defaults (the papers' recipe is not public; PAPER_NOTES section 4.6):

* ``architecture="topk"``, ``k=32``, ``d_sae = 4 * d_in`` (the authors' own SAE work is TopK-family);
* activations scaled to mean norm ``sqrt(d_in)`` (sae-lens's ``expected_average_only_in``), estimated
  on 20 batches of a separate stream and folded into the weights at the end, so the SAE takes raw
  differences;
* 10% of the *generations* held out for FVU / L0 / dead latents;
* Adam at lr 3e-4, 1024 tokens per batch, ``training_tokens`` defaulting to 20 passes over the data.

Resuming: with ``checkpoint_dir`` and ``n_checkpoints``, sae-lens writes the SAE, its optimiser,
schedules, firing statistics and the activation scaler; ``resume=True`` loads the newest one and
restarts the activation stream at the batch it had reached, so the resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations
from steerinterp.sae.store import ShardedDiffs, activation_batches, check_source

STEERINTERP_META = "steerinterp_sae.json"


@dataclass
class SAEQuality(AnalysisResult):
    """Reconstruction quality on a set of rows: fraction of variance unexplained, mean L0, dead latents."""

    fvu: float
    mse: float
    l0: float
    dead: int  # latents that never fired on these rows
    d_sae: int
    n_rows: int

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.d_sae

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{**dataclasses.asdict(self), "dead_fraction": self.dead_fraction}])

    def plot(self):
        import plotly.graph_objects as go

        return go.Figure(go.Table(header={"values": list(self.to_frame().columns)},
                                  cells={"values": [[v] for v in self.to_frame().iloc[0].tolist()]}))


@torch.no_grad()
def sae_quality(sae, source: DiffActivations | ShardedDiffs, *, batch_size: int = 4096) -> SAEQuality:
    """FVU = sum |x - sae(x)|^2 / sum |x - mean x|^2 over the rows, mean L0, and never-firing latents."""
    check_source(source)
    sae = as_sae_lens(sae)
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sq_err = l0 = 0.0
    n = 0
    s1 = None
    s2 = 0.0
    for part in source.parts():
        for start in range(0, len(part), batch_size):
            x = part.delta[start : start + batch_size].to(sae.device, sae.dtype)
            acts = sae.encode(x)
            recon = sae.decode(acts)
            xd = x.double()
            sq_err += float((xd - recon.double()).pow(2).sum())
            s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
            s2 += float(xd.pow(2).sum())
            active = acts != 0
            l0 += float(active.sum())
            fired |= active.any(0).cpu()
            n += len(x)
    if n == 0:
        raise SteerInterpError("no rows to measure the SAE on")
    total_var = s2 - float(s1.pow(2).sum()) / n
    return SAEQuality(fvu=sq_err / max(total_var, 1e-30), mse=sq_err / n, l0=l0 / n, dead=int((~fired).sum()),
                      d_sae=d_sae, n_rows=n)


@dataclass
class DiffSAE(AnalysisResult):
    """A trained SAE (a sae-lens inference SAE) with the hook it reads and its quality."""

    sae: object
    hook_name: str
    architecture: str
    train_quality: SAEQuality | None
    heldout_quality: SAEQuality | None
    training_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.training_tokens / self.seconds if self.seconds else float("nan")

    def to_frame(self):
        import pandas as pd

        rows = []
        for split, q in (("train", self.train_quality), ("heldout", self.heldout_quality)):
            if q is not None:
                rows.append({"hook": self.hook_name, "architecture": self.architecture, "split": split,
                             **q.to_frame().iloc[0].to_dict()})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go

        frame = self.to_frame()
        fig = go.Figure([go.Bar(x=frame["split"], y=frame[m], name=m) for m in ("fvu", "dead_fraction")])
        fig.update_layout(title=f"DiffSAE at {self.hook_name}: FVU and dead latents (L0 {frame['l0'].iloc[-1]:.1f})",
                          barmode="group", yaxis_range=[0, 1])
        return fig

    def save(self, directory) -> Path:
        """sae-lens's files (``cfg.json``, ``sae_weights.safetensors``) plus the quality report."""
        directory = Path(directory)
        self.sae.save_model(directory)
        meta = {"hook_name": self.hook_name, "architecture": self.architecture, "training_tokens": self.training_tokens,
                "seconds": self.seconds,
                "train_quality": None if self.train_quality is None else dataclasses.asdict(self.train_quality),
                "heldout_quality": None if self.heldout_quality is None else dataclasses.asdict(self.heldout_quality)}
        (directory / STEERINTERP_META).write_text(json.dumps(meta, indent=1))
        return directory


def as_sae_lens(sae):
    """The sae-lens SAE of a ``DiffSAE``, or the SAE itself."""
    return sae.sae if isinstance(sae, DiffSAE) else sae


def load_diff_sae(directory, *, device: str = "cpu") -> DiffSAE:
    """Load a saved ``DiffSAE`` (or any sae-lens SAE folder; then the hook comes from its config)."""
    from sae_lens import SAE

    directory = Path(directory)
    if not (directory / "cfg.json").exists():
        raise SteerInterpError(f"{directory} has no cfg.json; it is not a saved SAE (DiffSAE.save writes one)")
    sae = SAE.load_from_disk(str(directory), device=device)
    meta_path = directory / STEERINTERP_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    hook = meta.get("hook_name") or sae.cfg.metadata.hook_name
    if not hook:
        raise SteerInterpError(f"the SAE in {directory} does not say which hook it reads; set cfg.metadata.hook_name")
    q = {k: (SAEQuality(**meta[k]) if meta.get(k) else None) for k in ("train_quality", "heldout_quality")}
    return DiffSAE(sae, hook, meta.get("architecture", sae.cfg.architecture()), q["train_quality"], q["heldout_quality"],
                   meta.get("training_tokens", 0), meta.get("seconds", 0.0))


def _training_classes(architecture: str):
    import sae_lens  # noqa: F401  (registers the architectures)
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class

    try:
        return get_sae_training_class(architecture)
    except KeyError:
        raise SteerInterpError(f"architecture={architecture!r} is not a sae-lens training architecture; choose from "
                               f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}") from None


def _latest_checkpoint(directory: Path) -> Path | None:
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and (p / "cfg.json").exists()] \
        if directory.exists() else []
    return max(found, key=lambda p: int(p.name)) if found else None


def _to_inference(sae):
    """The trained SAE as sae-lens's inference class, through its own inference save / load."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=str(sae.device))


def train_diff_sae(source: DiffActivations | ShardedDiffs, *, architecture: str = "topk", d_sae: int | None = None,
                   k: int = 32, training_tokens: int | None = None, batch_size: int = 1024, lr: float = 3e-4,
                   normalize: str = "expected_average_only_in", n_batches_for_norm_estimate: int = 20,
                   heldout: float = 0.1, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                   checkpoint_dir=None, n_checkpoints: int = 0, resume: bool = False,
                   dead_feature_window: int = 100, sae_kwargs: dict | None = None, model_name: str = "") -> DiffSAE:
    """Train an SAE on the rows of ``source`` with sae-lens; see the module docstring for defaults.

    ``sae_kwargs`` go to the sae-lens training config (e.g. ``{"l1_coefficient": 5}`` for
    ``architecture="standard"``); ``k`` is used by the TopK-family architectures only.
    ``dead_feature_window``: steps without firing after which a latent counts as dead (TopK's
    auxiliary loss then trains it on the residual); sae-lens's 1000 is longer than most runs here.
    """
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    check_source(source)
    if resume and checkpoint_dir is None:
        raise SteerInterpError("resume=True needs the checkpoint_dir the interrupted run wrote to")
    if n_checkpoints and checkpoint_dir is None:
        raise SteerInterpError("n_checkpoints needs a checkpoint_dir to write them to")
    sae_cls, cfg_cls = _training_classes(architecture)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    kwargs = {"d_in": source.d_in, "d_sae": d_sae or 4 * source.d_in, "dtype": dtype, "device": device,
              "normalize_activations": normalize, **({"k": k} if "k" in names else {}), **(sae_kwargs or {})}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise SteerInterpError(f"{architecture} SAEs have no setting {unknown[0]!r}; they take {', '.join(sorted(names))}")
    train, held = source.split_samples(heldout, seed) if heldout else (source, None)
    n_train = len(train)
    if n_train < batch_size:
        raise SteerInterpError(f"{n_train} training rows are fewer than one batch of {batch_size}; "
                               "collect more differences or lower batch_size")
    d_in = source.d_in
    training_tokens = 20 * n_train if training_tokens is None else int(training_tokens)
    if training_tokens < batch_size:
        raise SteerInterpError(f"training_tokens={training_tokens} is less than one batch of {batch_size}")

    cfg = cfg_cls(**kwargs)
    cfg.metadata.hook_name = source.hook_name
    cfg.metadata.model_name = model_name
    cfg.metadata.steerinterp_input = "steered - base difference"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = sae_cls(cfg)

    trainer_cfg = SAETrainerConfig(
        total_training_samples=training_tokens, train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
        device=device, dead_feature_window=dead_feature_window, feature_sampling_window=dead_feature_window,
        n_checkpoints=n_checkpoints, checkpoint_path=None if checkpoint_dir is None else str(checkpoint_dir),
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=n_batches_for_norm_estimate)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    latest = _latest_checkpoint(Path(checkpoint_dir)) if resume else None
    if latest is not None:
        sae.load_weights_from_checkpoint(latest)
        trainer.load_trainer_state(latest)
        # sae-lens checkpoints before counting the step it just took; the sample count is exact
        trainer.n_training_steps = trainer.n_training_samples // batch_size
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
    elif normalize == "expected_average_only_in":
        trainer.activation_scaler.estimate_scaling_factor(
            d_in, activation_batches(train, batch_size, seed=seed + 1), n_batches_for_norm_estimate)
    elif normalize == "covariance_whitening":
        trainer.activation_scaler.estimate_whitening(
            d_in, activation_batches(train, batch_size, seed=seed + 1), n_batches_for_norm_estimate)
    trainer.data_provider = activation_batches(train, batch_size, seed=seed, start_batch=trainer.n_training_steps)
    t0 = time.perf_counter()
    start_samples = trainer.n_training_samples
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    inference = _to_inference(trained).eval()
    return DiffSAE(inference, source.hook_name, architecture, sae_quality(inference, train),
                   sae_quality(inference, held) if held is not None else None,
                   trainer.n_training_samples - start_samples, seconds)
