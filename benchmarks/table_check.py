"""The quantized output head on a GPU (quantize_embeddings): quant.product on head-shaped kernels
[vocab, hidden] (int8, symmetric groups of 128: quant.TABLES) at the row counts decode meets, each
form it takes (1 row: grouped_product; up to 16: Triton; 17..64: the Hopper kernel on sm_90) against
the float32 product of the dequantized table; and a quantized model's greedy tokens and logits with
the tables quantized against the same model whose tables were dequantized into floats.

    python benchmarks/table_check.py
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import runtime
from jaxllm.engine import Engine, Request
from jaxllm.loader import LoadedModel
from jaxllm.models import quant, weights
from jaxllm.random_model import random_model
from jaxllm.sampling import SamplingParams


def products():
    key = jax.random.PRNGKey(0)
    for vocab, hidden in ((128256, 4096), (151936, 1024), (50257, 768)):
        q = jax.random.randint(key, (vocab, hidden), -127, 128, jnp.int32).astype(jnp.int8)
        s = jnp.full((vocab, hidden // 128 if hidden % 128 == 0 else 1), 0.02 / 64, jnp.bfloat16)
        w = quant.dequantize(q, s, None, jnp.float32)
        for rows in (1, 8, 16, 33, 64):
            x = jax.random.normal(jax.random.fold_in(key, rows), (rows, hidden), jnp.float32).astype(jnp.bfloat16)
            got = jax.jit(lambda x, q, s: quant.product(x, q, s, None, 1))(x, q, s)
            form = "dequantize-then-dot" if got is None else "quant.product"
            if got is None:
                got = x @ quant.dequantize(q, s, None, jnp.bfloat16).T
            ref = x.astype(jnp.float32) @ w.T
            err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
            print(json.dumps(dict(vocab=vocab, hidden=hidden, rows=rows, form=form, rel_err=round(err, 5))), flush=True)


def model_check(shape: str):
    """Greedy tokens of 8 prompts (batch 8 and one at a time) with int8 tables, against the model
    whose tables hold the dequantized values as bf16 floats (the same weights)."""
    m = random_model(shape, dtype="bfloat16", quantize="int8", quantize_embeddings=True)
    flat = weights.flat_params(m.params)
    floats = dict(flat)
    for path in [p for p in flat if p[-1] == "embedding" or p == ("lm_head", "kernel")]:
        if quant.is_quantized(flat[path].dtype):
            scale = flat[path[:-1] + quant.scale_names(path[-1])[:1]] if path[-1] == "kernel" else flat[path[:-1] + ("embedding_scale",)]
            floats[path] = quant.dequantize(flat[path], scale, None, jnp.bfloat16)
            floats.pop(path[:-1] + (quant.scale_names(path[-1])[0],))
    ref_model = random_model(shape, dtype="bfloat16", quantize="int8")
    ref_flat = weights.flat_params(ref_model.params)
    ref = LoadedModel(ref_model.config, ref_model.graphdef,
                      weights.unflatten_into(ref_model.params, {p: floats[p] for p in ref_flat}), None, {}, None, None,
                      quantize="int8")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, m.config.vocab_size, int(n)).tolist() for n in rng.integers(5, 200, 8)]
    params = SamplingParams(max_new_tokens=32, ignore_eos=True).resolved()
    outs = {}
    for name, model in (("tables int8", m), ("tables dequantized", ref)):
        e = Engine(model, batch_size=8, max_len=512, num_pages=8 * 32)
        got = {}
        for ev in e.run([Request(p, params, index=i) for i, p in enumerate(prompts)]):
            got.setdefault(ev.index, []).extend(ev.tokens)
        outs[name] = got
        logits = np.asarray(model.logits(np.asarray([prompts[0][:5]])), np.float32)
        outs[name + " logits"] = logits
    a, b = outs["tables int8"], outs["tables dequantized"]
    first_same = sum(a[i][0] == b[i][0] for i in a)
    agree = np.mean([np.mean(np.asarray(a[i]) == np.asarray(b[i])) for i in a])
    la, lb = outs["tables int8 logits"], outs["tables dequantized logits"]
    print(json.dumps(dict(shape=shape, params_bytes=int(sum(quant.bytes_of(x) for x in jax.tree.leaves(m.params))),
                          first_tokens_equal=f"{first_same}/8", token_agreement=round(float(agree), 3),
                          logits_rel_err=round(float(np.abs(la - lb).max() / np.abs(lb).max()), 5))), flush=True)


def head_check(shape: str):
    """The tied or untied head alone on a quantized model's own final hidden states (5 positions):
    the quantized product, the bf16 product of the dequantized table and both against float32."""
    m = random_model(shape, dtype="bfloat16", quantize="int8", quantize_embeddings=True)
    flat = weights.flat_params(m.params)
    path = ("lm_head", "kernel") if ("lm_head", "kernel") in flat else ("model", "embed_tokens", "embedding")
    q, s = flat[path], flat[path[:-1] + (quant.scale_names(path[-1])[0],)]
    rng = np.random.default_rng(0)
    h = m.hidden_states(np.asarray([rng.integers(1, m.config.vocab_size, 5)]))[-1]
    ref = h.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T
    got = jax.jit(lambda x, q, s: quant.product(x, q, s, None, 1))(h, q, s).astype(jnp.float32)
    bf = (h @ quant.dequantize(q, s, None, jnp.bfloat16).T).astype(jnp.float32)
    top = float(jnp.max(jnp.abs(ref)))
    print(json.dumps(dict(shape=shape, head=path[0], quantized_vs_f32=round(float(jnp.max(jnp.abs(got - ref))) / top, 5),
                          bf16_vs_f32=round(float(jnp.max(jnp.abs(bf - ref))) / top, 5),
                          argmax_equal=bool(jnp.all(jnp.argmax(got, -1) == jnp.argmax(ref, -1))))), flush=True)


if __name__ == "__main__":
    runtime.set_gpu_flags()
    products()
    for shape in ("qwen3-0.6b", "llama3-8b"):
        head_check(shape)
        model_check(shape)
