"""Mixture of experts: routing equals transformers', and the dispatch computes only the chosen
experts for each token (the grouped matmuls have tokens x k rows, not tokens x experts). Expert
parallelism (mesh axis ep, on the 8 simulated CPU devices of conftest): each device holds and runs
X / ep experts, and the model gives the one-device logits and greedy tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import torch

import jaxllm
from jaxllm import sharding
from jaxllm.errors import ConfigError
from jaxllm.models import registry
from jaxllm.models.experts import MoE

MOE = ["MixtralForCausalLM", "Qwen3MoeForCausalLM", "GptOssForCausalLM"]
PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
GREEDY = jaxllm.SamplingParams(max_new_tokens=8, ignore_eos=True)
TOKENS = np.random.default_rng(1).integers(0, 128, (2, 20))


@pytest.fixture(scope="module", params=MOE)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return reference.build(request.param, folder, seed=5), jaxllm.load(folder)


def _hf_router(ref):
    layer = ref.model.layers[0]
    block = getattr(layer, "block_sparse_moe", None) or layer.mlp
    return getattr(block, "gate", None) or block.router  # GraniteMoE's router.layer; gpt-oss's mlp.router, with a bias


def test_routing_matches_transformers(pair):
    _check_routing(*pair)


def _check_routing(ref, model):
    """Layer 0's expert ids and weights are transformers' on 256 random rows; returns the weights."""
    moe = model.module.model.layers[0].mlp
    x = np.random.default_rng(0).normal(size=(256, model.config.hidden_size)).astype(np.float32)
    weights, experts = (np.asarray(a) for a in moe.route(jnp.asarray(x)))
    with torch.no_grad():
        _, hf_weights, hf_experts = _hf_router(ref)(torch.as_tensor(x))
        router = _hf_router(ref)
        probs = torch.softmax(torch.nn.functional.linear(torch.as_tensor(x), router.weight, getattr(router, "bias", None)), -1).numpy()
    # Only rows where the k-th and (k+1)-th probabilities are clearly apart: no top-k ties.
    k = model.config.experts_per_token
    top = -np.sort(-probs, axis=-1)
    clear = (top[:, k - 1] - top[:, k]) > 1e-4
    assert clear.sum() >= 200, "the test inputs should route unambiguously"
    np.testing.assert_array_equal(experts[clear], hf_experts.numpy()[clear])
    np.testing.assert_allclose(weights[clear], hf_weights.float().numpy()[clear], rtol=1e-5, atol=1e-7)
    assert np.allclose(weights.sum(-1), 1.0) == model.config.norm_topk_prob
    return weights


def test_dispatch_computes_only_the_chosen_experts(pair):
    _, model = pair
    cfg = model.config
    moe = model.module.model.layers[0].mlp
    b, t = 4, 16
    x = jnp.zeros((b, t, cfg.hidden_size), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: moe(x))(x)
    grouped = _ragged_dots(jaxpr.jaxpr)
    dense = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(grouped) == 3  # gate, up, down: each over the sorted (token, expert) assignments
    rows = {e.invars[0].aval.shape[0] for e in grouped}
    assert rows == {b * t * cfg.experts_per_token}, rows
    # The only dense matmul is the router's [tokens, embed] x [embed, experts].
    assert [e.outvars[0].aval.shape for e in dense] == [(b * t, cfg.num_experts)]
    f = cfg.moe_intermediate_size or cfg.intermediate_size
    flops = sum(2 * e.invars[0].aval.shape[0] * e.invars[0].aval.shape[1] * e.outvars[0].aval.shape[1] for e in grouped)
    assert flops == 2 * 3 * b * t * cfg.experts_per_token * cfg.hidden_size * f
    print(f"{cfg.architecture}: expert FLOPs {flops:,} = k/X = {cfg.experts_per_token}/{cfg.num_experts} of dense")


def test_gathered_experts_equal_the_grouped_products(pair, monkeypatch):
    """The decode form (each assignment's expert matrices taken on their own, experts.expert_form)
    gives ragged_dot's outputs: over all the experts, over one device's range of them (expert
    parallelism), with int8 stacks, and through the whole model's logits on one device and on
    meshes that split the experts over tp and over ep."""
    _, model = pair
    x_n = model.config.num_experts
    x = jnp.asarray(np.random.default_rng(3).normal(size=(12, model.config.hidden_size)), jnp.float32)
    for m in (model, jaxllm.load(model.path, quantize="int8", group_size=32)):
        moe = m.module.model.layers[0].mlp
        weights, experts = moe.route(x)
        stacks = moe._stacks()
        half = [tuple(None if a is None else a[x_n // 2 :] for a in s) for s in stacks]
        for s, first in ((stacks, None), (half, x_n // 2)):
            want = np.asarray(moe._experts(x, weights, experts, s, first, form="ragged"))
            got = np.asarray(moe._experts(x, weights, experts, s, first, form="gather"))
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    want = np.asarray(model.logits(TOKENS[:, :7]))
    meshes = [jaxllm.load(model.path, mesh=spec) for spec in ("fsdp=2,tp=4", "ep=2,tp=4")]
    asked = []
    monkeypatch.setattr("jaxllm.models.experts.expert_form", lambda assignments, experts: asked.append(experts) or "gather")
    jax.clear_caches()  # the jitted logits were traced with the grouped products
    try:
        for m in [model] + meshes:
            err = reference.max_rel_diff(m.logits(TOKENS[:, :7]), want)
            print(f"{model.config.architecture} {m.mesh.shape if m.mesh else 'one device'}: max rel diff {err:.1e}")
            assert err <= 1e-5
        assert set(asked) == {x_n, x_n // 2}  # traced anew through the patched choice, with and without ep
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_sharded_experts_match_one_device(pair):
    """Expert kernels split over tp on their mlp axis (fsdp on embed) give the one-device logits."""
    _, model = pair
    sharded = jaxllm.load(model.path, mesh="fsdp=2,tp=4")
    kernel = sharded.params["model"]["layers"][0]["mlp"]["gate_proj"][...]
    assert tuple(kernel.sharding.spec) == (None, "fsdp", "tp")
    assert reference.max_rel_diff(sharded.logits(TOKENS), model.logits(TOKENS)) <= 1e-5


def _greedy(model, prompts, completions) -> bool:
    """Whether each completion is what greedy decoding on `model` continues its prompt with: every
    token the argmax of the logits after the tokens before it (one teacher-forced call; padding
    on the right is after every position read, so the causal mask keeps it out). Padded to TOKENS' width at least:
    the logits program the tests compiled for TOKENS serves this call too (PROMPTS' 19 positions took one more)."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(*map(len, seqs), TOKENS.shape[1])
    logits = np.asarray(model.logits([s + [0] * (width - len(s)) for s in seqs]))
    return all(logits[i, len(p) - 1 : len(s) - 1].argmax(-1).tolist() == c
               for i, (p, c, s) in enumerate(zip(prompts, completions, seqs)))


def _moe_block(model, layer=0):
    return model.params["model"]["layers"][layer]["mlp"]


def _ragged_dots(jaxpr):
    """The ragged_dot equations of a jaxpr and of the jaxprs nested in it (shard_map's body)."""
    out = []
    for e in jaxpr.eqns:
        if e.primitive.name.startswith("ragged_dot"):
            out.append(e)
        for value in e.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                out += _ragged_dots(inner)
    return out


def test_mesh_specs_with_ep():
    assert sharding.parse_spec("ep=2,tp=4", 8) == {"dp": 1, "fsdp": 1, "tp": 4, "ep": 2}
    assert sharding.parse_spec("dp=2,ep=4", 8)["ep"] == 4
    assert sharding.parse_spec("auto", 8) == {"dp": 1, "fsdp": 1, "tp": 8, "ep": 1}
    assert sharding.make_mesh("ep=8").shape["ep"] == 8
    with pytest.raises(ConfigError, match="unknown: use dp, fsdp, tp, ep$"):
        sharding.make_mesh("xp=8")


@pytest.mark.parametrize("layout", ["ep with tp", "ep with dp"])
def test_expert_parallel_matches_one_device(pair, layout):
    """Each device holds X / ep experts of every stack (the router whole) and runs only those; the
    logits and greedy tokens (the engine; with dp, its shard_map over dp around the one over ep)
    are one device's."""
    _, model = pair
    x = model.config.num_experts
    spec = "ep=2,tp=4" if layout == "ep with tp" else "dp=2,ep=4" if x % 4 == 0 else "dp=2,fsdp=2,ep=2"
    sharded = jaxllm.load(model.path, mesh=spec)
    ep = sharded.mesh.shape["ep"]
    block = _moe_block(sharded)
    biases = [f"{name}_bias" for name in MoE.EXPERTS] if model.config.expert_bias else []  # gpt-oss: split with their stacks
    for name in list(MoE.EXPERTS) + biases:
        stack = block[name][...]
        assert stack.sharding.spec[0] == "ep", (name, stack.sharding.spec)
        assert {s.data.shape[0] for s in stack.addressable_shards} == {x // ep}
    assert "ep" not in tuple(block["gate"]["kernel"][...].sharding.spec)  # the router: whole on every device
    # Each device's three grouped products run over its own X / ep experts.
    moe = sharded.module.model.layers[0].mlp
    jaxpr = jax.make_jaxpr(lambda h: moe(h))(jnp.zeros((2, 8, model.config.hidden_size), jnp.float32))
    assert [e.invars[1].aval.shape[0] for e in _ragged_dots(jaxpr.jaxpr)] == [x // ep] * 3
    err = reference.max_rel_diff(sharded.logits(TOKENS), model.logits(TOKENS))
    print(f"{model.config.architecture} {spec}: logits max rel diff {err:.1e}")
    assert err <= 1e-5
    completions = [r.token_ids for r in sharded.generate(PROMPTS, GREEDY)]
    assert [len(c) for c in completions] == [GREEDY.max_new_tokens] * len(PROMPTS)
    assert _greedy(model, PROMPTS, completions)


def test_quantized_experts_under_expert_parallelism(pair):
    """int4 expert stacks (asymmetric: scales and offsets) split over ep with the experts: the same
    quantized model's one-device logits."""
    _, model = pair
    one = jaxllm.load(model.path, quantize="int4", group_size=32)
    split = jaxllm.load(model.path, mesh="ep=2,tp=4", quantize="int4", group_size=32)
    block = _moe_block(split)
    assert block["gate_proj"][...].dtype == jnp.int4
    for name in ("gate_proj", "gate_proj_scale", "gate_proj_offset", "down_proj_scale"):
        scale = block[name][...]
        assert scale.sharding.spec[0] == "ep", (name, scale.sharding.spec)
        assert scale.addressable_shards[0].data.shape[0] == model.config.num_experts // 2
    assert reference.max_rel_diff(split.logits(TOKENS), one.logits(TOKENS)) <= 1e-5


def test_ep_not_dividing_the_experts_is_refused(pair):
    _, model = pair
    x = model.config.num_experts
    ep = next(n for n in (8, 4, 2) if x % n)
    with pytest.raises(ConfigError) as info:
        jaxllm.load(model.path, mesh=f"ep={ep},tp={8 // ep}" if ep < 8 else "ep=8")
    message = str(info.value)
    assert "\n" not in message
    assert f"'expert' dimension ({x}) is not divisible by ep={ep}: choose an ep size that divides {x}" in message


def test_dense_model_on_an_ep_mesh(llama):
    """A model without experts is replicated over ep: the engine (shard_map over dp) still runs."""
    model = jaxllm.load(llama.path, mesh="dp=2,ep=2,tp=2")
    assert model.params["model"]["layers"][0]["mlp"]["up_proj"]["kernel"][...].sharding.spec[0] == "tp"
    completions = [r.token_ids for r in model.generate(PROMPTS, GREEDY)]
    assert [len(c) for c in completions] == [GREEDY.max_new_tokens] * len(PROMPTS)
    assert _greedy(llama, PROMPTS, completions)


def test_shared_expert_on_an_ep_tp_fsdp_mesh(tmp_path):
    """Qwen2-MoE's shared expert (a gated MLP beside the routed experts, scaled by a sigmoid gate) on
    an ep=2, tp=2, fsdp=2 mesh: its kernels split as any MLP's (tp, fsdp) and whole on each ep group
    while the expert stacks split over ep; its gate float under int4. Logits are one device's, float and int4."""
    reference.build("Qwen2MoeForCausalLM", tmp_path, seed=5)
    spec = "ep=2,tp=2,fsdp=2"
    for quantize in (None, "int4"):
        one = jaxllm.load(tmp_path, quantize=quantize, group_size=32 if quantize else None)
        split = jaxllm.load(tmp_path, mesh=spec, quantize=quantize, group_size=32 if quantize else None)
        block = _moe_block(split)
        assert block["gate_proj"][...].sharding.spec[0] == "ep"
        for name in ("gate_proj", "up_proj", "down_proj"):
            kernel = block["shared_expert"][name]["kernel"][...]
            assert set(kernel.sharding.spec) == {"tp", "fsdp"}, (name, kernel.sharding.spec)
            assert kernel.dtype == (jnp.int4 if quantize else jnp.float32)
        assert block["shared_expert_gate"]["kernel"][...].dtype == jnp.float32
        err = reference.max_rel_diff(split.logits(TOKENS), one.logits(TOKENS))
        print(f"Qwen2-MoE {spec} {quantize or 'float'}: logits max rel diff {err:.1e}")
        assert err <= 1e-5


@pytest.mark.parametrize("arch", ["Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"])
def test_decoder_sparse_step_zero_is_refused(arch):
    """transformers divides by decoder_sparse_step choosing each layer's block: 0 fails there (a
    ZeroDivisionError), and is refused in one line here; with no layer left to route, it is unread."""
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match="decoder_sparse_step is 0, which leaves no layer a step") as info:
        spec.config(dict(spec.tiny_config, decoder_sparse_step=0))
    assert "\n" not in str(info.value)
    assert spec.config(dict(spec.tiny_config, decoder_sparse_step=0, mlp_only_layers=[0, 1, 2])).dense_layers == (0, 1, 2)


def test_qwen2_moe_window_switched_on_without_a_window_is_refused():
    """Qwen2-MoE's forward builds the sliding mask whatever the layers, and fails on a null window
    (use_sliding_window true); refused in one line here, as every layer's window would be unset."""
    spec = registry.get("Qwen2MoeForCausalLM")
    with pytest.raises(ConfigError, match="sets use_sliding_window but its sliding_window is null") as info:
        spec.config(dict(spec.tiny_config, sliding_window=None))
    assert "\n" not in str(info.value)


def test_granite_routing_and_shared_mlp_on_an_ep_mesh(tmp_path):
    """GraniteMoeShared: the router's top k logits, then softmax over those k, gives transformers'
    expert ids and weights; on an ep=2, tp=2, fsdp=2 mesh the expert stacks (read from the fused
    input_linear) split over ep and the shared MLP (no gate) as any MLP: one device's logits."""
    ref = reference.build("GraniteMoeSharedForCausalLM", tmp_path, seed=5)
    model = jaxllm.load(tmp_path)
    assert model.config.router == "topk_softmax" and not model.config.shared_expert_gated
    _check_routing(ref, model)
    split = jaxllm.load(tmp_path, mesh="ep=2,tp=2,fsdp=2")
    block = _moe_block(split)
    assert block["up_proj"][...].sharding.spec[0] == "ep"
    assert set(block["shared_expert"]["up_proj"]["kernel"][...].sharding.spec) == {"tp", "fsdp"}
    assert "shared_expert_gate" not in block
    err = reference.max_rel_diff(split.logits(TOKENS), model.logits(TOKENS))
    print(f"GraniteMoeShared ep=2,tp=2,fsdp=2: logits max rel diff {err:.1e}")
    assert err <= 1e-5


@pytest.mark.parametrize("arch", ["DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"])
def test_deepseek_routing_matches_transformers(arch, tmp_path):
    """DeepSeek's group-limited routers give transformers' expert ids and weights on 256 random rows:
    V3's sigmoid scores, chosen with a score bias (random here) among the best groups by their top-two
    sums, renormalised and scaled; V2's softmax scores within the groups of the highest score, scaled."""
    ref = reference.build(arch, tmp_path, seed=5)
    router = ref.model.layers[1].mlp.gate
    if arch == "DeepseekV3ForCausalLM":
        with torch.no_grad():
            router.e_score_correction_bias.copy_(0.3 * torch.randn(8, generator=torch.Generator().manual_seed(3)))
        ref.save_pretrained(tmp_path)
    moe = jaxllm.load(tmp_path).module.model.layers[1].mlp
    x = np.random.default_rng(0).normal(size=(256, moe.gate.kernel.shape[-1])).astype(np.float32)
    weights, experts = (np.asarray(a) for a in moe.route(jnp.asarray(x)))
    with torch.no_grad():
        _, hf_weights, hf_experts = router(torch.as_tensor(x))
    mine, theirs = np.argsort(experts, -1), np.argsort(hf_experts.numpy(), -1)  # transformers' top k is unsorted
    np.testing.assert_array_equal(np.take_along_axis(experts, mine, -1), np.take_along_axis(hf_experts.numpy(), theirs, -1))
    np.testing.assert_allclose(np.take_along_axis(weights, mine, -1), np.take_along_axis(hf_weights.numpy(), theirs, -1),
                               rtol=1e-5, atol=1e-7)
    # A bfloat16 load keeps the router float32 (transformers' _keep_in_fp32_modules_strict): the float32
    # model's routing of the same bfloat16 hidden states
    half = jaxllm.load(tmp_path, dtype="bfloat16").module.model.layers[1].mlp
    assert half.gate.kernel[...].dtype == jnp.float32 and half.gate_proj[...].dtype == jnp.bfloat16
    xh = jnp.asarray(x, jnp.bfloat16)
    for got, want in zip(half.route(xh), moe.route(xh.astype(jnp.float32))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


LONGROPE = dict(type="longrope", short_factor=[1.0] * 8, long_factor=[2.0] * 8, original_max_position_embeddings=8)


@pytest.mark.parametrize("arch, change, message", [
    ("OlmoeForCausalLM", dict(head_dim=8), r"head_dim 8 with hidden_size 64 and 4 heads: OLMoE's q_norm spans hidden_size"),
    ("PhimoeForCausalLM", dict(rope_scaling=dict(LONGROPE, short_mscale=1.2, long_mscale=1.3)),
     r"short_mscale 1\.2 and long_mscale 1\.3: PhimoeForCausalLM needs both, and jaxllm reads them equal"),
    ("PhimoeForCausalLM", dict(rope_scaling=LONGROPE), r"short_mscale None and long_mscale None"),
    ("PhimoeForCausalLM", dict(rope_scaling=dict(type="linear", factor=2.0)), r"rope type 'linear' for PhimoeForCausalLM"),
    ("PhimoeForCausalLM", dict(num_local_experts=1), r"num_local_experts=1: PhiMoE's router picks two experts"),
    ("DeepseekV3ForCausalLM", dict(n_group=3), r"n_group=3 does not divide the 8 routed experts into equal groups"),
    ("DeepseekV3ForCausalLM", dict(n_group=8, topk_group=2), r"n_group=8 leaves 1 expert per group, and each group is scored"),
    ("DeepseekV3ForCausalLM", dict(topk_group=1, num_experts_per_tok=3), r"num_experts_per_tok=3 is more than the 2 experts"),
    ("DeepseekV3ForCausalLM", dict(topk_group=5), r"topk_group=5 picks more groups than n_group=4"),
    ("DeepseekV3ForCausalLM", dict(num_key_value_heads=2), r"num_key_value_heads=2 with 4 attention heads: latent attention"),
    ("DeepseekV2ForCausalLM", dict(topk_method="noaux_tc"), r"topk_method 'noaux_tc' is not supported; supported: greedy, "),
    ("DeepseekV2ForCausalLM", dict(n_group=None), r"group_limited_greedy needs n_group and topk_group"),
    ("DeepseekV3ForCausalLM", dict(rope_parameters=dict(rope_type="yarn", factor=None, mscale_all_dim=1.0, rope_theta=1e4,
                                                         original_max_position_embeddings=64)), r"rope factor is null beside mscale_all_dim"),
])
def test_moe_configs_it_cannot_run_are_refused(arch, change, message):
    """Each in one line: OLMoE's head_dim
    whose heads do not span hidden_size (transformers' q_norm fails); PhiMoE's rope scaled by unequal
    or missing mscales (transformers refuses them missing), any rope but default and LongRoPE, and
    fewer than the two experts its router picks; DeepSeek's groups that do not split the experts, that
    the router cannot score or pick, or that leave fewer experts than it chooses (transformers fails or
    chooses outside them), kv heads other than the heads, V3's topk_method on V2, V2's
    group-limited routing without groups, and a null YaRN factor beside mscale_all_dim (which
    transformers' DeepSeek attention scales by). A null clamp (clip_qkv) is none."""
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match=message) as info:
        spec.config(dict(spec.tiny_config, **change))
    assert "\n" not in str(info.value)
    olmoe = registry.get("OlmoeForCausalLM")
    assert olmoe.config(dict(olmoe.tiny_config, clip_qkv=None, head_dim=16)).head_dim == 16


def test_phimoe_sparsemixer_matches_transformers(tmp_path):
    """PhiMoE's router (sparsemixer, inference): two picks, each weighted by its softmax over the
    logits within the jitter of the best left: transformers' ids and weights, on rows where the
    softmax keeps the pick alone (weight 1) and where it keeps others beside it, for both picks."""
    ref = reference.build("PhimoeForCausalLM", tmp_path, seed=5)
    weights = _check_routing(ref, jaxllm.load(tmp_path))
    alone = np.isclose(weights, 1.0, rtol=0, atol=1e-7)
    assert alone.any(0).all() and (~alone).any(0).all(), alone.mean(0)


def test_ergo_normed_experts_under_expert_parallelism_and_either_dispatch(tmp_path, monkeypatch):
    """Ergo's ungated experts, each output RMS-normed by its expert's own weight row (expert_norm [X, E], split over ep
    with the stacks): an ep=2,tp=4 mesh and the gathered products (decode's form) give the grouped one-device logits."""
    reference.build("ErgoForCausalLM", tmp_path, seed=5)
    one, split = jaxllm.load(tmp_path), jaxllm.load(tmp_path, mesh="ep=2,tp=4")
    block = _moe_block(split, layer=1)  # layer 0: the tiny config's dense layer
    assert "gate_proj" not in block  # ungated: up and down stacks alone
    for name in ("up_proj", "down_proj", "expert_norm"):
        assert block[name][...].sharding.spec[0] == "ep", name
    want = np.asarray(one.logits(TOKENS))
    assert reference.max_rel_diff(split.logits(TOKENS), want) <= 1e-5
    asked = []
    monkeypatch.setattr("jaxllm.models.experts.expert_form", lambda assignments, experts: asked.append(experts) or "gather")
    jax.clear_caches()
    try:
        for m in (one, split):
            assert reference.max_rel_diff(m.logits(TOKENS), want) <= 1e-5
        assert set(asked) == {8, 4}  # traced anew through the gathered products, with and without ep
    finally:
        monkeypatch.undo()
        jax.clear_caches()


@pytest.mark.parametrize("arch", ["Ernie4_5_MoeForCausalLM", "Llama4ForCausalLM"])
def test_router_options_under_expert_parallelism(arch, tmp_path):
    """ERNIE 4.5's selection bias (replicated with the router) and Llama 4's sigmoid weights scaling
    each expert's input (applied inside each device's expert range) split over ep: one device's logits."""
    reference.build(arch, tmp_path, seed=5)
    one, split = jaxllm.load(tmp_path), jaxllm.load(tmp_path, mesh="ep=2,tp=4")
    assert _moe_block(split, layer=1)["gate_proj"][...].sharding.spec[0] == "ep"  # layer 1: routed in both tiny configs
    assert reference.max_rel_diff(split.logits(TOKENS), one.logits(TOKENS)) <= 1e-5
