"""Multimodal checkpoints loaded as their language model (Gemma3ForConditionalGeneration, as
google/gemma-3-4b-it ships): text logits and greedy tokens against transformers' multimodal model
called with token ids alone, both spellings of the text tensors' names, the config as the Hub
spells it, conversion both ways, and the report of `python -m jaxllm.inspect`."""

import json

import numpy as np
import pytest
import reference
import torch
import transformers
from safetensors.torch import load_file, save_file

import jaxllm
from jaxllm import inspect as jinspect
from jaxllm.convert import convert
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOL = 1e-4
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))  # past the tiny sliding window (8)
# A SigLIP tower of one layer: 28 / 14 = 2 patches a side, pooled to mm_tokens_per_image 4 (2 x 2)
VISION = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, image_size=28, patch_size=14)


def build(folder, seed: int = 0, text=None, **top):
    """transformers' Gemma3ForConditionalGeneration of the tiny Gemma 3 text config (and `text`'s
    changes), seeded random weights, saved to `folder`; the eval-mode float32 model."""
    torch.manual_seed(seed)
    text_config = dict(registry.get("Gemma3ForCausalLM").tiny_config, **(text or {}))
    config = transformers.Gemma3Config(text_config=text_config, vision_config=VISION, mm_tokens_per_image=4, **top)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    reference.randomize(model, seed)
    model.eval().save_pretrained(folder)
    return model


def reload(folder, cls=transformers.AutoModelForCausalLM):
    return cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3mm")
    return build(folder), folder


def _rename(folder, rename):
    path = folder / "model.safetensors"
    save_file({rename(k): v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})


def _as_class_names(name: str) -> str:
    """transformers 5.x's own names (model.language_model.*, lm_head, model.vision_tower.*) of
    the names its save_pretrained writes (language_model.model.*, as 4.x saved them)."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    if name.startswith("language_model."):
        return name.removeprefix("language_model.")
    return "model." + name


def _edit_config(folder, edit):
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))


def _as_hub_spells_it(raw):
    """The text_config as the Hub's files hold it: only the keys whose values differ from
    Gemma3TextConfig's defaults (transformers 4.x saved a sub-config as that difference), rope in
    v4 keys."""
    defaults = transformers.Gemma3TextConfig().to_dict()
    text = raw["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_scaling"] = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
    text["rope_theta"], text["rope_local_base_freq"] = rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"]
    raw["text_config"] = {k: v for k, v in text.items() if k in ("model_type", "rope_scaling") or defaults.get(k, object()) != v}
    raw.pop("tie_word_embeddings")  # Gemma3Config's default (true)


def test_text_logits_and_greedy_tokens_match_transformers(saved):
    ref, folder = saved
    model = jaxllm.load(folder)
    assert model.config.architecture == "Gemma3ForCausalLM" and model.config.vocab_size == 128
    err = reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS))
    assert err <= TOL, err
    prompt = np.random.default_rng(7).integers(0, 128, 9).tolist()
    got = model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=16, ignore_eos=True))
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert got.token_ids == out[0, len(prompt):].tolist()


def test_class_names_and_the_hub_config_spelling_load_the_same(saved, tmp_path):
    """model.language_model.* names (5.x's classes), the vision tower under model.*, and a
    text_config holding only what differs from Gemma3TextConfig's defaults (vocab_size, heads,
    ... left out, as google/gemma-3-4b-it's): transformers reloads it as the reference."""
    ref, folder = saved
    ref.save_pretrained(tmp_path)
    _rename(tmp_path, _as_class_names)
    _edit_config(tmp_path, _as_hub_spells_it)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "vocab_size" not in raw["text_config"] or raw["text_config"]["vocab_size"] == 128
    expected = reference.torch_logits(reload(tmp_path), TOKENS)
    assert reference.max_rel_diff(expected, reference.torch_logits(ref, TOKENS)) <= TOL  # the same model, as transformers reads it
    assert reference.max_rel_diff(jaxllm.load(tmp_path, tokenizer=False).logits(TOKENS), expected) <= TOL


def test_the_wrapper_ties_and_caps_as_its_own_code_does(tmp_path):
    """Gemma3ForConditionalGeneration unties its head by the top-level tie_word_embeddings
    (the text config's says tied), and never applies the text config's final_logit_softcapping."""
    build(tmp_path, seed=1, text=dict(final_logit_softcapping=1.0, tie_word_embeddings=True), tie_word_embeddings=False)
    assert "language_model.lm_head.weight" in load_file(tmp_path / "model.safetensors")
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert not model.config.tie_word_embeddings and model.config.final_softcap is None
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(reload(tmp_path), TOKENS)) <= TOL


