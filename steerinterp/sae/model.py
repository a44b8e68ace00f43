"""The inference half of a DiffSAE: the trained SAE with its hook and quality, loading, quality measures.

Analyses (features, attribution, feature steering) import this module, never the training code
(``sae/train.py``), so using a saved SAE does not pull in sae-lens's trainer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steerinterp._files import give_plain_modes
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations
from steerinterp.sae.store import ShardedDiffs, check_source

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
    """A trained SAE (a sae-lens inference SAE) with the hook it reads and its quality; ``data`` says which
    rows it was trained and measured on (``sae.rows.TrainingRows.summary()``: distinct rows, held out by
    problem, ...)."""

    sae: object
    hook_name: str
    architecture: str
    train_quality: SAEQuality | None
    heldout_quality: SAEQuality | None
    training_tokens: int = 0
    seconds: float = 0.0
    data: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.training_tokens / self.seconds if self.seconds else float("nan")

    def to_frame(self):
        import pandas as pd

        rows = []
        for split, q in (("train", self.train_quality), ("heldout", self.heldout_quality)):
            if q is not None:
                rows.append({"hook": self.hook_name, "architecture": self.architecture, "split": split,
                             **q.to_frame().iloc[0].to_dict(),
                             **{k: self.data[k] for k in ("distinct_rows", "rows", "heldout_by") if k in self.data}})
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
                "heldout_quality": None if self.heldout_quality is None else dataclasses.asdict(self.heldout_quality),
                "data": self.data}
        (directory / STEERINTERP_META).write_text(json.dumps(meta, indent=1))
        give_plain_modes(directory / "sae_weights.safetensors")  # safetensors writes it owner-only
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
                   meta.get("training_tokens", 0), meta.get("seconds", 0.0), meta.get("data") or {})


def sae_hook_name(sae, hook_name: str | None = None) -> str:
    """The hook an SAE reads: ``hook_name`` if given, else the DiffSAE's, else the sae-lens config's."""
    name = hook_name or getattr(sae, "hook_name", None) or getattr(as_sae_lens(sae).cfg.metadata, "hook_name", None)
    if not name:
        raise SteerInterpError("the SAE does not say which hook it reads; pass hook_name='blocks.L.hook_resid_post'")
    return name
