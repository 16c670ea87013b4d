"""Gemma 4 beyond the generic parity tests (which run its tiny config: sliding and full layers of
different head sizes, values as keys, shared-kv layers, per-layer embeddings, experts beside the
MLP): the multimodal checkpoint read as its text model with learned layer scalars, the router
against transformers', the shared-kv layers keeping no pages, and what is refused."""

import json

import numpy as np
import pytest
import reference
import torch
import transformers

import jaxllm
from jaxllm.engine import Engine
from jaxllm.errors import ConfigError
from jaxllm.models import registry
from jaxllm.models.attention import kv_cache_bytes

TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))
ARCH = registry.get("Gemma4ForCausalLM")
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
              head_dim=8, patch_size=4, pooling_kernel_size=2, position_embedding_size=64)


# Gemma4ForConditionalGeneration (a vision tower beside the text model); Gemma4UnifiedForConditionalGeneration (encoder-free:
# its optional patch and audio embedders left out)
MULTIMODAL = {"Gemma4ForCausalLM": lambda text: transformers.Gemma4Config(text_config=text, vision_config=VISION),
              "Gemma4UnifiedForCausalLM": lambda text: transformers.Gemma4UnifiedConfig(text_config=text)}


@pytest.mark.parametrize("arch", sorted(MULTIMODAL))
def test_multimodal_checkpoint_with_layer_scalars_loads_as_its_text_model(arch, tmp_path):
    """The multimodal model called with token ids alone, every layer_scalar away from 1 (randomize
    leaves buffers at their init): the same logits and greedy tokens."""
    torch.manual_seed(0)
    config = MULTIMODAL[arch](dict(registry.get(arch).tiny_config))
    ref = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    reference.randomize(ref, 0)
    with torch.no_grad():
        for name, buffer in ref.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(0.5 + torch.rand(1))
    ref.eval().save_pretrained(tmp_path)
    model = jaxllm.load(tmp_path)
    assert model.config.architecture == arch and model.config.final_softcap == 5.0
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= 1e-4
    prompt = TOKENS[0, :9].tolist()
    with torch.no_grad():
        ids = torch.tensor([prompt])
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, 9:].tolist()
    assert model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=8, ignore_eos=True)).token_ids == want


