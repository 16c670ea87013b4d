"""Device meshes and the logical-axis rules that place parameters on them.

Models name their parameter axes ("embed", "q_heads", "kv_heads", "mlp", "vocab_in", ...);
this package alone decides which mesh axis, if any, each name is split over.
"""

from jaxllm.sharding.mesh import AXES, describe, fitting_mesh, is_auto, make_mesh, parse_spec
from jaxllm.sharding.rules import RULES, dp_rows, param_shardings, pool_sharding, put_replicated, replicated, spec_for

__all__ = ["AXES", "RULES", "make_mesh", "fitting_mesh", "is_auto", "parse_spec", "describe", "spec_for", "param_shardings", "pool_sharding",
           "dp_rows", "replicated", "put_replicated"]
