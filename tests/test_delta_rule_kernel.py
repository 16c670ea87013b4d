"""The gated delta rule's Pallas kernel (models/delta_rule_gpu.py; interpret mode off GPUs) against
the token-by-token scan, and split into calls against one call: the engine's results must not depend
on how a prompt is chunked."""

import jax
import jax.numpy as jnp

from jaxllm.models import delta_rule_gpu, linear_attention


def _inputs(b, t, h, dk, dv):
    ks = jax.random.split(jax.random.PRNGKey(t), 6)
    q, k = (linear_attention.l2norm(jax.random.normal(x, (b, t, h, dk))) for x in ks[:2])
    v = jax.random.normal(ks[2], (b, t, h, dv))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, h)))
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h))).at[:, -2:].set(0.0)  # padding: beta = g = 0
    g = g.at[:, -2:].set(0.0)
    return q * dk**-0.5, k, v, g, beta, jax.random.normal(ks[5], (b, h, dk, dv))


def test_kernel_matches_scan_and_ignores_chunking():
    shape = (2, 13, 3, 32, 16)  # rows, tokens (not a power of two), heads, key dim, value dim
    interpret = jax.default_backend() != "gpu"
    q, k, v, g, beta, s0 = _inputs(*shape)
    run = lambda sl, s: delta_rule_gpu.delta_rule(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], s, interpret=interpret)  # noqa: E731
    out, state = run(slice(None), s0)
    # the scan takes q and k before its own norm; normed inputs are unchanged by it (up to rounding)
    want_out, want_state = linear_attention.recurrent_delta_rule(q * shape[3] ** 0.5, k, v, g, beta, s0)
    for got, want in ((out, want_out), (state, want_state)):
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-5
    assert jnp.array_equal(state, run(slice(-2, None), state)[1])  # padding tokens leave the state as it was
    cut = shape[1] // 3
    first, mid = run(slice(0, cut), s0)
    second, end = run(slice(cut, None), mid)
    assert jnp.array_equal(jnp.concatenate([first, second], axis=1), out) and jnp.array_equal(end, state)
