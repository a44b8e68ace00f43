"""DiffSAE: sparse autoencoders on steering-induced activation differences, trained with sae-lens
(PAPER_NOTES section 4.6), and SAE-feature attribution for any sae-lens SAE.

    from steerinterp import sae as S
    gens = S.sample_labelled(model, task, vecs, samples_per_problem=4)          # labelled by the verifier
    diffs = S.collect_differences(model, gens, vecs, hooks=[10, 20])            # {hook: DiffActivations}
    dsae = S.train_diff_sae(diffs["blocks.20.hook_resid_post"])                 # TopK, k=32, 4x
    freq = S.feature_frequencies(dsae, diffs["blocks.20.hook_resid_post"])      # correct vs incorrect
    S.top_contexts(model, dsae, diffs[...], freq.top(3)); S.decoder_logit_lens(model, dsae, freq.top(3))
    S.sae_feature_attribution(model, batch, dsae, metric, steering=vecs)        # activation x gradient
    S.feature_vector(dsae, freq.top(1)[0], norm=8.0)                            # a SteeringVector
    S.training_rows(diffs[...]).to_frame()                                      # distinct rows, held out by problem
    S.ablate_features(model, gens, dsae, freq.top(10), steering=vecs, ks=[1, 3, 10])   # effect lost, log p
    S.ablation_accuracy(model, task, dsae, freq.top(10), steering=vecs, ks=[1, 10])    # accuracy
"""

from steerinterp.sae.ablation import (
    AblationAccuracyResult,
    FeatureAblationEngine,
    FeatureAblationResult,
    ablate_features,
    ablation_accuracy,
)
from steerinterp.sae.attribution import FeatureAttributionResult, sae_feature_attribution
from steerinterp.sae.collect import (
    DiffActivations,
    LabelledGenerations,
    collect_differences,
    concat_differences,
    iter_differences,
    label_generations,
    row_keys,
    sample_labelled,
    sample_token_rows,
)
from steerinterp.sae.features import (
    FeatureFrequencyResult,
    FrequencyByLayer,
    TopContextsResult,
    decoder_logit_lens,
    feature_frequencies,
    frequencies_by_layer,
    top_contexts,
)
from steerinterp.sae.model import DiffSAE, SAEQuality, load_diff_sae, sae_hook_name, sae_quality
from steerinterp.sae.rows import TrainingRows, suggest_d_sae, training_rows
from steerinterp.sae.steer import feature_vector
from steerinterp.sae.store import DiffActivationStore, ShardedDiffs, activation_batches, write_difference_store
from steerinterp.sae.train import train_diff_sae

__all__ = [
    "sample_labelled", "label_generations", "LabelledGenerations",
    "collect_differences", "iter_differences", "concat_differences", "DiffActivations", "sample_token_rows",
    "write_difference_store", "DiffActivationStore", "ShardedDiffs", "activation_batches",
    "train_diff_sae", "DiffSAE", "load_diff_sae", "sae_quality", "SAEQuality",
    "feature_frequencies", "FeatureFrequencyResult", "frequencies_by_layer", "FrequencyByLayer",
    "top_contexts", "TopContextsResult", "decoder_logit_lens",
    "sae_feature_attribution", "FeatureAttributionResult", "feature_vector", "sae_hook_name",
    "training_rows", "TrainingRows", "suggest_d_sae", "row_keys",
    "ablate_features", "FeatureAblationResult", "ablation_accuracy", "AblationAccuracyResult", "FeatureAblationEngine",
]
