"""Shared layers: the batch-1 decode attention path equals the general one."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.models.layers import attend, attention_probs


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_batch_one_decode_attention_equals_the_matmul_form(softcap):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 8, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, 40, 2, 16)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((1, 1, 40)) > 0.3)
    fast = attend(q, k, v, mask, 0.25, softcap)  # takes the batch-1, one-query path
    probs = attention_probs(q, k, mask, 0.25, softcap)
    general = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(q.shape)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(general), atol=1e-6)
    # two rows take the general path and agree with the one-row result for the first row
    two = attend(jnp.concatenate([q, q]), jnp.concatenate([k, k]), jnp.concatenate([v, v]), jnp.concatenate([mask, mask]), 0.25, softcap)
    np.testing.assert_allclose(np.asarray(two[:1]), np.asarray(fast), atol=1e-6)
