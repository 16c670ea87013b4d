"""Weight quantization: what a quantized parameter looks like and how a float tensor becomes one.

The loader's seam (weights.load_params): for each parameter path it asks `float_target` what float
array the weight map's transform should build, then `pieces` what to place: the array itself for a
float parameter; for a quantized kernel, its integer values and its scales (sibling leaves)."""

from __future__ import annotations

import jax
import numpy as np


def float_target(path: tuple, params: dict, dtype) -> jax.ShapeDtypeStruct:
    """The float array the transform builds for the parameter at `path` of `params` {path: leaf}."""
    return jax.ShapeDtypeStruct(params[path].shape, dtype)


def pieces(path: tuple, host: np.ndarray, params: dict) -> dict[tuple, np.ndarray]:
    """{path: host array} to place for the parameter at `path`, from its float value `host`."""
    return {path: host}
