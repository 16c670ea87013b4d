"""jaxllm's stand-in tokenizer (jaxllm.tokenizing) decodes what transformers' decodes, ids in any form."""

import jax.numpy as jnp
import numpy as np

from jaxllm import tokenizing


def test_decode_takes_ids_as_transformers_does(smollm2):
    """A 0-d array is one id (as np.int64 is), not an iteration over a 0-d array."""
    ref = smollm2.transformers
    for ids in (9690, np.int64(9690), np.array(9690), np.array([9690, 28]), [9690, 28], (9690, 28), np.array([], np.int64)):
        for skip in (False, True):
            assert smollm2.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    assert smollm2.decode(jnp.asarray(9690)) == smollm2.decode(jnp.asarray([9690])) == ref.decode(9690)


def test_a_tokenizer_json_saved_with_truncation_and_padding_encodes_as_transformers_does(tmp_path):
    """transformers turns a tokenizer.json's own truncation and padding off for every call that
    does not ask for them; the backend alone applied them: a prompt cut to 4 tokens and 8 pads."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(["hello world this is a test of truncation and padding"] * 10,
                                trainers.BpeTrainer(special_tokens=["<unk>", "<pad>", "<s>"], vocab_size=100))
    backend.enable_truncation(max_length=4)
    backend.enable_padding(length=12, pad_id=1, pad_token="<pad>")
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    text = "hello world this is a test of truncation"
    ours = [tokenizing.wrap(PreTrainedTokenizerFast.from_pretrained(tmp_path))]
    want = PreTrainedTokenizerFast.from_pretrained(tmp_path)(text)["input_ids"]
    assert len(want) == 8
    for tok in ours:
        assert isinstance(tok, tokenizing.Tokenizer)
        assert tok.encode(text) == tok(text)["input_ids"] == want
