"""steerinterp: train steering vectors into frozen language models with RL, then take them apart.

    import steerinterp as si
    model = si.load_model()                              # embedded SmolLM2-135M-Instruct
    vecs = si.SteeringSet.zeros(model, layers="all")     # one trainable vector per layer
    with vecs.applied(model):
        logits = model(tokens)
    out = si.generate(model, ["What is 2 + 3?"], steering=vecs, max_new_tokens=32, temperature=0)
"""

__version__ = "0.1.0"

from steerinterp.chat import chat_prompts
from steerinterp.errors import ModelLoadError, SteeringFileError, SteerInterpError
from steerinterp.generation import GenerationOutput, generate, teacher_forced_logprobs
from steerinterp.models import TinyConfig, load_model
from steerinterp.positions import Positions, TokenContext
from steerinterp.steering import SteeringSet, SteeringVector
from steerinterp.types import HookedModel

__all__ = [
    "GenerationOutput",
    "HookedModel",
    "ModelLoadError",
    "Positions",
    "SteerInterpError",
    "SteeringFileError",
    "SteeringSet",
    "SteeringVector",
    "TinyConfig",
    "TokenContext",
    "chat_prompts",
    "generate",
    "load_model",
    "teacher_forced_logprobs",
]
