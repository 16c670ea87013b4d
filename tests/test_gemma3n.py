"""Gemma 3n beyond the generic parity tests (which run its tiny config: AltUp's streams, LAuReL, an MLP width
per layer, sparse gates, shared-kv layers, per-layer embeddings of part of the vocabulary): the multimodal
checkpoint read as its text model, Gemma3nTextConfig's defaults, and what is refused."""

import json

import jax
import numpy as np
import pytest
import reference
import torch
import transformers
from safetensors.torch import load_file, save_file

import jaxllm
from jaxllm import research
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))
ARCH = registry.get("Gemma3nForCausalLM")


def test_multimodal_checkpoint_loads_as_its_text_model(tmp_path):
    """A Gemma3nForConditionalGeneration checkpoint: config.json as Gemma3nConfig saves it (text_config nested),
    the text model's tensors under model.language_model, the towers' and embedders' beside them, the head tied by
    the top level. Its forward of text ids is the text model's (Gemma3nModel embeds only ids past vision_config's
    vocab_offset otherwise; its timm vision tower cannot be built here), so transformers' text model is the reference;
    the hidden states of one sequence drop the batch axis, not AltUp's streams."""
    ref = reference.build("Gemma3nForCausalLM", tmp_path, seed=3)
    text = json.loads((tmp_path / "config.json").read_text())
    config = transformers.Gemma3nConfig(text_config={k: v for k, v in text.items() if k != "architectures"})
    config.architectures = ["Gemma3nForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = {"model.language_model." + k.removeprefix("model."): v for k, v in load_file(path).items() if k != "lm_head.weight"}
    tensors.update({f"model.{m}.weight": torch.ones(2) for m in ("vision_tower.timm_model.conv_stem", "audio_tower.conv", "embed_vision.embedding",
                                                          "embed_audio.embedding")})
    save_file(tensors, path, metadata={"format": "pt"})
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert model.config.architecture == "Gemma3nForCausalLM" and model.config.final_softcap == 5.0
    g = model.graphdef  # one compiled call
    logits, hidden = jax.jit(lambda p: (research.logits(g, p, TOKENS), research.hidden_states(g, p, TOKENS[0])))(model.params)
    with torch.no_grad():
        out = ref(torch.as_tensor(TOKENS), output_hidden_states=True)
    assert reference.max_rel_diff(logits, out.logits.numpy()) <= 1e-4
    assert len(hidden) == len(out.hidden_states) and hidden[-1].shape == (3, 20, 64)
    assert reference.max_rel_diff(hidden[-1], out.hidden_states[-1][:, 0].numpy()) <= 1e-4


def test_text_config_of_model_type_alone_reads_as_gemma3n_text_config_does():
    """Every key left to Gemma3nTextConfig's defaults (a multimodal checkpoint's text_config may hold only the
    others): every 5th layer full, the last 15 sharing keys and values, the first 10 gates sparse, AltUp and LAuReL."""
    cfg, hf = ARCH.config({"model_type": "gemma3n_text"}), transformers.Gemma3nTextConfig()
    assert list(cfg.layer_types) == hf.layer_types and cfg.kv_shared_layers == hf.num_kv_shared_layers
    assert [cfg.layer_intermediate_size(i) for i in range(cfg.num_layers)] == hf.intermediate_size
    assert list(cfg.activation_sparsity) == pytest.approx(hf.activation_sparsity_pattern)
    assert (cfg.altup_streams, cfg.altup_active, cfg.altup_correct_scale, cfg.laurel_rank) == (
        hf.altup_num_inputs, hf.altup_active_idx, hf.altup_correct_scale, hf.laurel_rank)
    assert (cfg.rope.theta, cfg.local_rope.theta, cfg.final_softcap, cfg.sliding_window) == (
        hf.rope_parameters["full_attention"]["rope_theta"], hf.rope_parameters["sliding_attention"]["rope_theta"],
        hf.final_logit_softcapping, hf.sliding_window)
    modes = hf.kv_sharing_modes  # "store": the last layer of its type before the shared ones, "reuse": a shared one
    stores = {hf.layer_types[i]: i for i, mode in enumerate(modes) if mode == "store"}
    assert [cfg.kv_source(i) for i in range(cfg.num_layers)] == [
        stores[hf.layer_types[i]] if mode == "reuse" else i for i, mode in enumerate(modes)]


@pytest.mark.parametrize("change, key", [
    (dict(intermediate_size=[96, 64]), "intermediate_size"),
    (dict(activation_sparsity_pattern=[0.5]), "activation_sparsity_pattern"),
    (dict(activation_sparsity_pattern=0.5), "activation_sparsity_pattern"),  # transformers: len() of a float
    (dict(altup_active_idx=3), "altup_active_idx"),
    (dict(num_kv_shared_layers=3), "num_kv_shared_layers"),
    (dict(num_kv_shared_layers=2), "num_kv_shared_layers"),  # layer 1 (full) then shares no earlier full layer
    (dict(num_kv_shared_layers=0, layer_types=["sliding_attention", "chunked_attention", "sliding_attention"]), "chunked_attention"),
])
def test_what_transformers_cannot_run_is_refused_in_one_line(change, key):
    raw = json.loads(json.dumps(dict(ARCH.tiny_config, model_type="gemma3n_text", **change)))
    with pytest.raises(ConfigError, match=key) as err:
        ARCH.config(raw)
    assert "\n" not in str(err.value)


def test_a_width_per_layer_is_refused_where_the_family_reads_one():
    raw = dict(registry.get("LlamaForCausalLM").tiny_config, model_type="llama")
    with pytest.raises(ConfigError, match="'intermediate_size' is a list"):
        registry.get("LlamaForCausalLM").config(dict(raw, intermediate_size=[raw["intermediate_size"]] * raw["num_hidden_layers"]))


# google/gemma-3n-E2B-it's config.json as the Hub spells it (v4 rope keys, a width and a sparsity per layer, keys
# Gemma3nTextConfig does not have; the towers' configs left out: their defaults)
E2B = {"architectures": ["Gemma3nForConditionalGeneration"], "eos_token_id": [1, 106], "model_type": "gemma3n", "torch_dtype": "bfloat16",
       "text_config": {"activation_sparsity_pattern": [0.95] * 10 + [0.0] * 20, "altup_active_idx": 0, "altup_coef_clip": 120.0,
                       "altup_correct_scale": True, "altup_lr_multiplier": 1.0, "altup_num_inputs": 4, "final_logit_softcapping": 30.0,
                       "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2048, "hidden_size_per_layer_input": 256,
                       "intermediate_size": [8192] * 30, "laurel_rank": 64, "max_position_embeddings": 32768,
                       "layer_types": ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(30)],
                       "model_type": "gemma3n_text", "num_attention_heads": 8, "num_hidden_layers": 30, "num_key_value_heads": 2,
                       "num_kv_shared_layers": 10, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
                       "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "vocab_size": 262400,
                       "vocab_size_per_layer_input": 262144}}


def test_hub_config_reads_as_transformers_reads_it():
    text, wrapper = registry.unwrap(json.loads(json.dumps(E2B)))
    assert wrapper.name == "Gemma3nForConditionalGeneration" and text["architectures"] == ["Gemma3nForCausalLM"]
    cfg, hf = ARCH.config(text), transformers.Gemma3nConfig(**json.loads(json.dumps(E2B)))
    t = hf.text_config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.head_dim, list(cfg.layer_types), cfg.kv_shared_layers) == (
        t.vocab_size, t.hidden_size, t.num_hidden_layers, t.head_dim, t.layer_types, t.num_kv_shared_layers)
    assert [cfg.layer_intermediate_size(i) for i in range(cfg.num_layers)] == t.intermediate_size
    assert list(cfg.activation_sparsity) == pytest.approx(t.activation_sparsity_pattern)
    assert (cfg.rope.theta, cfg.local_rope.theta) == (t.rope_parameters["full_attention"]["rope_theta"],
                                                      t.rope_parameters["sliding_attention"]["rope_theta"])
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings and set(cfg.eos_token_ids) == {1, 106}