def test_conversion_both_ways_gives_the_text_model(saved, tmp_path):
    """Orbax and back: the same logits; the Hugging Face export is the text model alone
    (Gemma3ForCausalLM, its config the text config as the wrapper runs it), which transformers
    loads with the multimodal model's text logits."""
    ref, folder = saved
    expected = reference.torch_logits(ref, TOKENS)
    convert(folder, tmp_path / "orbax", progress=False)
    assert reference.max_rel_diff(jaxllm.load(tmp_path / "orbax").logits(TOKENS), expected) <= TOL
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False)
    raw = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (raw["model_type"], raw["architectures"]) == ("gemma3_text", ["Gemma3ForCausalLM"])
    names = set(load_file(tmp_path / "back" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("vision" in n for n in names)
    text = reload(tmp_path / "back")
    assert type(text).__name__ == "Gemma3ForCausalLM"
    assert reference.max_rel_diff(reference.torch_logits(text, TOKENS), expected) <= TOL


def test_inspect_reports_the_wrapper_and_no_vision_tensor(saved, capsys):
    _, folder = saved
    assert jinspect.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "architecture  Gemma3ForCausalLM" in out and "multimodal    Gemma3ForConditionalGeneration (gemma3)" in out
    assert "all 41 match the weight map" in out and "vision_tower" in out and "unexpected" not in out
    assert jinspect.main(["--list"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Gemma3ForCausalLM "))
    assert "also the language model of Gemma3ForConditionalGeneration (gemma3) checkpoints" in listed


# google/gemma-3-4b-it's config.json (text_config as the Hub holds it; vision_config abridged)
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False},
}
GEMMA3_27B_TEXT = {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                   "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}


@pytest.mark.parametrize("raw", [GEMMA3_4B, dict(GEMMA3_4B, text_config=GEMMA3_27B_TEXT), dict(GEMMA3_4B, text_config=None),
                                 dict(GEMMA3_4B, text_config=dict(GEMMA3_27B_TEXT, tie_word_embeddings=False, eos_token_id=5)),
                                 dict(GEMMA3_4B, tie_word_embeddings=False, eos_token_id=None)],
                         ids=["4b", "27b", "null-text-config", "text-untied-wrapper-tied", "wrapper-untied-text-stop-tokens"])
def test_hub_configs_read_as_transformers_reads_them(raw):
    """The text model's shape, rope, window, tie and stop tokens, as transformers' Gemma3Config
    builds them from the Hub's file (every key text_config leaves out is Gemma3TextConfig's)."""
    text, wrapper = registry.unwrap(json.loads(json.dumps(raw)))
    assert wrapper.name == "Gemma3ForConditionalGeneration" and text["architectures"] == ["Gemma3ForCausalLM"]
    cfg = registry.architecture_of(text).config(text)
    hf = transformers.Gemma3Config(**json.loads(json.dumps(raw)))
    t = hf.text_config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.sliding_window, list(cfg.layer_types), cfg.max_position_embeddings, cfg.norm_eps) == (
        t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
        t.head_dim, t.sliding_window, t.layer_types, t.max_position_embeddings, t.rms_norm_eps)
    assert cfg.attn_scale == pytest.approx(t.query_pre_attn_scalar ** -0.5)
    full, local = t.rope_parameters["full_attention"], t.rope_parameters["sliding_attention"]
    assert (cfg.rope.type, cfg.rope.theta, cfg.rope.factor) == (full["rope_type"], full["rope_theta"], full.get("factor", 1.0))
    assert (cfg.local_rope.type, cfg.local_rope.theta) == (local["rope_type"], local["rope_theta"])
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    stop = transformers.GenerationConfig.from_model_config(hf).eos_token_id
    assert set(cfg.eos_token_ids) == set([stop] if isinstance(stop, int) else stop)


@pytest.mark.parametrize("text_config, named", [(7, "'text_config' must be a JSON object"),
                                                ({"hidden_size": "64"}, "'text_config.hidden_size' must be a positive integer"),
                                                ({"rope_parameters": {"full_attention": {"factor": -1}}},
                                                 "'text_config.rope_parameters.full_attention.factor' must be a positive number")])
def test_a_bad_text_config_is_named_in_one_line(text_config, named):
    with pytest.raises(ConfigError) as err:
        registry.unwrap(dict(GEMMA3_4B, text_config=text_config))
    assert named in str(err.value) and "\n" not in str(err.value)


def test_llama4_wrapper_loads_its_text_model(tmp_path):
    """Llama4ForConditionalGeneration (a one-layer vision model): its language_model's logits (transformers'
    wrapper cannot run on token ids alone), the text config's tie_word_embeddings deciding the head."""
    torch.manual_seed(0)
    text = dict(registry.get("Llama4ForCausalLM").tiny_config, tie_word_embeddings=True)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                  vision_output_dim=16, projector_input_dim=16, projector_output_dim=16, pixel_shuffle_ratio=0.5)
    ref = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(text_config=text, vision_config=vision))
    reference.randomize(ref, 0)
    ref.float().eval().save_pretrained(tmp_path)
    model = jaxllm.load(tmp_path)
    assert model.config.architecture == "Llama4ForCausalLM" and model.config.tie_word_embeddings
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref.language_model, TOKENS)) <= TOL


# ------------------------------------------------------------------------------------------------
# Mistral 3, LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL: one-layer vision towers beside the tiny text configs

PIXTRAL = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               image_size=28, patch_size=14, head_dim=8)
CLIP = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=28, patch_size=14, projection_dim=16)
QWEN2_VISION = dict(depth=1, embed_dim=16, hidden_size=64, num_heads=2, mlp_ratio=2)
QWEN25_VISION = dict(depth=1, hidden_size=16, out_hidden_size=64, intermediate_size=32, num_heads=2, fullatt_block_indexes=[0])
QWEN3_VISION = dict(depth=1, hidden_size=16, out_hidden_size=64, intermediate_size=32, num_heads=2, num_position_embeddings=16,
                    deepstack_visual_indexes=[0])
INTERNVL_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=[28, 28],
                       patch_size=[14, 14])
SIGLIP = dict(VISION, projection_dim=16)
IDEFICS3_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
IDS = dict(bos_token_id=1, eos_token_id=2)  # within the tiny vocabulary (the Qwen-VL text configs' defaults lie past it)


def _text(arch, **changes):
    return dict(registry.get(arch).tiny_config, **changes)


