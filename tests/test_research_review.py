"""The research API as JAX research code uses it: composed with jit, grad, vmap and a mesh, fed
every form of token ids, and checked against transformers (gradients by torch autograd)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import jaxllm
from jaxllm import research

TOKENS = np.random.default_rng(2).integers(0, 128, (2, 12))
NAMES = ("logits", "token_logprobs", "hidden_states", "attention_weights")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    ref = reference.build("LlamaForCausalLM", path, seed=5)
    return jaxllm.load(path), ref


def call(name, model, tokens, pure=True):
    """research.<name>(graphdef, params, tokens) (pure, jitted) or model.<name>(tokens); layer 1 for attention."""
    extra = (1,) if name == "attention_weights" else ()
    if pure:
        return research.jitted(name)(model.graphdef, model.params, tokens, *extra)
    return getattr(model, name)(tokens, *extra)


@pytest.mark.parametrize("pure", (True, False), ids=("research", "method"))
def test_bad_token_lists_are_one_line_errors_everywhere(llama, pure):
    """Ragged rows and non-numbers are refused by name in the pure functions too, not by numpy's
    'inhomogeneous shape' ValueError."""
    model, _ = llama
    for name in NAMES:
        for bad in ([[1, 2], [3]], [[1, None]]):
            with pytest.raises(jaxllm.InputError, match="equally long lists"):
                call(name, model, bad, pure)


@pytest.mark.parametrize("pure", (True, False), ids=("research", "method"))
def test_one_sequence_gives_its_results_without_the_batch_axis(llama, pure):
    """[seq] is one sequence in every function and method alike (the methods took it as [1, seq],
    the pure functions refused it): its results are the batch's row, without the batch axis."""
    model, _ = llama
    for name in NAMES:
        batch = jax.tree.leaves(call(name, model, TOKENS, pure))
        for row, ids in ((0, TOKENS[0].tolist()), (1, jnp.asarray(TOKENS[1], jnp.uint8))):
            one = jax.tree.leaves(call(name, model, ids, pure))
            assert [x.shape for x in one] == [x.shape[1:] for x in batch], name
            for x, y in zip(one, batch):
                assert reference.max_rel_diff(x, y[row]) <= 1e-5, name
        with pytest.raises(jaxllm.InputError, match=r"must be \[batch, seq\] or \[seq\] with seq >= 1, got shape \(0,\)"):
            call(name, model, [], pure)


def test_vmap_over_sequences_gives_the_batch_results(llama):
    """jax.vmap over a batch of [seq] rows, inside a jit over the params, is the batched call."""
    model, _ = llama

    def each(params, ids):
        return [research.logits(model.graphdef, params, ids), research.token_logprobs(model.graphdef, params, ids),
                research.hidden_states(model.graphdef, params, ids), research.attention_weights(model.graphdef, params, ids, 1)]

    got = jax.jit(jax.vmap(each, in_axes=(None, 0)))(model.params, jnp.asarray(TOKENS))
    for name, out in zip(NAMES, got):
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(call(name, model, TOKENS))):
            assert reference.max_rel_diff(x, y) <= 1e-5, name
