"""quantize_embeddings (the token embedding and output head in int8, models/quant.py TABLES): the
paths that build, load, save and export a model with quantized tables, beside tests/test_quant.py."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import reference
from gguf import GGMLQuantizationType, GGUFWriter, quants
from test_quant import _dequantized

import jaxllm
from jaxllm import convert, loader
from jaxllm.models import quant, weights

EMBEDDING, HEAD = ("model", "embed_tokens", "embedding"), ("lm_head", "kernel")


def _with_values(model: loader.LoadedModel, float_model: loader.LoadedModel) -> loader.LoadedModel:
    """`float_model` whose parameters hold the values `model`'s quantized ones stand for."""
    deq = _dequantized(model.params)
    flat = weights.flat_params(float_model.params)
    return loader.LoadedModel(float_model.config, float_model.graphdef, weights.unflatten_into(
        float_model.params, {p: jnp.asarray(deq.get(p, v)) for p, v in flat.items()}))


def _gguf(path: Path, embd: str, output: str | None) -> None:
    """A 1-layer Llama GGUF (hidden 64, vocab 96): token_embd stored as `embd`, an untied `output`
    tensor as `output` (None: tied), the layer's kernels Q4_0."""
    rng = np.random.default_rng(5)
    w = GGUFWriter(path, "llama")
    for key, value in dict(embedding_length=64, block_count=1, feed_forward_length=128, context_length=256,
                           vocab_size=96, **{"attention.head_count": 4, "attention.head_count_kv": 2}).items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)

    def add(name, shape, kind="F32"):
        x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if kind == "F32":
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quants.quantize(x, GGMLQuantizationType[kind]), raw_dtype=GGMLQuantizationType[kind])

    add("token_embd.weight", (96, 64), embd)
    add("output_norm.weight", (64,))
    if output is not None:
        add("output.weight", (96, 64), output)
    add("blk.0.attn_norm.weight", (64,))
    add("blk.0.ffn_norm.weight", (64,))
    for name, shape in dict(attn_q=(64, 64), attn_k=(32, 64), attn_v=(32, 64), attn_output=(64, 64),
                            ffn_gate=(128, 64), ffn_up=(128, 64), ffn_down=(64, 128)).items():
        add(f"blk.0.{name}.weight", shape, "Q4_0")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- GGUF files -------------------------------------------------------------------------------

@pytest.mark.parametrize("output, mode", [(None, "gguf"), (None, "int4"), ("Q8_0", "int4"), ("Q4_0", "int4"),
                                          ("Q4_0", "gguf")])
def test_gguf_tables_take_the_files_blocks_of_their_width(tmp_path, output, mode):
    """The tables are int8 (quant.TABLES) whatever the kernels' width, so a GGUF file's Q8_0
    token_embd and output load as their own blocks, bit-exact (as Q8_0 kernels do under
    quantize='int8'), not quantized a second time from their values; a Q4_0 output is int4 only
    under quantize='gguf' (the file's own blocks), else int8 like any table."""
    path = tmp_path / "tiny.gguf"
    _gguf(path, "Q8_0", output)
    ref = jaxllm.load(path, tokenizer=False)
    model = jaxllm.load(path, quantize=mode, quantize_embeddings=True, tokenizer=False)
    flat, want, deq = weights.flat_params(model.params), weights.flat_params(ref.params), _dequantized(model.params)
    tables = [EMBEDDING] + ([HEAD] if output else [])
    for path in tables:
        q, scale = flat[path], flat[path[:-1] + (quant.scale_names(path[-1])[0],)]
        if path == HEAD and output == "Q4_0" and mode == "gguf":
            assert q.dtype == jnp.int4 and scale.dtype == jnp.float16
        elif path == HEAD and output == "Q4_0":  # quantized as a table from the block's values
            assert q.dtype == jnp.int8 and scale.dtype == jnp.float32
            continue
        else:  # Q8_0 blocks as they are: groups of 32, the file's float16 scales
            assert q.dtype == jnp.int8 and scale.dtype == jnp.float16 and scale.shape == (96, 2), path
        assert np.array_equal(deq[path].view(np.uint32), np.asarray(want[path]).view(np.uint32)), path
    tokens = [[5, 6, 7, 8, 9, 10]]
    np.testing.assert_allclose(np.asarray(model.logits(tokens)), np.asarray(_with_values(model, ref).logits(tokens)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_dtype_is_not_a_tables_scale_dtype(tmp_path, dtype):
    """A GGUF Q8_0 output and embedding keep the file's float16 scales, and the head's scale was
    the first float leaf: model.dtype said float16, so the engine built a float16 KV cache for a
    float32 or bfloat16 model. The dtype the model computes in is its float parameters', scales aside."""
    path = tmp_path / "tiny.gguf"
    _gguf(path, "Q8_0", "Q8_0")
    model = jaxllm.load(path, dtype, quantize="int8", quantize_embeddings=True, tokenizer=False)
    assert model.params["lm_head"]["scale"].dtype == jnp.float16
    assert model.dtype == jnp.dtype(dtype)
    engine = jaxllm.Engine(model, batch_size=1, max_len=16)
    assert engine.runner.kv_dtype[0] == dtype


# -- converted folders ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(a tiny Gemma 2 HF folder: tied, scaled and soft-capped; its conversion with
    --quantize int4 --quantize-embeddings)."""
    root = tmp_path_factory.mktemp("tables")
    reference.build("Gemma2ForCausalLM", root / "hf", seed=2, hidden_size=256, num_hidden_layers=2)
    assert convert.main([str(root / "hf"), str(root / "int4"), "--quantize", "int4", "--quantize-embeddings"]) == 0
    return root / "hf", root / "int4"


def test_to_hf_refuses_quantize_embeddings(folders, tmp_path, capsys):
    """--to-hf writes float weights: --quantize-embeddings with it is refused in one line, as
    --quantize is (on a quantized converted folder it was dropped unsaid), and nothing is written."""
    capsys.readouterr()
    for src in folders:
        assert convert.main([str(src), str(tmp_path / "out"), "--to-hf", "--quantize-embeddings"]) == 2
        err = capsys.readouterr().err
        assert err == ("error: --quantize-embeddings writes jaxllm's own format: drop --to-hf "
                       "(Hugging Face files hold float weights)\n")
        assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
