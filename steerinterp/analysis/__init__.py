"""Analyses of steering vectors, one module each; every function returns a result with
``to_frame()`` and ``plot()`` (plotly) and writes nothing.

    from steerinterp import analysis as A
    A.vector_logit_lens(model, vecs).to_frame()
    A.token_shift(model, rollouts, last_layer_vec, track=["To"]).summary()
    A.block_patching(model, rollouts, penultimate_vec).plot()
"""

from steerinterp.analysis.adaptive_magnitude import AdaptiveMagnitudeResult, adaptive_magnitudes
from steerinterp.analysis.attention import AttentionDiffResult, attention_diff
from steerinterp.analysis.batch import Batch, as_batch, paired_caches, teacher_forcing_batch
from steerinterp.analysis.block_patching import BlockPatchingResult, Patch, block_patching, standard_patches
from steerinterp.analysis.composition import CompositionResult, combine, compose_pairs, normalised_gain
from steerinterp.analysis.language import LanguageResult, language_shares, token_script
from steerinterp.analysis.logit_attribution import LogitAttributionResult, logit_attribution
from steerinterp.analysis.logit_lens import LogitLensResult, vector_logit_lens
from steerinterp.analysis.patched_generation import PatchedAccuracyResult, PatchedEngine, patched_accuracy
from steerinterp.analysis.path_patching import (
    Node,
    PathPatchingResult,
    completion_logprob_metric,
    path_patch,
    token_logprob_metric,
)
from steerinterp.analysis.persistence import PersistenceResult, persistence
from steerinterp.analysis.prefix_control import PrefixControlResult, first_token_prob, prefix_control
from steerinterp.analysis.residual_lens import ResidualLensResult, residual_logit_lens
from steerinterp.analysis.routes import RouteResult, route_attribution
from steerinterp.analysis.token_shift import TokenShiftResult, token_shift
from steerinterp.analysis.transfer import (
    ResidualMap,
    TransferResult,
    fit_linear_map,
    fit_residual_map,
    transfer_grid,
    transfer_vectors,
)
from steerinterp.analysis.vector_stats import VectorStats, vector_stats
from steerinterp.analysis.weight_change import WeightChangeResult, weight_change

__all__ = [
    # inputs
    "Batch", "as_batch", "paired_caches", "teacher_forcing_batch",
    # analyses I: tokens
    "vector_stats", "VectorStats", "vector_logit_lens", "LogitLensResult", "residual_logit_lens", "ResidualLensResult",
    "token_shift", "TokenShiftResult", "prefix_control", "PrefixControlResult", "first_token_prob",
    "persistence", "PersistenceResult", "language_shares", "LanguageResult", "token_script",
    "compose_pairs", "combine", "normalised_gain", "CompositionResult",
    "transfer_vectors", "transfer_grid", "TransferResult", "fit_residual_map", "fit_linear_map", "ResidualMap",
    "weight_change", "WeightChangeResult",
    "adaptive_magnitudes", "AdaptiveMagnitudeResult",
    # analyses II: circuits
    "block_patching", "BlockPatchingResult", "Patch", "standard_patches",
    "patched_accuracy", "PatchedAccuracyResult", "PatchedEngine",
    "attention_diff", "AttentionDiffResult", "route_attribution", "RouteResult",
    "path_patch", "Node", "PathPatchingResult", "token_logprob_metric", "completion_logprob_metric",
    "logit_attribution", "LogitAttributionResult",
]
