"""Device meshes and the logical-axis rules that place parameters on them.

Models name their parameter axes ("embed", "q_heads", "kv_heads", "mlp", "vocab", ...);
this package alone decides which mesh axis, if any, each name is split over.
"""