# Qwen2-VL's M-RoPE in parts covering the 8 frequencies of its 16-wide heads; layers 1 and 2 windowed (max_window_layers)
QWEN2_VL_TEXT = _text("Qwen2ForCausalLM", **IDS, use_sliding_window=True, sliding_window=8, max_window_layers=1,
                      rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
QWEN3_VL_TEXT = {k: v for k, v in _text("Qwen3ForCausalLM", **IDS, attention_bias=True).items() if k != "rope_theta"}
QWEN3_VL_TEXT["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6], "mrope_interleaved": True}
# Qwen3-VL-MoE: Qwen3-MoE's tiny layers (layer 1 dense), experts 16 wide (2 x 16 != hidden: the fused layouts differ)
QWEN3_VL_MOE_TEXT = {k: v for k, v in _text("Qwen3MoeForCausalLM", **IDS, moe_intermediate_size=16).items()
                     if k not in ("rope_theta", "norm_topk_prob")}
QWEN3_VL_MOE_TEXT["rope_parameters"] = QWEN3_VL_TEXT["rope_parameters"]
# GLM-4.1V: GLM-4's tiny layers with heads hidden / heads wide (16), half of each rotated, in M-RoPE parts covering its 4 frequencies
GLM4V_TEXT = dict(_text("Glm4ForCausalLM"), head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                            "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]})
# GLM-4.5V: GLM-4.5's tiny MoE layers (q/k norms off: Glm4vMoe has none), a quarter of each 32-wide head rotated in parts
# covering its 4 frequencies
GLM4V_MOE_TEXT = {k: v for k, v in _text("Glm4MoeForCausalLM").items() if k not in ("use_qk_norm", "rope_theta", "partial_rotary_factor")}
GLM4V_MOE_TEXT["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1]}
GLM4V_VISION = dict(depth=1, hidden_size=16, out_hidden_size=64, intermediate_size=32, num_heads=2)

# Emu3's VQ-VAE image tokenizer at its smallest (its GroupNorms take 32 groups: 32 channels)
EMU3_VQ = dict(codebook_size=16, base_channels=32, channel_multiplier=[1], num_res_blocks=1, attn_resolutions=[], hidden_size=32)

# Mllama's vision model at its smallest (one local and one global layer); never run for text
MLLAMA_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1, attention_heads=2,
                     image_size=28, patch_size=14, vision_output_dim=32, intermediate_layers_indices=[0])

COHERE2_VISION = dict(text_config=_text("Cohere2ForCausalLM", model_type="cohere2"), vision_config=SIGLIP, downsample_factor=1)

# wrapper class, its config (text config, vision config, top-level keys), the text architecture it loads as
WRAPPED = {
    "mistral3-ministral3": ("Mistral3ForConditionalGeneration", lambda: transformers.Mistral3Config(
        text_config=_text("Ministral3ForCausalLM", model_type="ministral3"), vision_config=PIXTRAL, tie_word_embeddings=False),
        "Ministral3ForCausalLM"),
    "llava-qwen2-tied-by-text": ("LlavaForConditionalGeneration", lambda: transformers.LlavaConfig(
        text_config=_text("Qwen2ForCausalLM", model_type="qwen2"), vision_config=CLIP), "Qwen2ForCausalLM"),
    "llava-gemma2-uncapped": ("LlavaForConditionalGeneration", lambda: transformers.LlavaConfig(
        text_config=_text("Gemma2ForCausalLM", model_type="gemma2"), vision_config=CLIP), "Gemma2ForCausalLM"),
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", lambda: transformers.Qwen2VLConfig(
        text_config=QWEN2_VL_TEXT, vision_config=QWEN2_VISION), "Qwen2ForCausalLM"),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", lambda: transformers.Qwen2_5_VLConfig(
        text_config=dict(QWEN2_VL_TEXT, tie_word_embeddings=False), vision_config=QWEN25_VISION), "Qwen2ForCausalLM"),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", lambda: transformers.Qwen3VLConfig(
        text_config=QWEN3_VL_TEXT, vision_config=QWEN3_VISION, tie_word_embeddings=True), "Qwen3ForCausalLM"),
    "internvl-qwen2": ("InternVLForConditionalGeneration", lambda: transformers.InternVLConfig(
        text_config=_text("Qwen2ForCausalLM", model_type="qwen2", tie_word_embeddings=False), vision_config=INTERNVL_VISION),
        "Qwen2ForCausalLM"),
    "glm4v": ("Glm4vForConditionalGeneration", lambda: transformers.Glm4vConfig(
        text_config=GLM4V_TEXT, vision_config=GLM4V_VISION), "Glm4ForCausalLM"),
    # LLaVA-NeXT ties by its top level alone: the text config's tie is not the head's
    "llava-next-llama-tied-by-text-only": ("LlavaNextForConditionalGeneration", lambda: transformers.LlavaNextConfig(
        text_config=_text("LlamaForCausalLM", model_type="llama", tie_word_embeddings=True), vision_config=CLIP), "LlamaForCausalLM"),
    "llava-next-video-gemma2": ("LlavaNextVideoForConditionalGeneration", lambda: transformers.LlavaNextVideoConfig(
        text_config=_text("Gemma2ForCausalLM", model_type="gemma2"), vision_config=CLIP), "Gemma2ForCausalLM"),
    "llava-onevision-qwen2-tied": ("LlavaOnevisionForConditionalGeneration", lambda: transformers.LlavaOnevisionConfig(
        text_config=_text("Qwen2ForCausalLM"), vision_config=SIGLIP), "Qwen2ForCausalLM"),
    "idefics3-llama": ("Idefics3ForConditionalGeneration", lambda: transformers.Idefics3Config(
        text_config=_text("LlamaForCausalLM", model_type="llama"), vision_config=IDEFICS3_VISION, scale_factor=1), "LlamaForCausalLM"),
    "smolvlm-llama-tied": ("SmolVLMForConditionalGeneration", lambda: transformers.SmolVLMConfig(
        text_config=_text("LlamaForCausalLM", model_type="llama"), vision_config=IDEFICS3_VISION, scale_factor=1,
        tie_word_embeddings=True), "LlamaForCausalLM"),
    # Cohere2's text model under the wrapper's own head, times the text config's logit_scale (transformers >= 5.25); tied
    # by the top level (true by default)
    "aya-vision-cohere2": ("AyaVisionForConditionalGeneration", lambda: transformers.AyaVisionConfig(**COHERE2_VISION),
                           "Cohere2ForCausalLM"),
    # North's vision checkpoints: Cohere Compass' text model (its sliding layers' rope carrying Qwen3-VL's M-RoPE sections)
    # under Qwen3-VL's layout, its head scaled by the text config's logit_scale and tied by the top level
    "cohere-compass-tied": ("CohereCompassForConditionalGeneration", lambda: transformers.CohereCompassConfig(
        text_config=_text("CohereCompassForCausalLM", rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            "full_attention": None}),
        vision_config=QWEN3_VISION, tie_word_embeddings=True), "CohereCompassForCausalLM"),
    "cohere2-vision-untied": ("Cohere2VisionForConditionalGeneration", lambda: transformers.Cohere2VisionConfig(
        **COHERE2_VISION, alignment_intermediate_size=32, tie_word_embeddings=False), "Cohere2ForCausalLM"),
    # text families of another base prefix and head name (GPT-2's transformer.*, GPT-NeoX's gpt_neox.* and embed_out):
    # saved as language_model.model.* and language_model.lm_head, as every LLaVA text model
    "llava-gpt2-untied": ("LlavaForConditionalGeneration", lambda: transformers.LlavaConfig(
        text_config=_text("GPT2LMHeadModel", model_type="gpt2", tie_word_embeddings=False), vision_config=CLIP), "GPT2LMHeadModel"),
    "llava-next-gpt-neox": ("LlavaNextForConditionalGeneration", lambda: transformers.LlavaNextConfig(
        text_config=_text("GPTNeoXForCausalLM", model_type="gpt_neox", tie_word_embeddings=False), vision_config=CLIP),
        "GPTNeoXForCausalLM"),
    "glm4v-moe": ("Glm4vMoeForConditionalGeneration", lambda: transformers.Glm4vMoeConfig(
        text_config=GLM4V_MOE_TEXT, vision_config=GLM4V_VISION), "Glm4MoeForCausalLM"),
    "glm46v-glm4v-text": ("Glm46VForConditionalGeneration", lambda: transformers.Glm46VConfig(
        text_config=dict(GLM4V_TEXT, model_type="glm4v_text"), vision_config=dict(GLM4V_VISION, model_type="glm4v_vision")),
        "Glm4ForCausalLM"),
    "glm46v-moe-text": ("Glm46VForConditionalGeneration", lambda: transformers.Glm46VConfig(
        text_config=dict(GLM4V_MOE_TEXT, model_type="glm4v_moe_text"), vision_config=dict(GLM4V_VISION, model_type="glm4v_vision")),
        "Glm4MoeForCausalLM"),
    # Emu3's text model under the wrapper's own (untied) head, beside its VQ-VAE (vqmodel)
    "emu3": ("Emu3ForConditionalGeneration", lambda: transformers.Emu3Config(
        text_config=_text("Emu3ForCausalLM"), vq_config=EMU3_VQ, vocabulary_map={"<image>": 3}), "Emu3ForCausalLM"),
    # Aria's text model (experts beside shared ones) in LLaVA's layout under the wrapper's own head; its projector's
    # queries (projector_patch_to_query_dict) sized to the one-layer Idefics3 tower's 4 patches
    "aria": ("AriaForConditionalGeneration", lambda: transformers.AriaConfig(
        text_config=_text("AriaTextForCausalLM"), vision_config=dict(IDEFICS3_VISION, model_type="idefics3_vision"),
        projector_patch_to_query_dict={4: 2}), "AriaTextForCausalLM"),
    # Llama 3.2 Vision: the text model's cross-attention layers (1, 4) skipped for text, its head never tied
    "mllama": ("MllamaForConditionalGeneration", lambda: transformers.MllamaConfig(
        text_config=_text("MllamaForCausalLM"), vision_config=MLLAMA_VISION), "MllamaForCausalLM"),
    "qwen3-vl-moe": ("Qwen3VLMoeForConditionalGeneration", lambda: transformers.Qwen3VLMoeConfig(
        text_config=QWEN3_VL_MOE_TEXT, vision_config=QWEN3_VISION), "Qwen3MoeForCausalLM"),
}


