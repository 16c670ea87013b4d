"""jaxllm: Hugging Face language models in JAX/Flax NNX, for inference on TPU, GPU and CPU.

    import jaxllm
    model = jaxllm.load("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16")
    logits = model.logits([[1, 2, 3]])          # [batch, seq, vocab], float32
    answer = model.generate("What is the capital of France?").text
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


def _import_flax() -> None:
    """Import flax.nnx without IPython: on import, flax asks IPython whether a notebook runs
    (flax.nnx.reprlib.supports_color), importing it (0.3 s of every start). Where IPython is not
    imported yet no notebook runs, and flax takes the failed import for that answer."""
    import sys

    if "IPython" in sys.modules or "flax.nnx" in sys.modules:
        return
    sys.modules["IPython"] = None  # an import of it fails while this stands
    try:
        import flax.nnx  # noqa: F401
    finally:
        if sys.modules.get("IPython", 0) is None:
            del sys.modules["IPython"]


_import_flax()

from jaxllm import research  # noqa: E402  (jaxllm.research.hidden_states etc.)
from jaxllm.engine import Engine  # noqa: E402
from jaxllm.errors import CheckpointError, ConfigError, GenerationError, InputError, JaxllmError, StructuredError  # noqa: E402
from jaxllm.generation import Completion  # noqa: E402
from jaxllm.loader import LoadedModel, estimate_memory, load  # noqa: E402
from jaxllm.models.config import ModelConfig  # noqa: E402
from jaxllm.runtime import use_compile_cache  # noqa: E402
from jaxllm.sampling import SamplingParams  # noqa: E402
from jaxllm.structured import Structured  # noqa: E402

__all__ = [
    "__version__", "load", "LoadedModel", "ModelConfig", "Completion", "SamplingParams", "Structured", "Engine", "estimate_memory",
    "use_compile_cache", "research", "JaxllmError", "ConfigError", "CheckpointError", "GenerationError", "StructuredError",
    "InputError",
]
