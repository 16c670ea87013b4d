"""Mixture of experts: routing equals transformers', and the dispatch computes only the chosen
experts for each token (the grouped matmuls have tokens x k rows, not tokens x experts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import torch

import jaxllm

MOE = ["MixtralForCausalLM", "Qwen3MoeForCausalLM"]


@pytest.fixture(scope="module", params=MOE)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return reference.build(request.param, folder, seed=5), jaxllm.load(folder)


def _hf_router(ref):
    layer = ref.model.layers[0]
    block = getattr(layer, "block_sparse_moe", None) or layer.mlp
    return block.gate


def test_routing_matches_transformers(pair):
    ref, model = pair
    moe = model.module.model.layers[0].mlp
    x = np.random.default_rng(0).normal(size=(256, model.config.hidden_size)).astype(np.float32)
    weights, experts = (np.asarray(a) for a in moe.route(jnp.asarray(x)))
    with torch.no_grad():
        _, hf_weights, hf_experts = _hf_router(ref)(torch.as_tensor(x))
        probs = torch.softmax(torch.as_tensor(x) @ _hf_router(ref).weight.T, -1).numpy()
    # Only rows where the k-th and (k+1)-th probabilities are clearly apart: no top-k ties.
    k = model.config.experts_per_token
    top = -np.sort(-probs, axis=-1)
    clear = (top[:, k - 1] - top[:, k]) > 1e-4
    assert clear.sum() >= 200, "the test inputs should route unambiguously"
    np.testing.assert_array_equal(experts[clear], hf_experts.numpy()[clear])
    np.testing.assert_allclose(weights[clear], hf_weights.float().numpy()[clear], rtol=1e-5, atol=1e-7)
    assert np.allclose(weights.sum(-1), 1.0) == model.config.norm_topk_prob


def test_dispatch_computes_only_the_chosen_experts(pair):
    _, model = pair
    cfg = model.config
    moe = model.module.model.layers[0].mlp
    b, t = 4, 16
    x = jnp.zeros((b, t, cfg.hidden_size), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: moe(x))(x)
    grouped = [e for e in jaxpr.eqns if e.primitive.name.startswith("ragged_dot")]
    dense = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(grouped) == 3  # gate, up, down: each over the sorted (token, expert) assignments
    rows = {e.invars[0].aval.shape[0] for e in grouped}
    assert rows == {b * t * cfg.experts_per_token}, rows
    # The only dense matmul is the router's [tokens, embed] x [embed, experts].
    assert [e.outvars[0].aval.shape for e in dense] == [(b * t, cfg.num_experts)]
    f = cfg.moe_intermediate_size or cfg.intermediate_size
    flops = sum(2 * e.invars[0].aval.shape[0] * e.invars[0].aval.shape[1] * e.outvars[0].aval.shape[1] for e in grouped)
    assert flops == 2 * 3 * b * t * cfg.experts_per_token * cfg.hidden_size * f
    print(f"{cfg.architecture}: expert FLOPs {flops:,} = k/X = {cfg.experts_per_token}/{cfg.num_experts} of dense")


def test_sharded_experts_match_one_device(pair):
    """Expert kernels split over tp on their mlp axis (fsdp on embed) give the one-device logits."""
    _, model = pair
    sharded = jaxllm.load(model.path, mesh="fsdp=2,tp=4")
    kernel = sharded.params["model"]["layers"][0]["mlp"]["gate_proj"][...]
    assert tuple(kernel.sharding.spec) == (None, "fsdp", "tp")
    tokens = np.random.default_rng(1).integers(0, 128, (2, 20))
    assert reference.max_rel_diff(sharded.logits(tokens), model.logits(tokens)) <= 1e-5