def build_wrapped(case: str, folder, seed: int = 0):
    """transformers' multimodal model of WRAPPED[case], seeded random weights, saved to `folder`: the float32 model."""
    name, config, _ = WRAPPED[case]
    torch.manual_seed(seed)
    model = getattr(transformers, name)(config())
    reference.randomize(model, seed)
    model.float().eval().save_pretrained(folder)
    return model


def _greedy(ref, prompt, n=12):
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("case", sorted(WRAPPED))
def test_wrapped_text_models_match_transformers_multimodal_model(case, tmp_path):
    """Logits against the multimodal model itself fed token ids alone: its text config read as its config
    class reads it, its head (tied or not, never soft-capped by LLaVA); Qwen-VL's M-RoPE, which for text
    alone is plain rope (llama.mrope_as_rope), in greedy decoding too (transformers' decode positions
    come from its rope_deltas)."""
    ref = build_wrapped(case, tmp_path)
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert model.config.architecture == WRAPPED[case][2]
    # tied as transformers ties it (MllamaConfig has no such key: its head is never tied)
    assert model.config.tie_word_embeddings == (ref.get_output_embeddings().weight is ref.get_input_embeddings().weight)
    err = reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS))
    assert err <= TOL, err
    if case not in ("qwen2-vl", "qwen3-vl", "glm4v-moe"):  # M-RoPE split, interleaved, and GLM's over part of head_dim
        return
    prompt = np.random.default_rng(7).integers(3, 128, 9).tolist()
    got = model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert got.token_ids == _greedy(ref, prompt)


