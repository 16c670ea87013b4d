"""The gated delta rule's Pallas kernel (models/delta_rule_gpu.py; interpret mode off GPUs) against
the token-by-token scan, and split into calls against one call: the engine's results must not depend
on how a prompt is chunked; the chunked form (a whole sequence) against the scan."""

import jax
import jax.numpy as jnp
import pytest

from jaxllm.models import delta_rule_gpu, linear_attention


def _inputs(b, t, h, dk, dv, channel=False):
    ks = jax.random.split(jax.random.PRNGKey(t), 6)
    q, k = (linear_attention.l2norm(jax.random.normal(x, (b, t, h, dk))) for x in ks[:2])
    v = jax.random.normal(ks[2], (b, t, h, dv))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, h) + (dk,) * channel))  # per head, or per key channel (KDA)
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h))).at[:, -2:].set(0.0)  # padding: beta = g = 0
    g = g.at[:, -2:].set(0.0)
    return q * dk**-0.5, k, v, g, beta, jax.random.normal(ks[5], (b, h, dk, dv))


# rows, tokens (not a power of two), heads, key dim, value dim; a decay per head, or per key channel (KDA: smaller,
# the interpreted kernel's cost)
@pytest.mark.parametrize("channel, shape", [(False, (2, 13, 3, 32, 16)), (True, (1, 9, 2, 16, 16))],
                         ids=["head-decay", "channel-decay"])
def test_kernel_matches_scan_and_ignores_chunking(channel, shape):
    interpret = jax.default_backend() != "gpu"
    q, k, v, g, beta, s0 = _inputs(*shape, channel=channel)
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


def test_kernel_without_the_subtraction_is_mamba2s_selective_scan():
    """recurrence(subtract=False) with C as queries, B as keys, x as values, dt as beta and dt * A as the
    log decay, its state transposed: Mamba2's selective state space (models/mamba2.py's scan), D * x added."""
    from jaxllm.models import mamba2

    b, t, h, p, n = 2, 9, 3, 16, 32
    ks = jax.random.split(jax.random.PRNGKey(1), 6)
    x, bm, cm = (jax.random.normal(k, s) for k, s in zip(ks[:3], [(b, t, h, p), (b, t, h, n), (b, t, h, n)]))
    dt = jax.nn.softplus(jax.random.normal(ks[3], (b, t, h))).at[:, -1].set(0.0)  # a padding token: dt 0
    a, d = -jnp.exp(jax.random.normal(ks[4], (h,))), jnp.arange(1.0, h + 1)
    s0 = jax.random.normal(ks[5], (b, h, p, n))
    want_y, want_state = mamba2.selective_scan(x, dt, a, bm, cm, d, s0)
    y, state = delta_rule_gpu.recurrence(cm, bm, x, dt * a, dt, jnp.swapaxes(s0, -1, -2), subtract=False,
                                         interpret=jax.default_backend() != "gpu")
    for got, want in ((y + d[:, None] * x, want_y), (jnp.swapaxes(state, -1, -2), want_state)):
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-5


@pytest.mark.parametrize("channel", [False, True], ids=["head-decay", "channel-decay"])
def test_chunked_form_matches_the_scan(channel):
    """linear_attention.gated_delta_rule over several chunks and a padded last one, from a state, equals the token by
    token scan: a decay per head (the gated DeltaNet) or per key channel (Kimi Delta Attention)."""
    q, k, v, g, beta, s0 = _inputs(2, 13, 3, 16, 8, channel=channel)
    with jax.default_matmul_precision("highest"):  # two float32 algorithms compared (a GPU's default takes TF32 products)
        want_out, want_state = linear_attention.recurrent_delta_rule(q, k, v, g, beta, s0)
        out, state = linear_attention.gated_delta_rule(q, k, v, g, beta, s0, chunk=4)
    for got, want in ((out, want_out), (state, want_state)):
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-5
