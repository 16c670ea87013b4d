"""jaxllm: Hugging Face language models in JAX/Flax NNX, for inference on TPU, GPU and CPU.

    import jaxllm
    model = jaxllm.load("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16")
    logits = model.logits([[1, 2, 3]])          # [batch, seq, vocab], float32
"""

__version__ = "0.1.0"

import importlib.util as _util
import os as _os

# `models/` and `sharding/` install as jaxllm.models and jaxllm.sharding (setuptools package-dir).
# Editable installs by tools without PEP 660 only put the checkout on sys.path; then let this
# package find its two sibling folders there.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _util.find_spec(__name__ + ".models") is None and _os.path.isfile(_os.path.join(_checkout, "models", "layers.py")):
    __path__.append(_checkout)  # noqa: F821

from jaxllm.config import ModelConfig
from jaxllm.errors import CheckpointError, ConfigError, GenerationError, JaxllmError
from jaxllm.engine import Engine
from jaxllm.generation import Completion, generate
from jaxllm.loader import LoadedModel, load
from jaxllm import research  # noqa: E402  (jaxllm.research.hidden_states etc.)
from jaxllm.sampling import SamplingParams

__all__ = [
    "__version__", "load", "LoadedModel", "ModelConfig", "generate", "Completion", "SamplingParams", "Engine",
    "JaxllmError", "ConfigError", "CheckpointError", "GenerationError",
]