# The Hub's config.json files of these wrappers (vision_config left out: never read), as their repositories spell them
MINISTRAL3_3B = {
    "architectures": ["Mistral3ForConditionalGeneration"], "image_token_index": 10, "model_type": "mistral3",
    "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "spatial_merge_size": 2, "torch_dtype": "bfloat16",
    "text_config": {"head_dim": 128, "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 9216,
                    "max_position_embeddings": 262144, "model_type": "ministral3", "num_attention_heads": 32, "num_hidden_layers": 26,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "sliding_window": None, "tie_word_embeddings": True,
                    "vocab_size": 131072, "rope_parameters": {
                        "beta_fast": 32.0, "beta_slow": 1.0, "factor": 16.0, "llama_4_scaling_beta": 0.1, "mscale": 1.0,
                        "mscale_all_dim": 1.0, "original_max_position_embeddings": 16384, "rope_theta": 1000000.0, "rope_type": "yarn"}},
}
MISTRAL_SMALL_31 = {
    "architectures": ["Mistral3ForConditionalGeneration"], "image_token_index": 10, "model_type": "mistral3", "torch_dtype": "bfloat16",
    "text_config": {"head_dim": 128, "hidden_size": 5120, "intermediate_size": 32768, "max_position_embeddings": 131072,
                    "model_type": "mistral", "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                    "rope_theta": 1000000000.0, "sliding_window": None, "vocab_size": 131072},
}
LLAVA_15_7B = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
    "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False, "torch_dtype": "float16",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}
PIXTRAL_12B_TEXT = {"head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 14336, "is_composition": True,
                    "max_position_embeddings": 1024000, "model_type": "mistral", "num_hidden_layers": 40, "num_key_value_heads": 8,
                    "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0, "sliding_window": None, "vocab_size": 131072}
QWEN2_VL_7B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2_vl", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}
QWEN2_VL_2B = dict(QWEN2_VL_7B, hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                   tie_word_embeddings=True, vocab_size=151936)
QWEN3_VL_4B = {
    "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl", "tie_word_embeddings": True,
    "text_config": {"attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
                    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560, "initializer_range": 0.02,
                    "intermediate_size": 9728, "max_position_embeddings": 262144, "model_type": "qwen3_vl_text", "num_attention_heads": 32,
                    "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
                    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                    "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 151936},
    "video_token_id": 151656, "vision_end_token_id": 151653, "vision_start_token_id": 151652,
}
QWEN3_VL_30B_A3B = dict(QWEN3_VL_4B, architectures=["Qwen3VLMoeForConditionalGeneration"], model_type="qwen3_vl_moe",
                        tie_word_embeddings=False, text_config={
    "attention_bias": False, "bos_token_id": 151643, "decoder_sparse_step": 1, "dtype": "bfloat16", "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 262144,
    "mlp_only_layers": [], "model_type": "qwen3_vl_moe_text", "moe_intermediate_size": 768, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
    "rope_theta": 5000000, "use_cache": True, "vocab_size": 151936})
INTERNVL3_1B = {
    "architectures": ["InternVLForConditionalGeneration"], "downsample_ratio": 0.5, "image_seq_length": 256, "image_token_id": 151667,
    "model_type": "internvl", "projector_hidden_act": "gelu", "torch_dtype": "bfloat16",
    "text_config": {"architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645, "hidden_size": 896,
                    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 70, "model_type": "qwen2",
                    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
                    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
                    "vocab_size": 151674},
}
GLM41V_9B = {
    "architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v", "image_token_id": 151343, "video_token_id": 151344,
    "text_config": {"attention_bias": True, "eos_token_id": [151329, 151336, 151338], "hidden_act": "silu", "hidden_size": 4096,
                    "intermediate_size": 13696, "max_position_embeddings": 65536, "model_type": "glm4v_text", "num_attention_heads": 32,
                    "num_hidden_layers": 40, "num_key_value_heads": 2, "pad_token_id": 151329, "partial_rotary_factor": 0.5,
                    "rms_norm_eps": 1e-05, "rope_scaling": {"type": "default", "mrope_section": [8, 12, 12]}, "rope_theta": 10000.0,
                    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 151552},
}
LLAVA_NEXT_MISTRAL_7B = {
    "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000, "model_type": "llava_next",
    "projector_hidden_act": "gelu", "torch_dtype": "float16", "use_image_newline_parameter": True, "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default", "vocab_size": 32064,
    "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
                    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral", "num_key_value_heads": 8,
                    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None, "torch_dtype": "bfloat16", "vocab_size": 32064},
}
LLAVA_ONEVISION_05B = {
    "architectures": ["LlavaOnevisionForConditionalGeneration"], "image_token_index": 151646, "model_type": "llava_onevision",
    "torch_dtype": "float16", "video_token_index": 151647, "vision_aspect_ratio": "anyres_max_9",
    "text_config": {"_name_or_path": "Qwen/Qwen2-0.5B-Instruct", "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643,
                    "eos_token_id": 151645, "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768,
                    "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
                    "num_key_value_heads": 2, "rope_theta": 1000000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                    "vocab_size": 152000},
}
SMOLVLM2_500M = {
    "architectures": ["SmolVLMForConditionalGeneration"], "image_token_id": 49190, "model_type": "smolvlm", "scale_factor": 4,
    "pad_token_id": 128002, "vocab_size": 49280,
    "text_config": {"architectures": ["VLlama3ForCausalLM"], "head_dim": 64, "hidden_size": 960, "intermediate_size": 2560,
                    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 15, "num_hidden_layers": 32,
                    "num_key_value_heads": 5, "rms_norm_eps": 1e-05, "rope_theta": 100000, "vocab_size": 49280},
}
# Cohere2 text configs as their difference from Cohere2Config's defaults (Command R7B's shape)
AYA_VISION_8B = {"architectures": ["AyaVisionForConditionalGeneration"], "model_type": "aya_vision", "downsample_factor": 2,
                 "image_token_index": 255036, "text_config": {
                     "hidden_size": 4096, "intermediate_size": 14336, "model_type": "cohere2", "num_attention_heads": 32,
                     "num_hidden_layers": 32, "num_key_value_heads": 8, "logit_scale": 0.25, "rope_theta": 50000, "vocab_size": 256000}}
GLM45V = {
    "architectures": ["Glm4vMoeForConditionalGeneration"], "model_type": "glm4v_moe", "image_token_id": 151363, "video_token_id": 151364,
    "tie_word_embeddings": False, "transformers_version": "4.57.1",
    "text_config": {"model_type": "glm4v_moe_text", "pad_token_id": 151329, "vocab_size": 151552, "eos_token_id": [151329, 151336, 151338],
                    "head_dim": 128, "attention_bias": True, "attention_dropout": 0.0, "first_k_dense_replace": 1, "hidden_act": "silu",
                    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 65536,
                    "moe_intermediate_size": 1408, "n_group": 1, "n_routed_experts": 128, "n_shared_experts": 1, "norm_topk_prob": True,
                    "num_attention_heads": 96, "num_experts_per_tok": 8, "num_hidden_layers": 46, "num_key_value_heads": 8,
                    "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-05, "dtype": "bfloat16",
                    "rope_scaling": {"rope_type": "default", "mrope_section": [8, 12, 12]}, "rope_theta": 10000.0,
                    "routed_scaling_factor": 1.0, "topk_group": 1, "use_cache": True, "use_qk_norm": False},
}
HUB = {
    "ministral-3-3b": MINISTRAL3_3B, "mistral-small-3.1": MISTRAL_SMALL_31, "mistral3-null-text-config": {"model_type": "mistral3"},
    "mistral3-untied": dict(MISTRAL_SMALL_31, tie_word_embeddings=False),
    "llava-1.5-7b": LLAVA_15_7B, "pixtral-12b": dict(LLAVA_15_7B, text_config=PIXTRAL_12B_TEXT, pad_token_id=11),
    "llava-null-text-config": {"model_type": "llava"},
    "llava-tied-by-text": dict(LLAVA_15_7B, text_config=dict(LLAVA_15_7B["text_config"], tie_word_embeddings=True)),
    "qwen2-vl-7b": QWEN2_VL_7B, "qwen2-vl-2b": QWEN2_VL_2B, "qwen2.5-vl-7b": dict(QWEN2_VL_7B, model_type="qwen2_5_vl"),
    # a text_config given: the top-level keys count for nothing; one leaving keys out gets Qwen2VLTextConfig's
    # (80 layers, the window from layer 80 on, rope base 1e6): 90 layers, the window on the last 10
    "qwen2.5-vl-nested": dict(QWEN2_VL_7B, model_type="qwen2_5_vl", text_config={
        "num_hidden_layers": 90, "use_sliding_window": True, "tie_word_embeddings": True, "rope_scaling": {"type": "mrope"}}),
    "qwen2-vl-null-text-config": {"model_type": "qwen2_vl", "text_config": None},
    "qwen3-vl-4b": QWEN3_VL_4B, "qwen3-vl-untied-top-level": dict(QWEN3_VL_4B, tie_word_embeddings=False),
    "qwen3-vl-null-text-config": {"model_type": "qwen3_vl"},
    "internvl3-1b": INTERNVL3_1B, "internvl-null-text-config": {"model_type": "internvl"}, "glm-4.1v-9b": GLM41V_9B,
    "qwen3-vl-30b-a3b": QWEN3_VL_30B_A3B, "qwen3-vl-moe-null-text-config": {"model_type": "qwen3_vl_moe"},
    "llava-v1.6-mistral-7b": LLAVA_NEXT_MISTRAL_7B, "llava-next-null-text-config": {"model_type": "llava_next"},
    # LLaVA-NeXT does not forward the text config's tie; LLaVA-NeXT-Video does
    "llava-next-tied-by-text": dict(LLAVA_NEXT_MISTRAL_7B, text_config=dict(LLAVA_NEXT_MISTRAL_7B["text_config"], tie_word_embeddings=True)),
    "llava-next-video-tied-by-text": dict(LLAVA_NEXT_MISTRAL_7B, model_type="llava_next_video", text_config=dict(
        LLAVA_NEXT_MISTRAL_7B["text_config"], tie_word_embeddings=True)),
    "llava-onevision-qwen2-0.5b": LLAVA_ONEVISION_05B, "llava-onevision-null-text-config": {"model_type": "llava_onevision"},
    "smolvlm2-500m": SMOLVLM2_500M, "idefics3-null-text-config": {"model_type": "idefics3"},
    "smolvlm-tied-top-level": dict(SMOLVLM2_500M, tie_word_embeddings=True),
    "aya-vision-8b": AYA_VISION_8B, "aya-vision-null-text-config": {"model_type": "aya_vision"},
    "cohere2-vision-untied": dict(AYA_VISION_8B, model_type="cohere2_vision", tie_word_embeddings=False),
    "glm-4.5v": GLM45V, "glm-4.5v-tied-by-text": dict({k: v for k, v in GLM45V.items() if k != "tie_word_embeddings"}, text_config=dict(
        GLM45V["text_config"], tie_word_embeddings=True)),
    # Glm46VConfig: its text_config GLM-4.1V's or GLM-4.5V's by model_type, tied by the top level alone
    "glm46v-moe-text": dict(GLM45V, model_type="glm46v", architectures=["Glm46VForConditionalGeneration"]),
    "glm46v-dense-text-tied-by-text-only": dict(GLM41V_9B, model_type="glm46v", architectures=["Glm46VForConditionalGeneration"],
                                                text_config=dict(GLM41V_9B["text_config"], tie_word_embeddings=True)),
}
CONFIG_CLASSES = {"mistral3": "Mistral3Config", "llava": "LlavaConfig", "qwen2_vl": "Qwen2VLConfig", "qwen2_5_vl": "Qwen2_5_VLConfig",
                  "qwen3_vl": "Qwen3VLConfig", "qwen3_vl_moe": "Qwen3VLMoeConfig", "internvl": "InternVLConfig",
                  "glm4v": "Glm4vConfig", "llava_next": "LlavaNextConfig", "llava_next_video": "LlavaNextVideoConfig",
                  "llava_onevision": "LlavaOnevisionConfig", "idefics3": "Idefics3Config", "smolvlm": "SmolVLMConfig",
                  "aya_vision": "AyaVisionConfig", "cohere2_vision": "Cohere2VisionConfig", "glm4v_moe": "Glm4vMoeConfig",
                  "glm46v": "Glm46VConfig"}


def _window(t, layer: int):
    types = getattr(t, "layer_types", None)
    window = getattr(t, "sliding_window", None)
    return window if not types or types[layer] == "sliding_attention" else None


@pytest.mark.parametrize("case", sorted(HUB))
def test_wrapper_hub_configs_read_as_transformers_reads_them(case):
    """The text model's shape, window per layer, rope, tie and stop tokens, as transformers' wrapper config
    class builds its text config from the Hub's file (a text_config left out or null, flat Qwen2-VL files)."""
    raw = json.loads(json.dumps(HUB[case]))
    text, wrapper = registry.unwrap(json.loads(json.dumps(raw)))
    cfg = registry.architecture_of(text).config(text)
    hf = getattr(transformers, CONFIG_CLASSES[raw["model_type"]])(**raw)
    t = hf.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.max_position_embeddings, cfg.norm_eps) == (
        t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, head_dim,
        t.max_position_embeddings, getattr(t, "rms_norm_eps", None) or t.layer_norm_eps)
    assert [cfg.layer_window(i) for i in range(cfg.num_layers)] == [_window(t, i) for i in range(t.num_hidden_layers)]
    rope = t.rope_parameters
    assert (cfg.rope.type, cfg.rope.theta, cfg.rope.factor) == (rope["rope_type"], rope["rope_theta"], rope.get("factor", 1.0))
    if raw["model_type"] in ("glm4v", "glm4v_moe", "glm46v"):  # the rotated part of each head
        assert cfg.rope.partial_rotary_factor == rope.get("partial_rotary_factor", 1.0)
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    stop = transformers.GenerationConfig.from_model_config(hf).eos_token_id
    assert set(cfg.eos_token_ids) == set([] if stop is None else [stop] if isinstance(stop, int) else stop)
    if raw["model_type"] == "qwen3_vl_moe":  # its router renormalises the top-k weights whatever norm_topk_prob says
        assert (cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size, cfg.norm_topk_prob) == (
            t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size, True)
    if t.model_type == "glm4v_moe_text":
        assert (cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate_size, cfg.qk_norm) == (
            t.n_routed_experts, t.num_experts_per_tok, t.moe_intermediate_size, "none")


def _flat(raw):
    """Qwen2-VL's config.json as Qwen/Qwen2-VL-* spell it: the text keys at the top level, no text_config, the
    rope as v4's rope_theta and rope_scaling {"type": "mrope", "mrope_section": ...}."""
    text = raw.pop("text_config")
    rope = text.pop("rope_parameters")
    raw.update({k: v for k, v in text.items() if k != "model_type"}, rope_theta=rope["rope_theta"],
               rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})