def test_unified_text_config_builds_no_per_layer_embeddings_or_experts():
    """Gemma4UnifiedTextConfig left to its defaults (a 1,024-token window, 262,144 positions), and Gemma 4's PLE and
    expert keys given anyway: Gemma4UnifiedTextModel builds neither, and neither do we."""
    arch = registry.get("Gemma4UnifiedForCausalLM")
    hf = transformers.Gemma4UnifiedTextConfig()
    cfg = arch.config({"model_type": "gemma4_unified_text", "hidden_size_per_layer_input": 256, "enable_moe_block": True,
                       "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 64})
    assert (cfg.sliding_window, cfg.max_position_embeddings, cfg.head_dim) == (
        hf.sliding_window, hf.max_position_embeddings, hf.per_layer_config[0].head_dim)
    assert (cfg.per_layer_input_size, cfg.num_experts) == (0, 0)


def test_routing_matches_transformers(tmp_path):
    """The router (scale-free norm, learned scale, softmax, top k renormalised, per-expert scales)
    gives transformers' expert ids and weights."""
    ref = reference.build("Gemma4ForCausalLM", tmp_path, seed=4)
    experts = jaxllm.load(tmp_path).module.model.layers[0].experts
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    weights, ids = (np.asarray(a) for a in experts.route(x))
    with torch.no_grad():
        _, hf_weights, hf_ids = ref.model.layers[0].router(torch.as_tensor(x))
    np.testing.assert_array_equal(np.sort(ids, -1), np.sort(hf_ids.numpy(), -1))
    np.testing.assert_allclose(np.sort(weights, -1), np.sort(hf_weights.numpy(), -1), rtol=1e-5, atol=1e-7)


def test_shared_kv_layers_keep_no_pages(tmp_path):
    """Layers 3 and 4 read layers 1's and 2's keys and values: the engine's pool holds none of
    theirs, and the KV bytes count only the three layers that cache (16-wide sliding heads x 2,
    a 32-wide full head x 1)."""
    reference.build("Gemma4ForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    cfg = model.config
    assert [cfg.kv_shape(i) for i in range(5)] == [(2, 16), (2, 16), (1, 32), None, None]
    assert kv_cache_bytes(cfg, 1, np.float32) == 2 * 4 * (2 * 16 + 2 * 16 + 32)
    engine = Engine(model, batch_size=2, max_len=64, page_size=4)
    assert [c is None for c in engine.runner.new_state().cache] == [False, False, False, True, True]


def test_text_config_of_model_type_alone_reads_as_gemma4_text_config_does():
    """Every key left to Gemma4TextConfig's defaults (a multimodal checkpoint's text_config may hold
    only the others): the full layers' 512-wide heads, the layer pattern, ropes and per-layer embeddings."""
    cfg, hf = ARCH.config({"model_type": "gemma4_text"}), transformers.Gemma4TextConfig()
    full = hf.per_layer_config[hf.layer_types.index("full_attention")]
    assert (cfg.layer_head_dim(5), cfg.layer_kv_heads(5), cfg.head_dim, cfg.num_kv_heads) == (
        full.head_dim, full.num_key_value_heads, hf.per_layer_config[0].head_dim, hf.per_layer_config[0].num_key_value_heads)
    assert list(cfg.layer_types) == hf.layer_types and cfg.sliding_window == hf.sliding_window
    rope = hf.rope_parameters
    assert (cfg.rope.type, cfg.rope.theta, cfg.rope.partial_rotary_factor, cfg.local_rope.theta) == (
        "proportional", rope["full_attention"]["rope_theta"], rope["full_attention"]["partial_rotary_factor"],
        rope["sliding_attention"]["rope_theta"])
    assert (cfg.per_layer_input_size, cfg.per_layer_vocab_size, cfg.num_experts) == (
        hf.hidden_size_per_layer_input, hf.vocab_size_per_layer_input, 0)


@pytest.mark.parametrize("change, key", [
    (dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(num_kv_shared_layers=5), "num_kv_shared_layers"),
    (dict(num_kv_shared_layers=3), "num_kv_shared_layers"),  # layer 2 (full) then shares no earlier full layer
    (dict(per_layer_config={"2": {"intermediate_size": 8}}), "intermediate_size"),
    (dict(per_layer_config={"2": {"head_dim": 64}}), "per_layer_config"),  # full layers of two head sizes
    (dict(global_head_dim=None), "global_head_dim"),
    (dict(enable_moe_block=True, num_experts=None), "num_experts"),
])
def test_what_transformers_cannot_run_is_refused_in_one_line(change, key):
    raw = json.loads(json.dumps(dict(ARCH.tiny_config, model_type="gemma4_text", **change)))
    with pytest.raises(ConfigError, match=key) as err:
        ARCH.config(raw)
    assert "\n" not in str(err.value)


def test_data_and_tensor_parallel_engine_matches_one_device(tmp_path):
    """On a dp=4, tp=2 mesh the engine's per-layer pools (two shapes, none for the shared-kv layers)
    split over dp by pages and over tp by kv heads where they divide: the same greedy tokens."""
    reference.build("Gemma4ForCausalLM", tmp_path, seed=2)
    prompts = [list(range(3, 30)), list(range(5, 17)), list(range(9, 20))]
    params = jaxllm.SamplingParams(max_new_tokens=6, ignore_eos=True)
    want = [r.token_ids for r in jaxllm.load(tmp_path).generate(prompts, params)]
    model = jaxllm.load(tmp_path, mesh="dp=4,tp=2")
    engine = Engine(model, batch_size=4, max_len=64, page_size=4)
    assert [r.token_ids for r in model.generate(prompts, params, engine=engine)] == want
