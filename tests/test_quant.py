"""Quantized weights (models/quant.py): the quantizer's error bound, quantized tiny models against
their float selves, sharding of the scales, the converted format's round trip, GGUF blocks taken
bit-exactly, one-line errors, and perplexity on the real SmolLM2-135M-Instruct model."""

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, quants
from jax.sharding import PartitionSpec as P

import jaxllm
from jaxllm import convert, gguf, gguf_families, loader
from jaxllm.errors import CheckpointError, ConfigError, JaxllmError
from jaxllm.models import quant, registry, weights
from jaxllm.random_model import random_model

TINY = dict(registry.get("LlamaForCausalLM").tiny_config, architectures=["LlamaForCausalLM"])
TEXT = Path(__file__).parent / "data" / "public_domain.txt"  # Declaration of Independence + Gettysburg Address


def _float_model(raw: dict, seed: int) -> loader.LoadedModel:
    """A float32 model of config `raw` with N(0, 0.02) weights and unit norms, drawn by numpy
    (random_model compiles one small program per shape: seconds on a loaded 2-core machine)."""
    p = loader.plan(raw)
    rng = np.random.default_rng(seed)
    filled = {path: jnp.ones(leaf.shape, leaf.dtype) if len(leaf.shape) == 1 else
              jnp.asarray((rng.standard_normal(leaf.shape) * 0.02).astype(np.float32))
              for path, leaf in weights.flat_params(p.abstract).items()}
    return loader.LoadedModel(p.config, p.graphdef, weights.unflatten_into(p.abstract, filled))


def _dequantized(params) -> dict:
    """{path: float32 numpy} of every kernel, quantized ones dequantized on the host."""
    flat = weights.flat_params(params)
    out = {}
    for path, value in flat.items():
        if quant.is_quantized(value.dtype):
            scale, offset = (flat.get(path[:-1] + (n,)) for n in quant.scale_names(path[-1]))
            out[path] = quant.dequantize_array(np.asarray(value), np.asarray(scale),
                                               None if offset is None else np.asarray(offset),
                                               None if path[-1] == "kernel" else 1)
    return out


# -- the quantizer ----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_shape, n_in, groups, lead, dtype", [
    ((24, 64), 1, 4, (1, 1), jnp.int8),        # q_proj-like, one decode row
    ((4, 6, 64), 1, 2, (3, 5), jnp.int8),      # out dims (heads, head_dim): 15 rows
    ((64, 4, 16), 2, 8, (2, 1), jnp.int8),     # o_proj-like: two input dims grouped across heads
    ((96, 64), 1, 2, (1, 1), jnp.int4),        # gate/up-like int4 (packed two to a byte)
])
@pytest.mark.parametrize("with_offset", [False, True])
def test_grouped_product_is_the_dequantized_product(kernel_shape, n_in, groups, lead, dtype, with_offset):
    """Decode's grouped contraction (no float kernel built) equals dequantize-then-tensordot."""
    rng = np.random.default_rng(3)
    n_out = len(kernel_shape) - n_in
    bound = 128 if dtype == jnp.int8 else 8
    kernel = jnp.asarray(rng.integers(-bound, bound, kernel_shape), dtype)
    scale = jnp.asarray(rng.uniform(0.001, 0.01, kernel_shape[:n_out] + (groups,)), jnp.float32)
    offset = jnp.asarray(rng.normal(0, 0.01, scale.shape), jnp.float32) if with_offset else None
    x = jnp.asarray(rng.normal(0, 1, lead + kernel_shape[n_out:]), jnp.float32)
    got = quant.grouped_product(x, kernel, scale, offset, n_in)
    w = quant.dequantize(kernel, scale, offset, jnp.float32)
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_out, kernel.ndim)))
    want = jnp.tensordot(x, w, axes=axes, precision="highest")
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("dtype, group, kernel_shape, n_in", [
    (jnp.int8, 128, (64, 1024), 1), (jnp.int8, 128, (4, 16, 1024), 1),  # Dense [out, in]; q_proj-like [H, D, E]
    (jnp.int8, 128, (64, 8, 128), 2), (jnp.int4, 32, (64, 1024), 1)])    # o_proj-like [E, H, D]; int4
def test_gpu_forms_equal_the_dequantized_product(monkeypatch, dtype, group, kernel_shape, n_in):
    """quant.product's GPU forms, here on the CPU (the Pallas kernel in interpret mode): one row
    contracts per group, 3 and 20 rows go through qmatmul's two tilings, 100 rows are left to
    dequantize-then-dot (None); each equals the dequantized product."""
    from jaxllm.models import quant_kernels

    monkeypatch.setattr(quant, "_on_gpu", lambda: True)
    monkeypatch.setattr(quant, "_one_device", lambda: True)
    kernel_call = quant_kernels.qmatmul
    calls = []
    monkeypatch.setattr(quant_kernels, "qmatmul", lambda *a, **kw: calls.append(kw) or kernel_call(*a, **kw, interpret=True))
    rng = np.random.default_rng(5)
    n_out = len(kernel_shape) - n_in
    lo = -128 if dtype == jnp.int8 else -8
    kernel = jnp.asarray(rng.integers(lo, -lo, kernel_shape), dtype)
    scale = jnp.asarray(rng.uniform(0.001, 0.01, kernel_shape[:n_out] + (math.prod(kernel_shape[n_out:]) // group,)), jnp.float32)
    offset = jnp.asarray(rng.normal(0, 0.01, scale.shape), jnp.float32)
    w = quant.dequantize(kernel, scale, offset, jnp.float32)
    for rows in (1, 3, 20, 100):
        x = jnp.asarray(rng.normal(0, 1, (rows,) + kernel_shape[n_out:]), jnp.float32)
        got = quant.product(x, kernel, scale, offset, n_in)
        if rows > quant_kernels.MAX_ROWS:
            assert got is None
            continue
        want = jnp.tensordot(x, w, axes=(tuple(range(1, 1 + n_in)), tuple(range(n_out, kernel.ndim))), precision="highest")
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    assert [kw["bm"] for kw in calls] == [16, 64]  # 3 and 20 rows: the kernel; 1 row: grouped


@pytest.mark.parametrize("per_group", [True, False])
def test_float16_int8_kernel_equals_the_dequantized_product(monkeypatch, per_group):
    """qmatmul16 (symmetric int8, float16 products) in interpret mode on bfloat16 rows, as decode
    feeds it: x is exact in float16 (X_SHIFT is a power of two), so per group (float32 scales) the
    product is the dequantized one; with the scales applied in float16 each weight is rounded once
    (relative 2^-11), which bounds the error by 2^-11 |x| . |w|. quant.product sends symmetric int8
    of 2..64 rows to it (thresholds lowered to this kernel's 64 outputs)."""
    from jaxllm.models import quant_kernels

    rng = np.random.default_rng(7)
    kernel = jnp.asarray(rng.integers(-127, 128, (64, 1024)), jnp.int8)
    scale = jnp.asarray(rng.uniform(1e-4, 1e-2, (64, 8)), jnp.bfloat16)
    w = quant.dequantize(kernel, scale, None, jnp.float32)
    x = jnp.asarray(rng.normal(0, 3, (20, 1024)), jnp.bfloat16)
    want = jnp.dot(x.astype(jnp.float32), w.T, precision="highest")
    bound = 2.0 ** -11 * jnp.dot(jnp.abs(x.astype(jnp.float32)), jnp.abs(w).T, precision="highest")
    got = quant_kernels.qmatmul16(x, kernel, scale, bm=16, bn=32, bk=256, splits=2, per_group=per_group, interpret=True)
    err = jnp.abs(got.astype(jnp.float32) - want)
    slack = 2.0 ** -8 * jnp.abs(want) + 1e-6  # the result's own rounding to bfloat16
    assert bool(jnp.all(err <= (slack if per_group else bound + slack))), float(jnp.max(err - bound - slack))

    monkeypatch.setattr(quant, "_on_gpu", lambda: True)
    monkeypatch.setattr(quant, "_one_device", lambda: True)
    monkeypatch.setattr(quant_kernels, "TILINGS16", ((16, 64, (16, 32, 256, 4, 3, 4, True)), (64, 64, (64, 32, 256, 4, 3, 2, False))))
    calls, kernel16 = [], quant_kernels.qmatmul16
    monkeypatch.setattr(quant_kernels, "qmatmul16", lambda *a, **kw: calls.append(kw["bm"]) or kernel16(*a, **kw, interpret=True))
    for rows in (3, 20):
        got = quant.product(x[:rows], kernel, scale, None, 1)
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want[:rows]) - bound[:rows] - slack[:rows])) <= 0
    assert calls == [16, 64]
    # float32 rows would lose bits in float16: they keep qmatmul (dequantized in float32)
    plain = quant_kernels.qmatmul
    monkeypatch.setattr(quant_kernels, "qmatmul", lambda *a, **kw: calls.append("qmatmul") or plain(*a, **kw, interpret=True))
    quant.product(x[:3].astype(jnp.float32), kernel, scale, None, 1)
    assert calls == [16, 64, "qmatmul"]


