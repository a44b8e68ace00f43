"""Training a DiffSAE with sae-lens, offline, on differences in memory or on disk.

sae-lens's ``SAETrainer`` does the optimisation (its TopK / BatchTopK / standard / JumpReLU / gated
/ Matryoshka training classes, looked up in its registry by ``architecture``); steerinterp supplies
the activation stream (``activation_batches``), the held-out split, the quality report and resuming.

Defaults (the papers' recipe is not public; PAPER_NOTES section 4.6):

* the rows: ``rows="all"`` collected rows (``"completion"``: only those predicting completion tokens),
  each distinct row once (``dedupe=True``), 10% of the *problems* held out (``heldout_by="problem"``)
  and no held-out row equal to a training row (``sae.rows.training_rows``; the counts are in
  ``DiffSAE.data``);
* ``architecture="topk"``, ``k=32``, ``d_sae = 4 * d_in`` (the authors' own SAE work is TopK-family;
  ``d_sae="auto"`` sizes the dictionary to the distinct training rows with ``suggest_d_sae``);
* activations scaled to mean norm ``sqrt(d_in)`` (sae-lens's ``expected_average_only_in``), estimated
  on 20 batches of a separate stream and folded into the weights at the end, so the SAE takes raw
  differences;
* FVU / L0 / dead latents on the held-out rows;
* Adam at lr 3e-4, 1024 tokens per batch, ``training_tokens`` defaulting to ``passes`` (20) passes over the
  training rows; small, de-duplicated data (a few thousand rows) wants more passes to converge.

Resuming: with ``checkpoint_dir`` and ``n_checkpoints``, sae-lens writes the SAE, its optimiser,
schedules, firing statistics and the activation scaler; ``resume=True`` loads the newest one and
restarts the activation stream at the batch it had reached, so the resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations
from steerinterp.sae.model import DiffSAE, sae_quality
from steerinterp.sae.rows import suggest_d_sae, training_rows
from steerinterp.sae.store import ShardedDiffs, activation_batches, check_source


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


def train_diff_sae(source: DiffActivations | ShardedDiffs, *, architecture: str = "topk", d_sae: int | str | None = None,
                   k: int = 32, training_tokens: int | None = None, batch_size: int = 1024, lr: float = 3e-4,
                   normalize: str = "expected_average_only_in", n_batches_for_norm_estimate: int = 20,
                   heldout: float = 0.1, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                   checkpoint_dir=None, n_checkpoints: int = 0, resume: bool = False,
                   dead_feature_window: int = 100, sae_kwargs: dict | None = None, model_name: str = "",
                   rows: str = "all", dedupe: bool = True, heldout_by: str = "problem", passes: int = 20) -> DiffSAE:
    """Train an SAE on the rows of ``source`` with sae-lens; see the module docstring for defaults.

    ``rows`` / ``dedupe`` / ``heldout`` / ``heldout_by`` choose the training and held-out rows
    (``sae.rows.training_rows``); ``dedupe=False, heldout_by="generation"`` is the earlier behaviour but
    for held-out rows equal to training rows, which are always left out. ``d_sae``: an int, None
    (4 x d_in) or ``"auto"`` (``suggest_d_sae`` of the distinct training rows and ``k``).

    ``passes``: how many times the training rows are seen when ``training_tokens`` is not given.

    ``sae_kwargs`` go to the sae-lens training config (e.g. ``{"l1_coefficient": 5}`` for
    ``architecture="standard"``); ``k`` is used by the TopK-family architectures only.
    ``dead_feature_window``: steps without firing after which a latent counts as dead (TopK's
    auxiliary loss then trains it on the residual); sae-lens's 1000 is longer than most runs here.
    """
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    check_source(source)
    if not any(bool(part.delta.any()) for part in source.parts()):
        raise SteerInterpError(f"every difference at {source.hook_name} is zero: the steering does not change this "
                               "layer (zero vectors, or only later layers steered); there is nothing to learn")
    if resume and checkpoint_dir is None:
        raise SteerInterpError("resume=True needs the checkpoint_dir the interrupted run wrote to")
    if n_checkpoints and checkpoint_dir is None:
        raise SteerInterpError("n_checkpoints needs a checkpoint_dir to write them to")
    sae_cls, cfg_cls = _training_classes(architecture)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    split = training_rows(source, rows=rows, dedupe=dedupe, heldout=heldout, heldout_by=heldout_by, seed=seed)
    train, held = split.train, split.heldout
    if d_sae == "auto":
        d_sae = suggest_d_sae(max(split.n_train, 1), source.d_in, k=k)
    elif isinstance(d_sae, str):
        raise SteerInterpError(f"d_sae={d_sae!r}; give a number of latents, None (4 x d_in) or 'auto'")
    kwargs = {"d_in": source.d_in, "d_sae": d_sae or 4 * source.d_in, "dtype": dtype, "device": device,
              "normalize_activations": normalize, **({"k": k} if "k" in names else {}), **(sae_kwargs or {})}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise SteerInterpError(f"{architecture} SAEs have no setting {unknown[0]!r}; they take {', '.join(sorted(names))}")
    n_train = split.n_train
    if n_train < batch_size:
        raise SteerInterpError(f"{n_train} training rows ({split.n_distinct} distinct {rows} rows of {split.n_rows}) are "
                               f"fewer than one batch of {batch_size}; collect more differences or lower batch_size")
    d_in = source.d_in
    if passes < 1:
        raise SteerInterpError(f"passes={passes}; give at least 1 pass over the training rows")
    training_tokens = passes * n_train if training_tokens is None else int(training_tokens)
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
                   sae_quality(inference, held) if held is not None and split.n_heldout else None,
                   trainer.n_training_samples - start_samples, seconds, split.summary())
