"""The research API as JAX research code uses it: composed with jit, grad, vmap and a mesh, fed
every form of token ids, and checked against transformers (gradients by torch autograd)."""

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
    """research.<name>(graphdef, params, tokens) (pure) or model.<name>(tokens); layer 1 for attention."""
    extra = (1,) if name == "attention_weights" else ()
    if pure:
        return getattr(research, name)(model.graphdef, model.params, tokens, *extra)
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
