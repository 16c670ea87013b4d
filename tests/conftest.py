import os
import sys

# Tests run on the CPU, with 8 simulated devices so the sharding tests have a mesh to use;
# unsharded code runs on the first of them as usual.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
sys.path.insert(0, os.path.dirname(__file__))
