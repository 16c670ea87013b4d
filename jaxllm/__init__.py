"""jaxllm: Hugging Face language models in JAX/Flax NNX, for inference on TPU, GPU and CPU.

    import jaxllm
    model = jaxllm.load("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16")
    logits = model.logits([[1, 2, 3]])          # [batch, seq, vocab], float32
"""

__version__ = "0.1.0"

from jaxllm.config import ModelConfig
from jaxllm.errors import CheckpointError, ConfigError, GenerationError, JaxllmError
from jaxllm.engine import Engine
from jaxllm.generation import Completion, generate
from jaxllm.loader import LoadedModel, load
from jaxllm.sampling import SamplingParams

__all__ = [
    "__version__", "load", "LoadedModel", "ModelConfig", "generate", "Completion", "SamplingParams", "Engine",
    "JaxllmError", "ConfigError", "CheckpointError", "GenerationError",
]