def test_qwen2_vl_flat_config_and_conversion_give_its_text_model(tmp_path):
    """A flat config.json (the Hub's Qwen2-VL files; transformers reloads it as the reference) reads the same,
    and the Hugging Face export is Qwen2ForCausalLM with plain rope, whose logits transformers matches."""
    ref = build_wrapped("qwen2-vl", tmp_path / "wrapped", seed=2)
    _edit_config(tmp_path / "wrapped", _flat)
    raw = json.loads((tmp_path / "wrapped" / "config.json").read_text())
    assert "text_config" not in raw and raw["rope_scaling"]["type"] == "mrope"
    expected = reference.torch_logits(reload(tmp_path / "wrapped", transformers.Qwen2VLForConditionalGeneration), TOKENS)
    assert reference.max_rel_diff(expected, reference.torch_logits(ref, TOKENS)) <= TOL
    assert reference.max_rel_diff(jaxllm.load(tmp_path / "wrapped", tokenizer=False).logits(TOKENS), expected) <= TOL
    convert(tmp_path / "wrapped", tmp_path / "orbax", progress=False)
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (back["model_type"], back["architectures"], back["rope_scaling"]["rope_type"]) == ("qwen2", ["Qwen2ForCausalLM"], "default")
    text = reload(tmp_path / "back")
    assert type(text).__name__ == "Qwen2ForCausalLM"
    assert reference.max_rel_diff(reference.torch_logits(text, TOKENS), expected) <= TOL


