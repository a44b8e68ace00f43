"""steerinterp: train steering vectors into frozen language models with RL, then take them apart.

    import steerinterp as si
    model = si.load_model()                              # embedded SmolLM2-135M-Instruct
    vecs = si.SteeringSet.zeros(model, layers="all")     # one trainable vector per layer
    with vecs.applied(model):
        logits = model(tokens)
    out = si.generate(model, ["What is 2 + 3?"], steering=vecs, max_new_tokens=32, temperature=0)

The package is a house of rooms (docs/architecture.md): ground (errors, types, _files, run_dir), steering/,
models/, generation/, tasks/, rl/, analysis/, sae/, app/. Importing it loads torch and the steering,
model and generation rooms; plotly, pandas and sae-lens load only when a function needs them.
"""

__version__ = "0.1.0"

import steerinterp._moved  # noqa: F401  (old module paths, e.g. steerinterp.evaluate, keep importing)
from steerinterp.errors import ModelLoadError, SteeringFileError, SteerInterpError
from steerinterp.generation import GenerationOutput, generate, teacher_forced_logprobs
from steerinterp.models import TinyConfig, chat_prompts, load_model, load_model_from_spec
from steerinterp.run_dir import RunDir
from steerinterp.steering import AdaptiveSteering, Positions, Steering, SteeringSet, SteeringVector, TokenContext
from steerinterp.types import HookedModel, ModelSpec, model_spec

__all__ = [
    "AdaptiveSteering",
    "GenerationOutput",
    "HookedModel",
    "ModelLoadError",
    "ModelSpec",
    "Positions",
    "RunDir",
    "SteerInterpError",
    "Steering",
    "SteeringFileError",
    "SteeringSet",
    "SteeringVector",
    "TinyConfig",
    "TokenContext",
    "chat_prompts",
    "generate",
    "load_model",
    "load_model_from_spec",
    "model_spec",
    "teacher_forced_logprobs",
]