@pytest.mark.parametrize("rows, n, k", [(17, 256, 512), (64, 128, 1024)])
def test_hopper_int8_kernel_lowers_for_cuda(rows, n, k):
    """quant_hopper.qmatmul runs only on Hopper GPUs (Mosaic GPU has no interpret mode; checked on
    an H200 against the float32 product by benchmarks/quant_hopper_probe.py). Here: it traces and
    Mosaic GPU's layout inference and lowering for sm_90 accept it (both run at lowering time), for
    padded and full row tiles and K splits, into one Mosaic GPU call."""
    from jaxllm.models import quant_hopper

    x = jax.ShapeDtypeStruct((rows, k), jnp.bfloat16)
    q = jax.ShapeDtypeStruct((n, k), jnp.int8)
    scale = jax.ShapeDtypeStruct((n, k // 128), jnp.bfloat16)
    fn = functools.partial(quant_hopper.qmatmul, splits=2, cores=132)
    text = jax.jit(fn).trace(x, q, scale).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("custom_call @mosaic_gpu") == 1 and f"tensor<{rows}x{n}xbf16>" in text


def test_hopper_int8_kernel_takes_the_products_it_measured_faster_on(monkeypatch):
    """quant_kernels.matmul sends symmetric int8 products of 17..64 bfloat16 rows with at least
    4,096 outputs to quant_hopper on Hopper GPUs (the Llama-3-8B products at 64 rows, docs/
    benchmarks.md session 19), K split until the work items about fill the multiprocessors;
    fewer rows, fewer outputs, float16 rows, other GPUs and groups a tile cannot sit inside keep
    the Triton kernels."""
    from jaxllm.models import quant_kernels

    tiling = quant_kernels.hopper_tiling
    assert tiling(64, 14336, 4096, 32) == dict(tile_k=128, splits=1, stages=4)  # gate, up: 112 blocks
    assert tiling(64, 4096, 14336, 112)["splits"] == 4  # down: 32 blocks x 4
    assert tiling(33, 4096, 4096, 32)["splits"] == 4  # q, o
    assert tiling(16, 14336, 4096, 32) is None and tiling(64, 1024, 4096, 32) is None
    assert tiling(64, 4096, 4096, 64) is None  # groups of 64 inputs: a 128-input tile spans two
    calls = []
    monkeypatch.setattr("jaxllm.models.quant_hopper.qmatmul", lambda *a, **kw: calls.append(kw) or "hopper")
    monkeypatch.setattr(quant_kernels, "qmatmul16", lambda *a, **kw: "triton")
    x, q, s = jnp.zeros((40, 4096), jnp.bfloat16), jnp.zeros((4096, 4096), jnp.int8), jnp.ones((4096, 32), jnp.bfloat16)
    monkeypatch.setattr(quant_kernels, "_on_hopper", lambda: False)
    assert quant_kernels.matmul(x, q, s, None) == "triton"
    monkeypatch.setattr(quant_kernels, "_on_hopper", lambda: True)
    assert [quant_kernels.matmul(x[:r], q, s, None) for r in (8, 40)] == ["triton", "hopper"]
    assert quant_kernels.matmul(x.astype(jnp.float16), q, s, None) == "triton"
    assert calls == [dict(tile_k=128, splits=4, stages=4)]


@pytest.mark.parametrize("bits, offset", [(8, False), (8, True), (4, False), (4, True)])
@pytest.mark.parametrize("shape, scale_shape, in_axis", [
    ((6, 4, 64), (6, 4, 1), None),   # Dense [out..., in], one scale per output channel
    ((6, 4, 64), (6, 4, 2), None),   # groups of 32
    ((6, 4, 8), (6, 1), None),       # two input dims (o_proj [E, H, D]), one group over both
    ((3, 64, 5), (3, 4, 5), 1),      # MoE experts [X, in, out], groups of 16 along `in`
])
def test_quantize_then_dequantize_error_is_bounded_per_group(bits, offset, shape, scale_shape, in_axis):
    rng = np.random.default_rng(bits + offset)
    w = (rng.standard_t(3, size=shape) * 0.05 + (0.02 if offset else 0.0)).astype(np.float32)  # heavy tails
    w.reshape(-1)[:7] = 0.25  # a constant run: the first group may be constant
    dtype = jnp.int8 if bits == 8 else jnp.int4
    q, s, o = quant.quantize_array(w, dtype, scale_shape, np.float32, in_axis, offset)
    assert q.dtype == np.dtype(dtype) and q.shape == w.shape and s.shape == scale_shape
    back = quant.dequantize_array(q, s, o, in_axis)
    # |w - back| <= scale / 2 in each group (float32 rounding of the product and offset aside)
    a, groups, g, b = quant._grouped_shape(w.shape, scale_shape, in_axis)
    err = np.abs(w - back).reshape(a, groups, g, b).max(axis=2)
    bound = s.reshape(a, groups, b) / 2 * (1 + 1e-5) + 1e-7
    assert (err <= bound).all(), float((err / bound).max())
    # the levels are used: the largest |q| of a group with any spread is the top of the range
    assert np.abs(q.astype(np.int32)).max() >= 2 ** (bits - 1) - 1
    # the jitted dequantize the layers use gives the same floats
    got = quant.dequantize(jnp.asarray(q), jnp.asarray(s), None if o is None else jnp.asarray(o), jnp.float32, in_axis)
    np.testing.assert_allclose(np.asarray(got), back, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_every_architecture_builds_quantized(mode):
    """quantize= on each registered architecture's tiny config builds a module whose kernels are integers (a layer
    subclass that flax took for a pytree refused its scales: ZayaMoE, a ValueError from deep inside flax)."""
    failed, plain = {}, []
    for arch in registry.names():
        try:
            p = loader.plan(dict(registry.get(arch).tiny_config, architectures=[arch]), quantize=mode)
        except Exception as err:  # noqa: BLE001 - every architecture's failure named at once
            failed[arch] = f"{type(err).__name__}: {str(err)[:120]}"
            continue
        if not any(quant.is_quantized(v.dtype) for v in weights.flat_params(p.abstract).values()):
            plain.append(arch)
    assert not failed and not plain, (failed, plain)


# -- quantized models against float ones ------------------------------------------------------

@pytest.mark.parametrize("arch, modes, tables", [
    ("LlamaForCausalLM", ("int8", "int4"), False), ("Qwen3MoeForCausalLM", ("int8", "int4"), False),
    ("Qwen2MoeForCausalLM", ("int8", "int4"), False),
    ("Gemma2ForCausalLM", ("int8",), False),
    # quantize_embeddings: an untied head and its embedding; a tied, scaled, soft-capped table (Gemma 2)
    ("LlamaForCausalLM", ("int4",), True), ("Gemma2ForCausalLM", ("int8",), True),
    ("PhiForCausalLM", ("int8",), True),  # a head with a bias
    # a gated-DeltaNet layer, then a full one: its projections quantize, beta's and the decay's stay float
    ("Qwen3_5ForCausalLM", ("int8", "int4"), False), ("Qwen3NextForCausalLM", ("int8",), False),
    ("ZayaForCausalLM", ("int8", "int4"), False)])  # experts under a router that carries state from layer to layer
def test_tiny_quantized_models_track_their_float_logits(arch, modes, tables):
    raw = dict(registry.get(arch).tiny_config, architectures=[arch], num_hidden_layers=2)
    if "layer_types" in raw:
        raw["layer_types"] = raw["layer_types"][:2]
    model = _float_model(raw, seed=1)
    attn = next(i for i in range(2) if not model.config.layer_is_linear(i))
    tokens = np.random.default_rng(0).integers(0, raw["vocab_size"], (2, 12))
    ref = np.asarray(model.logits(tokens))
    table_paths = {("model", "embed_tokens", "embedding")} | ({("lm_head", "kernel")} if "lm_head" in model.params else set())
    for mode in modes:
        q = loader.quantize_model(model, mode, quantize_embeddings=tables)
        flat = weights.flat_params(q.params)
        kernels = {p for p, v in flat.items() if quant.is_quantized(v.dtype)}
        # Dense kernels and expert stacks quantize; norms and routers do not; the embedding and the
        # output head only under quantize_embeddings, and then in int8 whatever the others take
        assert any(p[:4] == ("model", "layers", attn, "self_attn") and "q_proj" in p for p in kernels)  # Zaya: qkv_proj.q_proj
        if model.config.layer_is_linear(0):  # a gated-DeltaNet layer first
            linear = ("model", "layers", 0, "linear_attn")
            assert {linear + (n, "kernel") for n in ("in_proj_qkv", "in_proj_z", "out_proj")} <= kernels
            assert not {linear + (n, "kernel") for n in ("in_proj_b", "in_proj_a")} & kernels
        assert all(p[-1] in ("kernel", "gate_proj", "up_proj", "down_proj") for p in kernels - table_paths)
        assert not any("gate" == p[-2] for p in kernels)
        assert (kernels & table_paths) == (table_paths if tables else set())
        assert all(flat[p].dtype == jnp.int8 for p in kernels & table_paths)
        if arch.startswith("Qwen3Moe"):
            assert ("model", "layers", 0, "mlp", "gate_proj") in kernels
        got = np.asarray(q.logits(tokens))
        # 1. exactly the float model with the dequantized weights (float32 rounding only)
        deq = _dequantized(q.params)
        fl = weights.flat_params(model.params)
        same = loader.LoadedModel(model.config, model.graphdef, weights.unflatten_into(
            model.params, {p: jnp.asarray(deq.get(p, v)) for p, v in fl.items()}))
        np.testing.assert_allclose(got, np.asarray(same.logits(tokens)), rtol=1e-5, atol=1e-5)
        # 2. near the float model: the logits' relative RMS error is a small multiple of the weights'
        # (to first order each matmul adds its weights' relative error; measured 1.2-2.7x on these
        # models, int8 and int4 alike); a scale on the wrong axis or a misaligned group is O(1)
        w_err = np.sqrt(sum(((deq[p] - np.asarray(fl[p])) ** 2).sum() for p in deq)
                        / sum((np.asarray(fl[p]) ** 2).sum() for p in deq))
        l_err = np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean())
        print(f"{arch} {mode}: weights rel RMS error {w_err:.4f}, logits {l_err:.4f}")
        assert w_err < (0.01 if mode == "int8" else 0.12) and l_err <= 4 * w_err


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A Hugging Face folder (config.json, model.safetensors) of a random tiny Llama, 8 heads."""
    import json

    from jaxllm import safetensors_io

    raw = dict(TINY, num_attention_heads=8, num_key_value_heads=2, hidden_size=64, num_hidden_layers=2)
    model = _float_model(raw, seed=4)
    folder = tmp_path_factory.mktemp("qllama")
    (folder / "config.json").write_text(json.dumps(dict(raw, model_type="llama")))
    specs = registry.get("LlamaForCausalLM").weight_map(model.config)
    flat = weights.flat_params(model.params)
    layout = {n: (s, np.float32) for n, s in weights.hf_layout(specs, {p: v.shape for p, v in flat.items()}).items()}
    safetensors_io.write_safetensors(folder, layout, weights.export_tensors(specs, flat))
    return folder


def test_sharded_quantized_logits_equal_unsharded(llama_folder, monkeypatch):
    tokens = np.random.default_rng(0).integers(0, 128, (2, 20))
    single = jaxllm.load(llama_folder, quantize="int4", tokenizer=False)
    model = jaxllm.load(llama_folder, quantize="int4", mesh="fsdp=2,tp=4", tokenizer=False)
    layer = model.params["model"]["layers"][0]
    # scales split with their channels: out dims as the kernel's; groups (64 / 32 = 2) over fsdp=2,
    # and replicated where tp=4 does not divide them (o_proj's 2 groups)
    assert layer["mlp"]["up_proj"]["kernel"].sharding.spec == P("tp", "fsdp")
    assert layer["mlp"]["up_proj"]["scale"].sharding.spec == P("tp", "fsdp")
    assert layer["self_attn"]["o_proj"]["kernel"].sharding.spec == P("fsdp", "tp", None)
    assert layer["self_attn"]["o_proj"]["offset"].sharding.spec == P("fsdp", None)
    assert layer["mlp"]["down_proj"]["kernel"].dtype == jnp.int4
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(model.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    want = np.asarray(single.logits(tokens))
    err = np.abs(np.asarray(model.logits(tokens)) - want).max() / np.abs(want).max()
    assert err <= 1e-5
    # Decode's one-row forms (quant.grouped_product: folded for gate/up, grouped for down, both
    # with offsets), as a GPU takes them, partitioned over the same mesh: the float path's logits.
    monkeypatch.setattr(quant, "_on_gpu", lambda: True)
    calls, grouped = [], quant.grouped_product
    monkeypatch.setattr(quant, "grouped_product", lambda *a: calls.append(a[1].shape) or grouped(*a))
    one = tokens[:1, 3:4]
    got, want = np.asarray(model.logits(one)), np.asarray(single.logits(one))
    assert len(calls) == 2 * 7  # traced (not a cached program): 7 products a layer, both models
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_sharded_quantized_tables_equal_unsharded(llama_folder, monkeypatch):
    """quantize_embeddings on a mesh: the tables' integers and scales split as their float tables
    did (the head's rows over tp, the embedding's hidden dim over fsdp), the same logits as on one
    device, prefill and (as a GPU takes it) the one-row head product."""
    tokens = np.random.default_rng(0).integers(0, 128, (2, 20))
    single = jaxllm.load(llama_folder, quantize="int8", quantize_embeddings=True, tokenizer=False)
    model = jaxllm.load(llama_folder, quantize="int8", quantize_embeddings=True, mesh="fsdp=2,tp=4", tokenizer=False)
    head, embed = model.params["lm_head"], model.params["model"]["embed_tokens"]
    assert head["kernel"].dtype == embed["embedding"].dtype == jnp.int8
    assert head["kernel"].sharding.spec == P("tp", "fsdp") and head["scale"].sharding.spec == P("tp", None)
    assert embed["embedding"].sharding.spec == P(None, "fsdp")
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(model.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    want = np.asarray(single.logits(tokens))
    assert np.abs(np.asarray(model.logits(tokens)) - want).max() <= 1e-5 * np.abs(want).max()
    monkeypatch.setattr(quant, "_on_gpu", lambda: True)
    one = tokens[:1, 3:4]
    got, want = np.asarray(model.logits(one)), np.asarray(single.logits(one))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.fixture(scope="module")
def int4_group16_folder(llama_folder, tmp_path_factory):
    dst = tmp_path_factory.mktemp("q4g16") / "converted"
    assert convert.main([str(llama_folder), str(dst), "--quantize", "int4", "--group-size", "16"]) == 0
    return dst


@pytest.mark.parametrize("group_size, message", [
    (None, None), (16, None), (8, "holds int4 weights with group_size=16: load it without group_size (or with group_size=16)"),
    (32, "holds int4 weights with group_size=16"), (64, "or quantize the original float checkpoint with group_size=64")])
def test_converted_folder_refuses_another_group_size(int4_group16_folder, group_size, message):
    """A converted int4 folder saved in groups of 16 loads with no group_size or its own; another one is refused
    (was loaded in the saved groups of 16, the argument dropped without a word)."""
    if message is None:
        model = jaxllm.load(int4_group16_folder, quantize="int4", group_size=group_size, tokenizer=False)
        assert model.params["model"]["layers"][0]["mlp"]["down_proj"]["scale"].shape == (64, 96 // 16)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        jaxllm.load(int4_group16_folder, quantize="int4", group_size=group_size, tokenizer=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("flags, message", [
    (["--quantize", "int8"], "holds int4 weights: load it without --quantize (or with --quantize 'int4'), or quantize the "
                             "original float checkpoint with int8"),
    (["--quantize", "int4", "--group-size", "32"], "holds int4 weights with --group-size 16: load it without --group-size "
                                                   "(or with --group-size 16), or quantize the original float checkpoint with --group-size 32")])
def test_convert_of_a_quantized_folder_names_its_flags_once(int4_group16_folder, tmp_path, capsys, flags, message):
    """The command line's error in its flags' terms, once (the message spelled the flags out beside the library's
    words, which the command line turns into flags too: 'without --quantize (or with --quantize 'int4'; on the
    command line without --quantize, or --quantize int4)'); nothing written."""
    dst = tmp_path / "again"
    assert convert.main([str(int4_group16_folder), str(dst)] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {int4_group16_folder} {message}" and not dst.exists()


@pytest.mark.parametrize("tables", [False, True])
def test_converted_round_trip_restores_the_quantized_model(llama_folder, tmp_path, tables):
    """What `python -m jaxllm.convert SRC DST --quantize int8 [--quantize-embeddings]` writes loads
    back as the same integers, scales and logits, without quantizing again."""
    p = loader.prepare(llama_folder, quantize="int8", quantize_embeddings=tables)
    p.check()
    params = p.read()
    dst = tmp_path / "converted"
    assert convert.main([str(llama_folder), str(dst), "--quantize", "int8"] + ["--quantize-embeddings"] * tables) == 0
    back = jaxllm.load(dst, tokenizer=False)
    assert back.quantize == "int8"
    if tables:
        assert back.params["lm_head"]["kernel"].dtype == back.params["model"]["embed_tokens"]["embedding"].dtype == jnp.int8
        jaxllm.load(dst, tokenizer=False, quantize_embeddings=True)  # what it holds: accepted
    else:
        with pytest.raises(ConfigError, match="was converted with float embeddings and output head"):
            jaxllm.load(dst, tokenizer=False, quantize_embeddings=True)
    for (path, a), b in zip(weights.flat_params(params).items(), weights.flat_params(back.params).values()):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), path
    tokens = [[3, 1, 4, 1, 5, 9, 2, 6]]
    quantized = loader.LoadedModel(p.config, p.graphdef, params)
    assert np.array_equal(np.asarray(back.logits(tokens)), np.asarray(quantized.logits(tokens)))
    with pytest.raises(ConfigError, match="holds int8 weights: load it without quantize="):
        jaxllm.load(dst, quantize="int4")
    # back to Hugging Face files: the float values the integers stand for (a float checkpoint that
    # loads as the quantized model computes, to float32 rounding of the products)
    assert convert.main([str(dst), str(tmp_path / "hf"), "--to-hf"]) == 0
    exported = jaxllm.load(tmp_path / "hf", tokenizer=False)
    assert exported.quantize is None
    want = _dequantized(params)
    flat = weights.flat_params(exported.params)
    assert want and all(np.array_equal(np.asarray(flat[path]), w.astype(np.asarray(flat[path]).dtype)) for path, w in want.items())
    got, ref = np.asarray(exported.logits(tokens)), np.asarray(quantized.logits(tokens))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


# -- GGUF blocks without a float detour -------------------------------------------------------

def _tiny_gguf(path: Path, kinds: dict[str, str], rope_freqs=None, name=None, drop=()) -> None:
    """A 2-layer Llama GGUF (hidden 64) whose kernels are stored as kinds[name] (default F32);
    `rope_freqs`: a rope_freqs.weight tensor, as llama.cpp writes Llama 3.1's rope scaling."""
    rng = np.random.default_rng(7)
    w = GGUFWriter(path, "llama")
    if name is not None:
        w.add_string("general.name", name)
    for key, value in dict(embedding_length=64, block_count=2, feed_forward_length=128, context_length=256,
                           vocab_size=96).items():
        if key not in drop:
            w.add_uint32(f"llama.{key}", value)
    if "attention.head_count" not in drop:
        w.add_uint32("llama.attention.head_count", 4)
    w.add_uint32("llama.attention.head_count_kv", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)

    def add(name, shape, kind="F32"):
        x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if kind in ("F32", "F64"):
            w.add_tensor(name, x.astype(np.float64) if kind == "F64" else x)
        else:
            w.add_tensor(name, quants.quantize(x, GGMLQuantizationType[kind]), raw_dtype=GGMLQuantizationType[kind])

    add("token_embd.weight", (96, 64))
    add("output_norm.weight", (64,))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    for i in range(2):
        add(f"blk.{i}.attn_norm.weight", (64,))
        add(f"blk.{i}.ffn_norm.weight", (64,))
        for name, shape in dict(attn_q=(64, 64), attn_k=(32, 64), attn_v=(32, 64), attn_output=(64, 64),
                                ffn_gate=(128, 64), ffn_up=(128, 64), ffn_down=(64, 128)).items():
            add(f"blk.{i}.{name}.weight", shape, kinds.get(name, "F32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_blocks_load_bit_exact(tmp_path):
    """Q8_0 as int8, Q4_0 and Q4_1 as int4 groups of 32: the model's dequantized kernels are the
    float load's bit for bit (q/k rows unpermuted alike); F32 kernels follow the mode."""
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path, dict(attn_q="Q8_0", attn_k="Q4_0", attn_v="Q4_1", ffn_gate="Q4_1", ffn_up="Q8_0", ffn_down="Q4_0"))
    tokens = [[5, 6, 7, 8, 9, 10]]
    ref = jaxllm.load(path, tokenizer=False)
    want = weights.flat_params(ref.params)
    layer = ("model", "layers", 1)
    for mode, native in [("gguf", {"q_proj": jnp.int8, "k_proj": jnp.int4, "v_proj": jnp.int4, "up_proj": jnp.int8}),
                         ("int4", {"k_proj": jnp.int4, "v_proj": jnp.int4, "down_proj": jnp.int4})]:
        model = jaxllm.load(path, quantize=mode, tokenizer=False)
        flat = weights.flat_params(model.params)
        deq = _dequantized(model.params)
        for name, dtype in native.items():
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj")) else "mlp"
            kernel = layer + (part, name, "kernel")
            assert flat[kernel].dtype == dtype and flat[kernel[:-1] + ("scale",)].dtype == jnp.float16, (mode, name)
            assert flat[kernel[:-1] + ("scale",)].shape[-1] == flat[kernel].shape[-1] // 32
            assert np.array_equal(deq[kernel].view(np.uint32), np.asarray(want[kernel]).view(np.uint32)), (mode, name)
        assert flat[layer + ("self_attn", "o_proj", "kernel")].dtype == (jnp.float32 if mode == "gguf" else jnp.int4)
        assert flat[("model", "embed_tokens", "embedding")].dtype == jnp.float32
        if mode == "gguf":  # the other kernels are F32 and stay float: the same model
            np.testing.assert_allclose(np.asarray(model.logits(tokens)), np.asarray(ref.logits(tokens)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("group", [16, 32, 64])
def test_gguf_blocks_are_taken_only_in_the_groups_asked_for(tmp_path, mode, group):
    """A GGUF file's blocks (groups of 32) load as they are under the group_size they have; another group_size
    quantizes every kernel in its own groups, from the blocks' values (the blocks were kept in 32s, the
    group_size asked for dropped without a word)."""
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path, dict(attn_q="Q8_0", attn_k="Q4_0", attn_v="Q4_1", ffn_gate="Q4_1", ffn_up="Q8_0", ffn_down="Q4_0"))
    model = jaxllm.load(path, quantize=mode, group_size=group, tokenizer=False)
    flat = weights.flat_params(model.params)
    kernels = {p: v for p, v in flat.items() if p[-1] == "kernel" and quant.is_quantized(v.dtype)}
    assert len(kernels) == 2 * 7
    for path_, kernel in kernels.items():
        scale = flat[path_[:-1] + ("scale",)]
        fan_in = math.prod(kernel.shape[1:]) if path_[-2] == "o_proj" else kernel.shape[-1]
        assert scale.shape[-1] == fan_in // group, path_
        native = group == 32 and path_[-2] in ({"q_proj", "up_proj"} if mode == "int8" else {"k_proj", "v_proj", "gate_proj", "down_proj"})
        assert scale.dtype == (jnp.float16 if native else jnp.float32), path_


# -- one-line errors and the plumbing ---------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(quantize="int3"), "quantize must be 'int8', 'int4' or 'gguf', got 'int3'"),
    (dict(quantize="int4", group_size=48), "group_size 48 does not divide the 64 inputs of model.layers.0"),
    (dict(quantize="int4", group_size=0), "group_size must be a positive whole number"),
    (dict(group_size=32), "group_size goes with quantize="),
    (dict(quantize="gguf", group_size=64), "quantize='gguf' keeps the file's own groups of 32: drop group_size"),
    (dict(quantize="gguf"), "quantize='gguf' keeps a GGUF file's own quantized blocks; this checkpoint is not a GGUF"),
    (dict(quantize_embeddings=True), "quantize_embeddings goes with quantize='int8', 'int4' or 'gguf': pass quantize too"),
    (dict(quantize="int8", quantize_embeddings="yes"), "quantize_embeddings must be True or False, got 'yes'"),
])
def test_bad_quantize_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        loader.plan(TINY, source=None, **kwargs)
    assert "\n" not in str(err.value)


def test_group_size_error_names_what_divides():
    with pytest.raises(ConfigError) as err:
        loader.plan(TINY, quantize="int4", group_size=48)
    assert str(err.value).endswith("choose one that does (8, 16, 32, 64)")


def test_kv_dtype_is_kept_and_checked():
    assert loader.resolve_kv_dtype(None) is None and loader.resolve_kv_dtype("fp8") == "float8_e4m3fn"
    assert loader.resolve_kv_dtype(jnp.int8) == "int8"
    with pytest.raises(jaxllm.JaxllmError, match="kv_dtype must be one of .*got 'int2'"):
        jaxllm.load("/nonexistent", kv_dtype="int2")  # before anything is read
    model = random_model(dict(TINY, num_hidden_layers=1), "float32", quantize="int4", kv_dtype="int8")
    assert model.kv_dtype == "int8" and model.quantize == "int4"
    assert np.isfinite(np.asarray(model.logits([[1, 2, 3]]))).all()
    # int4 counts half a byte (XLA packs it)
    assert quant.bytes_of(jax.ShapeDtypeStruct((10, 3), jnp.int4)) == 15
    mem = {q: loader.estimate_memory(model.config, 1, 16, "float32", quantize=q)["params_bytes"] for q in (None, "int4")}
    assert mem["int4"] == sum(quant.bytes_of(x) for x in jax.tree.leaves(model.params)) < mem[None] / 2


# -- the real model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def perplexities(gguf_path):
    """Perplexity of SmolLM2-135M-Instruct on tests/data/public_domain.txt (2,032 tokens, scored
    in 8 windows of 254: a third of the full-context time on a 2-core CPU), float32 weights vs our
    int8 and int4 quantizers on them. The file's weights are Q4_1 (asymmetric, groups of 32), and
    int4's default scheme is the same grid: when its dequantized kernels are the float ones bit
    for bit, its perplexity is the float model's without another forward pass."""
    model = jaxllm.load(gguf_path, dtype="float32")
    ids = np.asarray(model.tokenizer(TEXT.read_text(encoding="utf-8"))["input_ids"])
    assert len(ids) >= 2000
    windows = ids[: len(ids) // 8 * 8].reshape(8, -1)

    def ppl(m):
        return float(np.exp(-np.asarray(m.token_logprobs(windows), np.float64).mean()))

    int8 = loader.quantize_model(model, "int8")
    out = {"float": ppl(model), "int8": ppl(int8)}
    int4 = loader.quantize_model(model, "int4")
    floats = weights.flat_params(model.params)
    same = all(np.array_equal(v, np.asarray(floats[p])) for p, v in _dequantized(int4.params).items())
    out["int4"] = out["float"] if same else ppl(int4)
    print("perplexity", {k: round(v, 4) for k, v in out.items()}, "(int4 weights identical)" if same else "")
    return model, out, int8


def test_perplexity_of_the_quantized_real_model(perplexities):
    _, ppl, _ = perplexities
    assert ppl["int8"] <= 1.01 * ppl["float"]
    assert ppl["int4"] <= 1.08 * ppl["float"]


def test_real_gguf_q4_1_blocks_are_the_files_values(perplexities, gguf_path):
    """quantize="int4" on the Q4_1 file takes its blocks: every kernel as the float load has it."""
    model, _, _ = perplexities
    native = jaxllm.load(gguf_path, dtype="float32", quantize="int4", tokenizer=False)
    want = weights.flat_params(model.params)
    deq = _dequantized(native.params)
    assert len(deq) == 30 * 7
    for path, value in deq.items():
        assert np.array_equal(value.view(np.uint32), np.asarray(want[path]).view(np.uint32)), path
    # quantize_embeddings on "gguf": the tied table's Q8_0 blocks as they are (float16 scales per 32)
    tables = jaxllm.load(gguf_path, dtype="float32", quantize="gguf", quantize_embeddings=True, tokenizer=False)
    embed = tables.params["model"]["embed_tokens"]
    assert embed["embedding"].dtype == jnp.int8 and embed["embedding_scale"].dtype == jnp.float16
    assert embed["embedding_scale"].shape == (49152, 576 // 32)
    deq = _dequantized(tables.params)
    assert len(deq) == 30 * 7 + 1
    for path, value in deq.items():
        assert np.array_equal(value.view(np.uint32), np.asarray(want[path]).view(np.uint32)), path


def test_int8_real_model_still_answers(perplexities):
    """The greedy answer survives int8 (requantized from the float weights). int4 on this file takes
    its blocks bit for bit (the test above), so it computes the float model's answer."""
    _, _, int8 = perplexities
    got = int8.generate("What is the capital of France?", jaxllm.SamplingParams(max_new_tokens=8))
    assert got.text == "The capital of France is Paris."


def test_gguf_rope_freqs_are_llama3_scaling(tmp_path):
    """llama.cpp keeps Llama 3.1's rope scaling only as rope_freqs.weight (each frequency's
    divisor, from factor 8, low/high frequency factors 1 and 4, 16 original positions here): the
    file's logits equal the same weights under the llama3 rope config, the engine keeps prefix
    caching (the factors do not depend on the length), and a file without it has plain rope."""
    import math

    from jaxllm.engine import Engine
    from jaxllm.models.config import RopeConfig

    llama3 = RopeConfig(type="llama3", theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=16)
    factors = []
    for i in range(0, 16, 2):  # llama.cpp's convert_hf_to_gguf.py, for head_dim 16
        wavelen = 2 * math.pi * 10000.0 ** (i / 16)
        if wavelen < 16 / 4:
            factors.append(1.0)
        elif wavelen > 16 / 1:
            factors.append(8.0)
        else:
            smooth = (16 / wavelen - 1) / (4 - 1)
            factors.append(1 / ((1 - smooth) / 8 + smooth))
    _tiny_gguf(tmp_path / "freqs.gguf", {}, rope_freqs=factors)
    _tiny_gguf(tmp_path / "plain.gguf", {})
    scaled, plain = (jaxllm.load(tmp_path / f"{n}.gguf", tokenizer=False) for n in ("freqs", "plain"))
    assert plain.config.rope.type == "default" and not scaled.config.rope.length_dependent
    cfg = plain.config.replace(rope=llama3)
    graphdef, _ = loader.abstract_model(cfg, registry.get("LlamaForCausalLM"), np.float32)
    want = loader.LoadedModel(cfg, graphdef, plain.params)
    tokens = np.random.default_rng(0).integers(0, 96, (1, 40))
    ref = np.asarray(want.logits(tokens))
    err = np.abs(np.asarray(scaled.logits(tokens)) - ref).max()
    assert err <= 1e-5 * np.abs(ref).max()
    assert np.abs(np.asarray(plain.logits(tokens)) - ref).max() > 100 * max(err, 1e-7)  # the scaling matters here
    assert Engine(scaled, batch_size=1, max_len=64, num_pages=8).blocks.prefix_caching


def test_gguf_without_window_tokenizer_or_readable_types(tmp_path):
    """A llama file that llama.cpp names Mistral has no window (llama.cpp attends over the whole
    context; Mistral's config default is 4,096); a file without tokenizer metadata loads with no
    tokenizer, as a folder without tokenizer files; a tensor type gguf cannot dequantize is
    refused when the file is opened, naming the tensor."""
    _tiny_gguf(tmp_path / "nemo.gguf", {}, name="Mistral Nemo Instruct 2407")
    model = jaxllm.load(tmp_path / "nemo.gguf")
    assert model.config.architecture == "MistralForCausalLM" and model.config.layer_window(0) is None
    assert model.tokenizer is None
    _tiny_gguf(tmp_path / "f64.gguf", {"attn_q": "F64"})
    with pytest.raises(CheckpointError, match=r"tensor blk\.0\.attn_q\.weight: its GGML type F64 is not one jaxllm reads"):
        jaxllm.load(tmp_path / "f64.gguf", tokenizer=False)


def test_gguf_metadata_gaps(tmp_path):
    """Without vocab_size or a token list, the vocabulary is the embedding's rows; a missing head
    count is named by its GGUF key."""
    _tiny_gguf(tmp_path / "novocab.gguf", {}, drop=("vocab_size",))
    assert jaxllm.load(tmp_path / "novocab.gguf", tokenizer=False).config.vocab_size == 96
    _tiny_gguf(tmp_path / "noheads.gguf", {}, drop=("attention.head_count",))
    with pytest.raises(CheckpointError, match=r"GGUF metadata lacks llama\.attention\.head_count: .* convert_hf_to_gguf"):
        jaxllm.load(tmp_path / "noheads.gguf", tokenizer=False)


# -- GGUF architectures against transformers' own GGUF loader ---------------------------------

def _attention(heads: int, kv: int, head_dim: int, e: int = 64) -> dict:
    return dict(attn_q=(heads * head_dim, e), attn_k=(kv * head_dim, e), attn_v=(kv * head_dim, e),
                attn_output=(e, heads * head_dim))


_MLP = dict(ffn_gate=(128, 64), ffn_up=(128, 64), ffn_down=(64, 128))
_ROPE = {"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16,
         "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0}
_GEMMA = {"attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 256,
          "attention.value_length": 256, "attention.layer_norm_rms_epsilon": 1e-6, "attention.sliding_window": 4,
          "rope.freq_base": 10000.0}
_GEMMA_LAYER = dict(_attention(2, 1, 256), **_MLP, attn_norm=(64,), post_attention_norm=(64,), ffn_norm=(64,),
                    post_ffw_norm=(64,))
# general.architecture -> (metadata without the prefix, top-level tensors, one layer's tensors, layers): as
# llama.cpp's convert_hf_to_gguf.py writes them, shapes [out, in]
GGUF_ARCHS = {
    "llama": (_ROPE, dict(output=(96, 64)), dict(_attention(4, 2, 16), **_MLP, attn_norm=(64,), ffn_norm=(64,)), 2),
    "qwen2": (_ROPE, {}, dict(_attention(4, 2, 16), **_MLP, attn_norm=(64,), ffn_norm=(64,),
                              **{"attn_q.bias": (64,), "attn_k.bias": (32,), "attn_v.bias": (32,)}), 2),
    # head_dim 128, as every Qwen3: transformers' GGUF loader reads no key_length for qwen3, its default it must be
    "qwen3": (dict(_ROPE, **{"attention.key_length": 128, "rope.dimension_count": 128}), dict(output=(96, 64)),
              dict(_attention(4, 2, 128), **_MLP, attn_norm=(64,), ffn_norm=(64,), attn_q_norm=(128,), attn_k_norm=(128,)), 2),
    # transformers reads no expert width from the file: its default, 768 (Qwen3-30B-A3B's), it must be
    "qwen3moe": (dict(_ROPE, **{"attention.key_length": 16, "expert_count": 4, "expert_used_count": 2,
                                "expert_feed_forward_length": 768}), dict(output=(96, 64)),
                 dict(_attention(4, 2, 16), attn_norm=(64,), ffn_norm=(64,), attn_q_norm=(16,), attn_k_norm=(16,),
                      ffn_gate_inp=(4, 64), ffn_gate_exps=(4, 768, 64), ffn_up_exps=(4, 768, 64),
                      ffn_down_exps=(4, 64, 768)), 2),
    # Phi-3-mini-4k's window (llama.cpp and transformers' GGUF loader leave it off), fused qkv and gate_up
    "phi3": (dict(_ROPE, **{"attention.sliding_window": 4, "rope.scaling.original_context_length": 256}),
             dict(output=(96, 64)), dict(attn_qkv=(128, 64), attn_output=(64, 64), ffn_up=(256, 64), ffn_down=(64, 128),
                                         attn_norm=(64,), ffn_norm=(64,)), 2),
    # head_dim 256 as in every Gemma but the 27Bs: llama.cpp's attention scale is transformers' default there
    "gemma2": (dict(_GEMMA, attn_logit_softcapping=50.0, final_logit_softcapping=30.0), {}, _GEMMA_LAYER, 2),
    "gemma3": (dict(_GEMMA, **{"rope.freq_base": 1000000.0}), {},
               dict(_GEMMA_LAYER, attn_q_norm=(256,), attn_k_norm=(256,)), 6),  # layer 5 global
    "gpt2": ({"attention.head_count": 4, "attention.layer_norm_epsilon": 1e-5}, dict(position_embd=(1024, 64)),
             {"attn_norm": (64,), "attn_norm.bias": (64,), "attn_qkv": (192, 64), "attn_qkv.bias": (192,),
              "attn_output": (64, 64), "attn_output.bias": (64,), "ffn_norm": (64,), "ffn_norm.bias": (64,),
              "ffn_up": (256, 64), "ffn_up.bias": (256,), "ffn_down": (64, 256), "ffn_down.bias": (64,)}, 2),
    # StableLM 2 1.6B's form: LayerNorms with biases, q/k/v biases, a quarter of each head rotated, sequential (ffn_norm)
    "stablelm": ({"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 4,
                  "attention.layer_norm_epsilon": 1e-5, "rope.freq_base": 10000.0}, {"output": (96, 64), "output_norm.bias": (64,)},
                 dict(_attention(4, 2, 16), **_MLP, **{"attn_norm": (64,), "attn_norm.bias": (64,), "ffn_norm": (64,),
                                                       "ffn_norm.bias": (64,), "attn_q.bias": (64,), "attn_k.bias": (32,),
                                                       "attn_v.bias": (32,)}), 2),
    # StarCoder 2's: biases everywhere, ungated MLP, tied; transformers' GGUF loader reads no rope base (10,000 it must be)
    "starcoder2": ({"attention.head_count": 4, "attention.head_count_kv": 2, "attention.layer_norm_epsilon": 1e-5,
                    "rope.freq_base": 10000.0}, {"output_norm.bias": (64,)},
                   dict(_attention(4, 2, 16), **{f"{n}.bias": (s[0],) for n, s in _attention(4, 2, 16).items()},
                        **{"attn_norm": (64,), "attn_norm.bias": (64,), "ffn_norm": (64,), "ffn_norm.bias": (64,),
                           "ffn_up": (128, 64), "ffn_up.bias": (128,), "ffn_down": (64, 128), "ffn_down.bias": (64,)}), 2),
    # BLOOM's: q/k/v rows grouped q | k | v (HF's per head), the embeddings' norm, biases everywhere; an output of its own
    # values (llama.cpp writes a copy of the embeddings; other values untie the head, in transformers too)
    "bloom": ({"attention.head_count": 4, "attention.layer_norm_epsilon": 1e-5},
              {"token_embd_norm": (64,), "token_embd_norm.bias": (64,), "output_norm.bias": (64,), "output": (96, 64)},
              {"attn_norm": (64,), "attn_norm.bias": (64,), "attn_qkv": (192, 64), "attn_qkv.bias": (192,),
               "attn_output": (64, 64), "attn_output.bias": (64,), "ffn_norm": (64,), "ffn_norm.bias": (64,),
               "ffn_up": (256, 64), "ffn_up.bias": (256,), "ffn_down": (64, 256), "ffn_down.bias": (64,)}, 2),
    # Falcon-7B's: one kv head (q | k | v rows), attention and MLP in parallel off one LayerNorm, no biases; an output of
    # its own values, as BLOOM's
    "falcon": ({"attention.head_count": 4, "attention.head_count_kv": 1, "attention.layer_norm_epsilon": 1e-5,
                "rope.freq_base": 10000.0}, {"output_norm.bias": (64,), "output": (96, 64)},
               {"attn_norm": (64,), "attn_norm.bias": (64,), "attn_qkv": (96, 64), "attn_output": (64, 64),
                "ffn_up": (256, 64), "ffn_down": (64, 256)}, 2),
    # Nemotron's: LayerNorms with biases stored as 1 + w, GQA, half of each head rotated, an ungated squared-ReLU MLP
    "nemotron": ({"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 8,
                  "attention.layer_norm_epsilon": 1e-5, "rope.freq_base": 10000.0}, {"output": (96, 64), "output_norm.bias": (64,)},
                 dict(_attention(4, 2, 16), ffn_up=(128, 64), ffn_down=(64, 128), **{"attn_norm": (64,), "attn_norm.bias": (64,),
                                                                                    "ffn_norm": (64,), "ffn_norm.bias": (64,)}), 2),
}
_FFN = {"gpt2": 256, "phi3": 128, "bloom": 256, "falcon": 256}


def _arch_gguf(path: Path, arch: str, drop=(), extra: dict | None = None, meta: dict | None = None,
               matrices: str | None = None) -> None:
    """A tiny GGUF (hidden 64, 96 tokens) of `arch` as GGUF_ARCHS has it, its types llama.cpp's
    usual ones: 1-D tensors F32, layer 0's matrices Q8_0, the other matrices F16 (`matrices`: every
    layer's matrices of that type instead, e.g. "Q4_1"). `drop`: metadata keys (without the prefix)
    or tensor names left out; `extra`: more tensors {name: float32 array}; `meta`: metadata {key
    without the prefix: value} over GGUF_ARCHS'."""
    own, top, layer, layers = GGUF_ARCHS[arch]
    rng = np.random.default_rng(5)
    w = GGUFWriter(path, arch)
    base = dict(embedding_length=64, block_count=layers, feed_forward_length=_FFN.get(arch, 128), context_length=1024,
                vocab_size=96)
    for key, value in {**base, **own, **(meta or {})}.items():
        if key not in drop:
            add = w.add_string if isinstance(value, str) else w.add_float32 if isinstance(value, float) else w.add_uint32
            add(f"{arch}.{key}", value)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(96)])  # GPT-2's vocabulary size is its length
    for key, value in dict(padding_token_id=0, bos_token_id=1, eos_token_id=2).items():  # else Phi-3's pad 32000
        w.add_uint32(f"tokenizer.ggml.{key}", value)

    def add(name, shape, kind):
        norm = len(shape) == 1 and name.endswith("norm.weight")
        x = ((1.0 if norm else 0.0) + rng.standard_normal(shape) * (0.1 if norm else 0.15)).astype(np.float32)
        if name in drop:
            return
        if kind.startswith("Q"):
            w.add_tensor(name, quants.quantize(x, GGMLQuantizationType[kind]), raw_dtype=GGMLQuantizationType[kind])
        else:
            w.add_tensor(name, x if kind == "F32" else x.astype(np.float16))

    for name, shape in dict(token_embd=(96, 64), output_norm=(64,), **top).items():
        add(name if "." in name else f"{name}.weight", shape, "F32" if len(shape) == 1 else "F16")
    if arch == "gpt2":
        add("output_norm.bias", (64,), "F32")
    for i in range(layers):
        for name, shape in layer.items():
            add(f"blk.{i}.{name if '.' in name else name + '.weight'}", shape,
                "F32" if len(shape) == 1 else matrices or ("Q8_0" if i == 0 else "F16"))
    for name, value in (extra or {}).items():
        w.add_tensor(name, np.asarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGUF_TOKENS = np.random.default_rng(1).integers(0, 96, (2, 12))  # longer than the Gemmas' window (4)


@pytest.mark.parametrize("arch", sorted(GGUF_ARCHS))
def test_gguf_logits_match_transformers_gguf_loader(arch, tmp_path):
    """Each GGUF architecture we read, as transformers reads the same file (its GGUF loader:
    names, q/k rows, Gemma's norms stored as 1 + w, GPT-2's transposed Conv1D weights, Phi-3's
    fused tensors, Qwen3-MoE's expert stacks), float32 logits within 1e-4 of its largest."""
    import reference
    import torch
    import transformers

    _arch_gguf(tmp_path / "tiny.gguf", arch)
    ours = jaxllm.load(tmp_path / "tiny.gguf", tokenizer=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    assert ours.config.architecture == type(theirs).__name__ == gguf_families.ARCHITECTURES[arch].hf
    err = reference.max_rel_diff(ours.logits(GGUF_TOKENS), reference.torch_logits(theirs, GGUF_TOKENS))
    print(f"{arch}: max rel diff {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("arch", ["bert", "gemma", "gptneox", "olmo2"])
def test_gguf_architectures_transformers_cannot_read_are_refused(arch, tmp_path):
    """A GGUF architecture outside the table is refused in one line naming those it holds: BERT
    (neither jaxllm nor transformers serves it), and Gemma 1, GPT-NeoX and OLMo2, families jaxllm
    serves from safetensors whose GGUF files transformers does not read (no reference to hold
    them to)."""
    w = GGUFWriter(tmp_path / "other.gguf", arch)
    w.add_uint32(f"{arch}.block_count", 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=rf"^GGUF architecture '{arch}' is not supported; supported: bloom, falcon, gemma2, "
                                              "gemma3, gpt2, lfm2, llama, mamba, minimax-m2, mistral, nemotron, phi3, qwen2, qwen2moe, "
                                              "qwen3, qwen35, qwen35moe, qwen3moe, stablelm, starcoder2$"):
        jaxllm.load(tmp_path / "other.gguf", tokenizer=False)


def test_gguf_llama_with_experts_is_refused(tmp_path):
    """A llama file with experts (llama.cpp's Mixtral) is refused in one line: transformers reads it
    as a dense Llama, its experts dropped."""
    _arch_gguf(tmp_path / "mixtral.gguf", "llama", meta={"expert_count": 8, "expert_used_count": 2})
    with pytest.raises(CheckpointError, match=r"^GGUF llama file with 8 experts \(Mixtral\): not supported[^\n]*$"):
        jaxllm.load(tmp_path / "mixtral.gguf", tokenizer=False)


def test_gguf_falcon_new_decoder_is_refused(tmp_path):
    """A falcon file with kv groups (Falcon-40B/180B's new decoder) is refused in one line:
    transformers' GGUF loader reads every falcon file as Falcon-7B's one kv head."""
    _arch_gguf(tmp_path / "falcon40b.gguf", "falcon", meta={"attention.head_count_kv": 2})
    with pytest.raises(CheckpointError, match=r"^GGUF falcon file with 2 kv heads \(Falcon-40B/180B's new decoder\): not supported[^\n]*$"):
        jaxllm.load(tmp_path / "falcon40b.gguf", tokenizer=False)


GGUF_GAPS = [  # (architecture, metadata key or tensor left out, the error)
    ("qwen3moe", "expert_feed_forward_length", r"^GGUF metadata lacks qwen3moe\.expert_feed_forward_length: .* convert_hf_to_gguf"),
    ("phi3", "attention.head_count", r"^GGUF metadata lacks phi3\.attention\.head_count: "),
    ("gemma2", "feed_forward_length", r"^GGUF metadata lacks gemma2\.feed_forward_length: "),
    ("gpt2", "block_count", r"^GGUF metadata lacks gpt2\.block_count: "),
    ("phi3", "blk.1.attn_qkv.weight", r"\(1 problem\): missing model\.layers\.1\.self_attn\.qkv_proj\.weight \(expected shape \[128, 64\]\)"
     r"; the file is damaged or was written wrongly: download or convert it again$"),
    ("gemma3", "blk.0.post_ffw_norm.weight", r"\(1 problem\): missing model\.layers\.0\.post_feedforward_layernorm\.weight "),
    ("gpt2", "blk.1.attn_qkv.bias", r"\(1 problem\): missing transformer\.h\.1\.attn\.c_attn\.bias \(expected shape \[192\]\)"
     r"; the file is damaged or was written wrongly: download or convert it again$"),
    ("qwen3moe", "blk.0.ffn_up_exps.weight", r"\(4 problems\): missing model\.layers\.0\.mlp\.experts\.0\.up_proj\.weight "),
]


@pytest.mark.parametrize("arch, drop, message", GGUF_GAPS, ids=[f"{a}-{d}" for a, d, _ in GGUF_GAPS])
def test_gguf_gaps_of_new_architectures_are_one_line(arch, drop, message, tmp_path):
    """A metadata key the architecture needs, or a tensor, left out: one line naming it, before any
    tensor is read."""
    _arch_gguf(tmp_path / "gap.gguf", arch, drop=(drop,))
    with pytest.raises(CheckpointError, match=message) as err:
        jaxllm.load(tmp_path / "gap.gguf", tokenizer=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch, kind", [("gpt2", "Q8_0"), ("phi3", "Q4_1"), ("qwen3moe", "Q4_0"), ("gemma2", "Q8_0")])
def test_gguf_blocks_fill_every_kernel_as_they_are(arch, kind, tmp_path):
    """quantize="gguf" takes the file's blocks for every layer kernel, whatever its HF layout: GPT-2's
    Conv1D weights (stored [out, in] in the file), Phi-3's fused qkv / gate_up rows, Qwen3-MoE's
    expert stacks (each expert turned [in, out]); the logits are the float load's (the same
    values), and the bytes those of the blocks."""
    _arch_gguf(tmp_path / "q.gguf", arch, matrices=kind)
    dense = jaxllm.load(tmp_path / "q.gguf", tokenizer=False)
    blocks = jaxllm.load(tmp_path / "q.gguf", tokenizer=False, quantize="gguf")
    floats, packed = weights.flat_params(dense.params), weights.flat_params(blocks.params)
    kernels = [p for p, x in floats.items() if "layers" in p and x.ndim >= 2 and p[-1] != "bias" and p[-2:] != ("gate", "kernel")]  # routers stay float
    assert kernels and all(quant.is_quantized(packed[p].dtype) for p in kernels), [p for p in kernels if not quant.is_quantized(packed[p].dtype)]
    ref = np.asarray(dense.logits(GGUF_TOKENS))
    assert np.abs(np.asarray(blocks.logits(GGUF_TOKENS)) - ref).max() <= 1e-5 * np.abs(ref).max()


GGUF_BAD_VALUES = [  # (architecture, metadata over GGUF_ARCHS', the error)
    ("phi3", {"attention.head_count": 0}, r"'num_attention_heads' must be a positive integer .* got 0"),
    ("phi3", {"attention.head_count": 5, "attention.head_count_kv": 1}, "hidden_size=64 is not divisible by num_attention_heads=5"),
    ("phi3", {"rope.dimension_count": "16"}, r"GGUF phi3\.rope\.dimension_count is '16', not a positive whole number"),
    ("phi3", {"rope.dimension_count": 7}, r"rotary dimension 7 \(head_dim 16 x partial_rotary_factor 0\.4375\) must be even"),
    ("qwen3moe", {"expert_count": 0}, r"GGUF qwen3moe\.expert_count is 0: a Qwen3-MoE file has at least one expert"),
]


@pytest.mark.parametrize("arch, meta, message", GGUF_BAD_VALUES, ids=[f"{a}-{'-'.join(m)}" for a, m, _ in GGUF_BAD_VALUES])
def test_gguf_bad_metadata_values_are_one_line(arch, meta, message, tmp_path):
    """Metadata of the wrong type or value, which the family's own reading (Phi-3's rotary part,
    Qwen3-MoE's experts) meets before the config's checks: one line naming it."""
    _arch_gguf(tmp_path / "bad.gguf", arch, meta=meta)
    with pytest.raises(JaxllmError, match=message) as err:
        jaxllm.load(tmp_path / "bad.gguf", tokenizer=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch, meta, want", [
    # llama.cpp scales Gemma's 27Bs (46 / 62 layers) by hidden / heads, the others by head_dim
    ("gemma2", {"block_count": 46}, dict(query_pre_attn_scalar=32, attn_logit_softcapping=50.0)),
    ("gemma3", {"block_count": 62}, dict(query_pre_attn_scalar=32)),
    ("gemma2", {"final_logit_softcapping": 20.0}, dict(query_pre_attn_scalar=256, final_logit_softcapping=20.0)),
    ("qwen3moe", {"expert_feed_forward_length": 32}, dict(moe_intermediate_size=32, num_experts=4, norm_topk_prob=True)),
    ("phi3", {"rope.dimension_count": 12}, dict(partial_rotary_factor=0.75)),  # Phi-4-mini's
    ("gpt2", {"feed_forward_length": 128}, dict(intermediate_size=128, n_inner=128)),  # GPT2Config's name, for --to-hf
    # Gemma 3 4B-27B: linear scaling on the global layers (the sliding ones keep their own base)
    ("gemma3", {"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}, dict(rope_scaling={"rope_type": "linear", "factor": 8.0})),
    ("stablelm", {"rope.dimension_count": 8}, dict(partial_rotary_factor=0.5)),
    ("starcoder2", {"rope.freq_base": 999999.0}, dict(rope_theta=999999.0)),  # StarCoder 2 3B's (999,999.44 in its config)
], ids=["gemma2-27b", "gemma3-27b", "gemma2-softcap", "qwen3moe-width", "phi3-partial-rotary", "gpt2-width", "gemma3-rope-scaling",
        "stablelm-partial-rotary", "starcoder2-rope-base"])
def test_gguf_metadata_transformers_drops_is_read(arch, meta, want, tmp_path):
    """What llama.cpp reads from these files but transformers' GGUF loader leaves at its config
    defaults (right for most releases, wrong for the rest), read as llama.cpp does."""
    _arch_gguf(tmp_path / "meta.gguf", arch, meta=meta)
    raw = gguf.config_from_metadata(gguf.Header(tmp_path / "meta.gguf"))
    assert {k: raw.get(k) for k in want} == want
    cfg = registry.get(gguf_families.ARCHITECTURES[arch].hf).config(raw)
    assert (cfg.rope.factor, cfg.local_rope.factor if cfg.local_rope else 1.0) == ((8.0, 1.0) if "rope_scaling" in want else (1.0, 1.0))


def test_gguf_stablelm_flags_are_read_off_the_tensors(tmp_path):
    """StableLM's q/k/v biases and parallel residual, which its GGUF metadata does not say: off, and
    on, where the file has no attn_q.bias and no ffn_norm, as transformers' GGUF loader reads them
    (logits within 1e-4 of its); per-head q/k norms (StableLM 2 12B), which that loader drops, are
    refused in one line."""
    import reference
    import torch
    import transformers

    drop = tuple(f"blk.{i}.{n}" for i in range(2) for n in ("ffn_norm.weight", "ffn_norm.bias", "attn_q.bias", "attn_k.bias", "attn_v.bias"))
    _arch_gguf(tmp_path / "tiny.gguf", "stablelm", drop=drop)
    ours = jaxllm.load(tmp_path / "tiny.gguf", tokenizer=False)
    assert (ours.config.qkv_bias, ours.config.parallel_residual) == (False, True)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    assert reference.max_rel_diff(ours.logits(GGUF_TOKENS), reference.torch_logits(theirs, GGUF_TOKENS)) <= 1e-4
    _arch_gguf(tmp_path / "qk.gguf", "stablelm", extra={f"blk.{i}.attn_{x}_norm.weight": np.ones((4 if x == "q" else 2, 16))
                                                        for i in range(2) for x in "qk"})
    with pytest.raises(CheckpointError, match=r"^GGUF stablelm file with per-head q/k norms \(StableLM 2 12B\): not supported "
                                              r"from GGUF; load the model's Hugging Face checkpoint instead$"):
        jaxllm.load(tmp_path / "qk.gguf", tokenizer=False)


def test_gguf_phi3_longrope_factors(tmp_path):
    """Phi-3's LongRoPE (the 128k models, Phi-3.5, Phi-4-mini, here with its partial rotary factor):
    llama.cpp's rope_factors_long / _short tensors, original context and attention factor read as
    the config.json they came from; the logits are that config's on the same weights, and differ
    from plain rope (which transformers' GGUF loader falls back to)."""
    from jaxllm.models.config import parse_rope

    rng = np.random.default_rng(3)
    short, long = (1.0 + rng.uniform(0, 0.5, 4)).astype(np.float32).tolist(), (1.0 + rng.uniform(1, 8, 4)).astype(np.float32).tolist()
    meta = {"rope.dimension_count": 8, "rope.scaling.original_context_length": 4, "rope.scaling.attn_factor": 1.5}
    _arch_gguf(tmp_path / "long.gguf", "phi3", meta=meta,
               extra={"rope_factors_long.weight": long, "rope_factors_short.weight": short})
    _arch_gguf(tmp_path / "plain.gguf", "phi3", meta=meta)
    scaled, plain = (jaxllm.load(tmp_path / f"{n}.gguf", tokenizer=False) for n in ("long", "plain"))
    hf = {"rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": long, "attention_factor": 1.5},
          "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "max_position_embeddings": 1024,
          "original_max_position_embeddings": 4}
    assert scaled.config.rope == parse_rope(hf) and scaled.config.rotary_dim == 8
    cfg = plain.config.replace(rope=parse_rope(hf))
    graphdef, _ = loader.abstract_model(cfg, registry.get("Phi3ForCausalLM"), np.float32)
    ref = np.asarray(loader.LoadedModel(cfg, graphdef, plain.params).logits(GGUF_TOKENS))
    err = np.abs(np.asarray(scaled.logits(GGUF_TOKENS)) - ref).max()
    assert err <= 1e-5 * np.abs(ref).max()
    assert np.abs(np.asarray(plain.logits(GGUF_TOKENS)) - ref).max() > 100 * max(err, 1e-7)
    # written back as a Hugging Face folder, transformers reads the same LongRoPE (Phi3Config takes
    # the original context from the top level of config.json)
    import torch
    import transformers

    assert convert.main([str(tmp_path / "long.gguf"), str(tmp_path / "hf"), "--to-hf"]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(GGUF_TOKENS)).logits.numpy()
    assert np.abs(np.asarray(scaled.logits(GGUF_TOKENS)) - theirs).max() <= 1e-4 * np.abs(theirs).max()