@pytest.mark.parametrize("raw, named", [
    (dict(QWEN2_VL_7B, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 16]}), "mrope_section [16, 24, 16] sums to 56"),
    (dict(QWEN2_VL_7B, model_type="qwen2_5_vl", text_config={"hidden_size": 1024, "num_attention_heads": 8, "head_dim": 64}),
     "head_dim 64 is not hidden_size / num_attention_heads (128)"),
    # Glm4vTextConfig's defaults rotate the whole 128-wide head, which its default parts [8, 12, 12] do not cover
    ({"model_type": "glm4v"}, "mrope_section [8, 12, 12] sums to 32, not half the rotated head size (64)"),
    ({"model_type": "glm46v"}, "mrope_section [8, 12, 12] sums to 32, not half the rotated head size (64)"),  # GLM-4.1V's reading
    # Glm4vMoeTextConfig's 96 heads of 4096 / 96 = 42 (no head_dim), half rotated: 10 frequencies
    ({"model_type": "glm4v_moe"}, "mrope_section [8, 12, 12] sums to 32, not half the rotated head size (10)")])
def test_qwen_vl_text_configs_transformers_cannot_run_are_named_in_one_line(raw, named):
    with pytest.raises(ConfigError) as err:
        registry.unwrap(raw)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_tied_text_model_without_embed_tokens_is_refused_in_one_line(tmp_path):
    """LLaVA ties its lm_head to model.language_model.embed_tokens, which GPT-2's text model lacks (wte): transformers
    fails to build such a model, so a config.json saying tied is refused by name, not loaded with some other head."""
    build_wrapped("llava-gpt2-untied", tmp_path)
    _edit_config(tmp_path, lambda raw: raw.update(tie_word_embeddings=True))
    with pytest.raises(AttributeError, match="embed_tokens"):
        transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**json.loads((tmp_path / "config.json").read_text())))
    for drop_head in (False, True):  # the head's tensor kept (transformers' tie would fail first) or left out
        if drop_head:
            _drop_tensor(tmp_path, "language_model.lm_head.weight")
        with pytest.raises(ConfigError) as err:
            jaxllm.load(tmp_path, tokenizer=False)
        assert "ties LlavaForConditionalGeneration's lm_head" in str(err.value) and "transformer.wte.weight" in str(err.value)
        assert "\n" not in str(err.value)


def test_paligemma_is_refused_as_not_causal(tmp_path):
    """PaliGemma's prompt (its processor's token_type_ids 0) attends both ways: the first token's logits change with
    the next ones, which no causal text model computes; its checkpoint is refused in one line saying so."""
    torch.manual_seed(0)
    config = transformers.PaliGemmaConfig(text_config=_text("GemmaForCausalLM", model_type="gemma"), vision_config=SIGLIP)
    ref = transformers.PaliGemmaForConditionalGeneration(config).eval()
    reference.randomize(ref, 0)
    ids = torch.as_tensor(TOKENS[:1])
    with torch.no_grad():
        prefix = ref(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0, 0]
        changed = ids.clone()
        changed[0, 1:] = (changed[0, 1:] + 1) % 128
        assert not torch.allclose(prefix, ref(input_ids=changed, token_type_ids=torch.zeros_like(ids)).logits[0, 0])
    ref.save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as err:
        jaxllm.load(tmp_path, tokenizer=False)
    assert "'paligemma' is not supported" in str(err.value) and "bidirectionally" in str(err.value) and "\n" not in str(err.value)


def test_wrapped_class_names_load_the_same(tmp_path):
    """transformers 5.x's class names (model.language_model.* whatever the text family's prefix, model.image_newline,
    lm_head for GPT-NeoX's embed_out; Idefics3 and Command A Vision save these), which transformers reloads as the
    reference, read as the names it writes."""
    case = "llava-next-gpt-neox"
    ref = build_wrapped(case, tmp_path)
    _rename(tmp_path, _as_class_names)
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "lm_head.weight" in names and not any(n.startswith("language_model.") for n in names)
    expected = reference.torch_logits(reload(tmp_path, getattr(transformers, WRAPPED[case][0])), TOKENS)
    assert reference.max_rel_diff(expected, reference.torch_logits(ref, TOKENS)) <= TOL
    assert reference.max_rel_diff(jaxllm.load(tmp_path, tokenizer=False).logits(TOKENS), expected) <= TOL


