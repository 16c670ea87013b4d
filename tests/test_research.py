"""The research API (hidden states, attention weights, token log-probabilities) against transformers'
output_hidden_states / output_attentions (eager attention), for every architecture."""

import jax
import numpy as np
import pytest
import reference
import torch

import jaxllm
from jaxllm.models import registry

TOL = 1e-4
TOKENS = np.random.default_rng(1).integers(0, 128, (2, 20))  # longer than the tiny sliding windows (8)


@pytest.mark.parametrize("arch", registry.names())
def test_hidden_states_attention_and_logprobs_match_transformers(arch, tmp_path):
    ref = reference.build(arch, tmp_path, seed=11)
    model = jaxllm.load(tmp_path)
    with torch.no_grad():
        out = ref(torch.as_tensor(TOKENS), output_hidden_states=True, output_attentions=True)
    hidden = model.hidden_states(TOKENS)
    assert len(hidden) == len(out.hidden_states) == model.config.num_layers + 1
    for i, (ours, theirs) in enumerate(zip(hidden, out.hidden_states)):
        assert reference.max_rel_diff(ours, theirs.numpy()) <= TOL, f"hidden state {i}"
    # transformers records the attention layers' weights alone; a recurrent or feed-forward layer's are refused in one line
    cfg = model.config
    full = [i for i in range(cfg.num_layers) if cfg.layer_is_attention(i)]
    for other, kind in ((cfg.layer_is_recurrent, "recurrent"), (lambda i: not cfg.layer_has_mixer(i), "feed-forward")):
        layer = next(filter(other, range(cfg.num_layers)), None)
        if layer is not None:
            with pytest.raises(jaxllm.InputError, match=f"layer {layer} is a {kind}"):
                model.attention_weights(TOKENS, layer)
    # (MiniMax records its lightning layers too, their [head dim, head dim] states: there the attention layers' are by layer)
    recorded = full if not full or len(out.attentions) == len(full) else list(range(cfg.num_layers))
    for layer in (full[0], full[-1]) if full else ():  # none in Mamba
        ours = model.attention_weights(TOKENS, layer)
        theirs = out.attentions[recorded.index(layer)].numpy()
        assert ours.shape == theirs.shape == (2, model.config.num_heads, 20, 20)
        assert reference.max_rel_diff(ours, theirs) <= TOL, f"attention of layer {layer}"  # the logits' tolerance
    logp = torch.log_softmax(out.logits[:, :-1].double(), -1).gather(-1, torch.as_tensor(TOKENS)[:, 1:, None])[..., 0]
    assert np.abs(np.asarray(model.token_logprobs(TOKENS)) - logp.numpy()).max() <= 1e-4


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
