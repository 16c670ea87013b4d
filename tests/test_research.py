"""The research API (hidden states, attention weights, token log-probabilities): windows, refusals,
sharding and the pure functions' arguments. (Every architecture's values against transformers'
output_hidden_states / output_attentions: tests/test_parity.py.)"""

import jax
import numpy as np
import pytest
import reference

import jaxllm

TOL = 1e-4
TOKENS = np.random.default_rng(1).integers(0, 128, (2, 20))  # longer than the tiny sliding windows (8)


def test_sliding_window_shows_in_the_attention_weights(tmp_path):
    """Mistral's window is 8: a query never attends further back than 7 tokens."""
    reference.build("MistralForCausalLM", tmp_path)
    weights = np.asarray(jaxllm.load(tmp_path).attention_weights(TOKENS, 0))
    q, k = np.indices((20, 20))
    assert (weights[..., (k > q) | (k <= q - 8)] == 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_bad_layer_and_tokens_are_one_line_errors(tmp_path):
    reference.build("LlamaForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    with pytest.raises(jaxllm.InputError, match="layer 3 does not exist: this model has layers 0..2"):
        model.attention_weights(TOKENS, 3)
    with pytest.raises(jaxllm.InputError, match="must lie in"):
        model.hidden_states([[1, 500]])
    with pytest.raises(jaxllm.InputError, match="seq >= 1"):
        model.token_logprobs(np.zeros((1, 0), int))
    assert np.asarray(model.attention_weights(TOKENS, -1)).shape == (2, 4, 20, 20)
    # numpy and JAX integer scalars name a layer as an int does
    for layer in (np.int64(1), jax.numpy.int32(1)):
        np.testing.assert_array_equal(model.attention_weights(TOKENS, layer), model.attention_weights(TOKENS, 1))


def test_research_functions_run_sharded(tmp_path):
    reference.build("Qwen3ForCausalLM", tmp_path)
    one, sharded = jaxllm.load(tmp_path), jaxllm.load(tmp_path, mesh="dp=2,tp=4")
    assert reference.max_rel_diff(sharded.hidden_states(TOKENS)[-1], one.hidden_states(TOKENS)[-1]) <= TOL
    assert reference.max_rel_diff(sharded.attention_weights(TOKENS, 1), one.attention_weights(TOKENS, 1)) <= TOL


def test_pure_functions_take_token_lists_and_refuse_float_ids_in_one_line(tmp_path):
    """jaxllm.research checks what it can see at trace time: a list of ids is an array of them, and
    ids of a float or bool dtype are refused by name (not JAX's 'indices must have an integer type')."""
    from jaxllm import research

    reference.build("LlamaForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    gd, params = model.graphdef, model.params
    ids = jax.numpy.asarray(TOKENS)
    np.testing.assert_array_equal(research.logits(gd, params, TOKENS.tolist()), research.logits(gd, params, ids))
    np.testing.assert_array_equal(research.token_logprobs(gd, params, TOKENS.tolist()), research.token_logprobs(gd, params, ids))
    for bad, kind in ((np.ones((1, 4), np.float32), "float32"), (jax.numpy.ones((1, 4), bool), "bool")):
        for name in ("logits", "token_logprobs", "hidden_states"):
            with pytest.raises(jaxllm.InputError, match=f"tokens must be integer token ids, got {kind}"):
                getattr(research, name)(gd, params, bad)


def test_pure_attention_weights_checks_its_layer_in_one_line(tmp_path):
    """The layer is static (static_argnums=(0, 3)): out of range, not an integer, or traced by a jit
    that did not make it static, it is refused naming the fix; numpy integers name a layer as ints do."""
    from jaxllm import research

    reference.build("LlamaForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    gd, params = model.graphdef, model.params
    expect = np.asarray(research.attention_weights(gd, params, TOKENS, 1))
    np.testing.assert_array_equal(research.attention_weights(gd, params, TOKENS, np.int64(1)), expect)
    np.testing.assert_array_equal(research.attention_weights(gd, params, TOKENS, -2), expect)
    for layer in (3, -4):
        with pytest.raises(jaxllm.InputError, match=f"layer {layer} does not exist: this model has layers 0..2"):
            research.attention_weights(gd, params, TOKENS, layer)
    with pytest.raises(jaxllm.InputError, match="layer must be a whole number"):
        research.attention_weights(gd, params, TOKENS, 1.0)
    with pytest.raises(jaxllm.InputError, match=r"static_argnums=\(0, 3\)"):
        jax.jit(research.attention_weights, static_argnums=0)(gd, params, TOKENS, 1)


def test_pure_functions_name_a_wrong_graphdef_or_params_in_one_line(tmp_path):
    """The model, its module or the params where the graphdef goes (or params of another model) are
    refused naming the call to make, not with flax's TypeError that prints the whole parameter tree."""
    from jaxllm import research

    reference.build("LlamaForCausalLM", tmp_path / "llama")
    reference.build("Qwen3ForCausalLM", tmp_path / "qwen")
    model, other = jaxllm.load(tmp_path / "llama"), jaxllm.load(tmp_path / "qwen")
    for graphdef, params, got in ((model, model.params, "LoadedModel"), (model.module, model.params, "CausalLM"),
                                  (model.params, model.graphdef, "State")):
        with pytest.raises(jaxllm.InputError, match=rf"^graphdef must be model.graphdef \(an nnx.GraphDef\), got {got}: "
                                                    r"pass \(model.graphdef, model.params, tokens\)$"):
            research.logits(graphdef, params, TOKENS)
    for params in (other.params, {}):
        with pytest.raises(jaxllm.InputError, match=r"^params do not fit graphdef \(Incorrect number of leaves.*\): pass the "
                                                    "params of the model the graphdef comes from"):
            research.hidden_states(model.graphdef, params, TOKENS)