def _drop_tensor(folder, name):
    path = folder / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if k != name}, path, metadata={"format": "pt"})


def _as_released(name, tensor):
    """Qwen3-VL-MoE's fused experts as Qwen's released checkpoints hold them: [X, hidden, 2F] and [X, F, hidden]."""
    return tensor.transpose(1, 2).contiguous() if name.endswith(("experts.gate_up_proj", "experts.down_proj")) else tensor


def test_qwen3_vl_moe_released_expert_layout_and_conversion(tmp_path):
    """The fused experts transposed as the Hub's files hold them (transformers reloads them as the reference,
    transposing by its parameters' shapes) read the same; the export is Qwen3MoeForCausalLM with per-expert
    tensors, whose logits transformers matches."""
    ref = build_wrapped("qwen3-vl-moe", tmp_path / "wrapped", seed=3)
    path = tmp_path / "wrapped" / "model.safetensors"
    tensors = load_file(path)
    assert tensors["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (6, 32, 64)  # [X, 2F, hidden], as saved
    save_file({k: _as_released(k, v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
    expected = reference.torch_logits(reload(tmp_path / "wrapped", transformers.Qwen3VLMoeForConditionalGeneration), TOKENS)
    assert reference.max_rel_diff(expected, reference.torch_logits(ref, TOKENS)) <= TOL
    assert reference.max_rel_diff(jaxllm.load(tmp_path / "wrapped", tokenizer=False).logits(TOKENS), expected) <= TOL
    convert(tmp_path / "wrapped", tmp_path / "orbax", progress=False)
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False)
    assert "model.layers.0.mlp.experts.5.down_proj.weight" in load_file(tmp_path / "back" / "model.safetensors")
    text = reload(tmp_path / "back")
    assert type(text).__name__ == "Qwen3MoeForCausalLM"
    assert reference.max_rel_diff(reference.torch_logits(text, TOKENS), expected) <= TOL


@pytest.mark.parametrize("family, fused", [("Qwen3_5", False), ("Qwen3_5Moe", True)])
def test_qwen3_5_wrappers_load_their_text_model(family, fused, tmp_path):
    """Qwen3_5ForConditionalGeneration and Qwen3_5MoeForConditionalGeneration (a one-layer vision model): the
    language model's logits, hybrid layers and all; Qwen3.5-MoE's experts fused in the file, as transformers'
    parameters hold them (gate_up_proj [X, 2F, hidden], down_proj [X, hidden, F])."""
    torch.manual_seed(0)
    text = registry.get(f"{family}ForCausalLM").tiny_config
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=14)
    config = getattr(transformers, f"{family}Config")(text_config=text, vision_config=vision)
    ref = getattr(transformers, f"{family}ForConditionalGeneration")(config)
    reference.randomize(ref, 0)
    ref.float().eval().save_pretrained(tmp_path)
    if fused:
        path = tmp_path / "model.safetensors"
        tensors = reference.fused_experts(load_file(path))
        assert tensors["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 64)
        save_file(tensors, path, metadata={"format": "pt"})
    model = jaxllm.load(tmp_path)
    assert model.config.architecture == f"{family}ForCausalLM" and model.config.recurrent
    theirs = ref.lm_head(ref.model.language_model(torch.as_tensor(TOKENS)).last_hidden_state).detach().numpy()
    assert reference.max_rel_diff(model.logits(TOKENS), theirs) <= TOL


# meta-llama/Llama-3.2-11B-Vision-Instruct's text_config as the Hub spells it (v4 rope keys, three stop tokens)
LLAMA32_VISION_TEXT = {"model_type": "mllama_text_model", "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "dropout": 0,
                       "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                       "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8,
                       "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
                       "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                        "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


@pytest.mark.parametrize("text", [LLAMA32_VISION_TEXT, {"model_type": "mllama_text_model"}])
def test_mllama_hub_config_reads_its_self_attention_layers(text):
    """Llama 3.2 Vision's config (and a text config leaving every key to MllamaTextConfig's defaults): its text model
    is the 32 self-attention layers at their checkpoint indices, an embedding of the image tokens' 8 rows past the head's."""
    raw = {"architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "image_token_index": 128256,
           "text_config": json.loads(json.dumps(text))}
    unwrapped, _ = registry.unwrap(json.loads(json.dumps(raw)))
    cfg = registry.architecture_of(unwrapped).config(unwrapped)
    t = transformers.MllamaConfig(**raw).text_config
    kept = tuple(i for i in range(t.num_hidden_layers) if i not in t.cross_attention_layers)
    assert (cfg.num_layers, cfg.checkpoint_layers, cfg.vocab_size, cfg.output_vocab, cfg.prompt_vocab) == (
        32, kept, t.vocab_size + 8, t.vocab_size, t.vocab_size)
    assert (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps, cfg.tie_word_embeddings) == (
        t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.hidden_size // t.num_attention_heads, t.rms_norm_eps, False)
    rope = t.rope_parameters
    assert (cfg.rope.type, cfg.rope.theta, cfg.rope.factor) == (rope["rope_type"], rope["rope_theta"], rope.get("factor", 1.0))
    assert set(cfg.eos_token_ids) == set(t.eos_token_id if isinstance(t.eos_token_id, list) else [t.eos_token_id])


def test_mllama_generates_text_and_refuses_image_tokens(tmp_path):
    """The wrapper's greedy tokens as transformers' (its cross-attention layers skipped, no cache for them); an image
    token in a prompt (ids past the text vocabulary: <|image|>) refused in one line, as jaxllm serves text."""
    ref = build_wrapped("mllama", tmp_path)
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert (model.config.num_layers, model.config.checkpoint_layers) == (3, (0, 2, 3))
    prompt = np.random.default_rng(7).integers(3, 128, 9).tolist()
    got = model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert got.token_ids == _greedy(ref, prompt)
    with pytest.raises(jaxllm.InputError) as err:
        model.generate(prompt + [128], jaxllm.SamplingParams(max_new_tokens=2))
    assert "image tokens" in str(err.value) and "128" in str(err.value) and "\n" not in str(err.value)
