"""The research API as JAX research code uses it: composed with jit, grad, vmap and a mesh, fed
every form of token ids, and checked against transformers (gradients by torch autograd)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import torch

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
        # numpy int64 and a list (the methods) or a JAX uint8 array: one compiled shape (int32 [12])
        for row, ids in ((0, TOKENS[0] if pure else TOKENS[0].tolist()), (1, jnp.asarray(TOKENS[1], jnp.int32 if pure else jnp.uint8))):
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


PADDED = np.random.default_rng(3).integers(0, 128, (2, 16))
MASK = np.array([[0] * 3 + [1] * 13, [1] * 11 + [0] * 5])  # left padding (13 tokens: past the window of 8), right padding


@pytest.mark.parametrize("arch", ("Gemma2ForCausalLM", "GPT2LMHeadModel", "GlmMoeDsaForCausalLM"))
def test_padded_batches_match_transformers_and_each_row_alone(arch, tmp_path):
    """attention_mask as transformers takes it (with its generate's position_ids: each row's tokens
    counted from 0), left and right padding in one batch: at the tokens, every function equals
    transformers' output and the row scored alone. Gemma 2: a sliding window (layer 0), soft caps
    and grouped kv heads; GPT-2: learned positions; GLM-5: sparse attention, whose indexer never selects padding (5 keys
    of the row's own, where more precede). The four in one jit, as research code runs them."""
    ref = reference.build(arch, tmp_path, seed=7)
    model = jaxllm.load(tmp_path)
    gd, keep = model.graphdef, MASK.astype(bool)
    positions = np.maximum(np.cumsum(MASK, 1) - 1, 0)
    with torch.no_grad():
        out = ref(torch.as_tensor(PADDED), attention_mask=torch.as_tensor(MASK), position_ids=torch.as_tensor(positions),
                  output_hidden_states=True, output_attentions=True)

    @jax.jit
    def every(params, ids, mask):
        return (research.hidden_states(gd, params, ids, attention_mask=mask), research.logits(gd, params, ids, attention_mask=mask),
                research.attention_weights(gd, params, ids, 0, attention_mask=mask),
                research.token_logprobs(gd, params, ids, attention_mask=mask))

    hidden, logits, weights, logprobs = jax.tree.map(np.asarray, every(model.params, PADDED, MASK))
    for i, (ours, theirs) in enumerate(zip(hidden, out.hidden_states, strict=True)):
        assert reference.max_rel_diff(ours[keep], theirs.numpy()[keep]) <= 1e-5, f"hidden state {i}"
    assert reference.max_rel_diff(logits[keep], out.logits.numpy()[keep]) <= 1e-5
    rows = np.broadcast_to(keep[:, None, :, None], weights.shape)  # the tokens' queries
    assert reference.max_rel_diff(weights[rows], out.attentions[0].numpy()[rows]) <= 1e-5
    assert (weights[np.broadcast_to(~keep[:, None, None, :], weights.shape)] == 0).all()  # padding is never attended
    if arch == "Gemma2ForCausalLM":  # the window of 8 bites: row 0's last token (position 12) sees positions 5..12
        assert (weights[0, :, -1, 3:8] == 0).all() and (weights[0, :, -1, 8:] > 0).all()
    if arch == "GlmMoeDsaForCausalLM":  # the last token of each row reads its index_topk (5) selected keys
        assert ((weights[0, :, -1] > 0).sum(-1) == 5).all() and ((weights[1, :, 10] > 0).sum(-1) == 5).all()
    logp = torch.log_softmax(out.logits[:, :-1].double(), -1).gather(-1, torch.as_tensor(PADDED)[:, 1:, None])[..., 0].numpy()
    pairs = keep[:, 1:] & keep[:, :-1]
    assert np.abs(logprobs[pairs] - logp[pairs]).max() <= 1e-4 and (logprobs[~pairs] == 0).all()
    assert reference.max_rel_diff(logits[0, 3:], model.logits(PADDED[0, 3:])) <= 1e-5  # the left-padded row alone


@pytest.mark.parametrize("arch", ("Lfm2ForCausalLM", "GraniteMoeHybridForCausalLM", "RecurrentGemmaForCausalLM"))
def test_recurrent_layers_keep_padding_out_of_their_state(arch, tmp_path):
    """A padded batch through recurrent layers whose conv input has a bias term (LFM2's conv_bias, Granite
    4.0-H's mamba_proj_bias, RecurrentGemma's linear_x): each row equals the row alone, its padding feeding the convs and
    states nothing (transformers zeroes only the layer's input there, which leaves the biases in its convs), the RG-LRU
    resetting at the row's first real token."""
    reference.build(arch, tmp_path)
    model = jaxllm.load(tmp_path)
    logits = np.asarray(model.logits(PADDED, attention_mask=MASK))
    assert reference.max_rel_diff(logits[0, 3:], model.logits(PADDED[0, 3:])) <= 1e-5  # left padding
    assert reference.max_rel_diff(logits[1, :11], model.logits(PADDED[1, :11])) <= 1e-5  # right padding


def test_methods_take_the_mask_and_refuse_a_bad_one_in_one_line(llama):
    """The methods pass attention_mask on (a list, for one sequence [seq] too); a mask of another
    shape, of floats or ragged is refused naming the fix, by the methods and the pure functions."""
    model, _ = llama
    mask = [0, 0] + [1] * 10
    np.testing.assert_allclose(model.token_logprobs(TOKENS[0], attention_mask=mask)[2:], model.token_logprobs(TOKENS[0, 2:]),
                               rtol=1e-5, atol=1e-5)
    assert (np.asarray(model.token_logprobs(TOKENS[0], attention_mask=mask))[:2] == 0).all()
    for pure in (True, False):
        for bad, match in ((np.ones((2, 11), int), r"the shape of the token ids \(2, 12\), got \(2, 11\)"),
                           (np.ones((2, 12), np.float32), "integers or bools; got float32"), ([[1] * 12, [1]], "equally long lists")):
            with pytest.raises(jaxllm.InputError, match=rf"attention_mask .*{match}"):
                if pure:
                    research.hidden_states(model.graphdef, model.params, TOKENS, attention_mask=bad)
                else:
                    model.attention_weights(TOKENS, 0, attention_mask=bad)


def test_grad_through_the_logits_matches_torch_autograd_and_takes_edited_params(llama):
    """jax.grad of a loss through research.token_logprobs w.r.t. the params: finite, equal to torch
    autograd of the same loss (float32); a modified pytree (scaled params) is used as given."""
    model, ref = llama
    gd, ids = model.graphdef, jnp.asarray(TOKENS)

    def loss(params):
        return -research.token_logprobs(gd, params, ids).sum()

    grad = jax.jit(jax.value_and_grad(loss))
    value, grads = grad(model.params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    ref.zero_grad()
    theirs = -torch.log_softmax(ref(torch.as_tensor(TOKENS)).logits[:, :-1], -1).gather(-1, torch.as_tensor(TOKENS)[:, 1:, None]).sum()
    theirs.backward()
    assert abs(float(value) - theirs.item()) <= 1e-4 * abs(theirs.item())
    attn = ref.model.layers[1].self_attn
    for ours, want in ((grads["model"]["embed_tokens"]["embedding"], ref.model.embed_tokens.weight.grad),
                       (grads["model"]["layers"][1]["self_attn"]["q_proj"]["kernel"], attn.q_proj.weight.grad)):
        assert reference.max_rel_diff(np.asarray(ours).reshape(want.shape), want.numpy()) <= 1e-4
    with torch.no_grad():  # half the weights: the loss of the pytree given, through the same compiled grad
        for p in ref.parameters():
            p.mul_(0.5)
        want = -torch.log_softmax(ref(torch.as_tensor(TOKENS)).logits[:, :-1], -1).gather(-1, torch.as_tensor(TOKENS)[:, 1:, None]).sum()
        for p in ref.parameters():
            p.mul_(2.0)
    value_half, _ = grad(jax.tree.map(lambda x: x * 0.5, model.params))
    assert abs(float(value_half) - want.item()) <= 1e-4 * abs(want.item()) and abs(want.item() - theirs.item()) > 1
