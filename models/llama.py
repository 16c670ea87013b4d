"""The Llama family: Llama, Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm per
head), SmolLM3 (layers without rotary positions), Seed-OSS (q/k/v and o biases apart), Arcee (an
ungated squared-ReLU MLP). All are the shared decoder (models/decoder.py) with config flags."""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, OWN_HEAD, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import QueryScale
from jaxllm.models.decoder import CausalLM, decoder_weight_map

# The biases of families whose transformers code hard-wires them off: it ignores attention_bias
# and mlp_bias in their configs, and so do we (Llama's code honours both).
NO_BIAS = dict(qkv_bias=False, o_bias=False, mlp_bias=False)


def qwen_layer_types(raw: dict) -> dict:
    """Qwen2/3 (and Qwen3-MoE) enable the window only with use_sliding_window, and only from
    max_window_layers on; a null sliding_window leaves every layer full, as transformers reads it."""
    if raw.get("layer_types") or not raw.get("use_sliding_window") or raw.get("sliding_window") is None:
        return {}
    n = raw["num_hidden_layers"]
    start = raw.get("max_window_layers", 28)  # transformers' default
    return {"layer_types": tuple("sliding_attention" if i >= start else "full_attention" for i in range(n))}


def ministral_defaults(raw: dict) -> dict:
    """Ministral's flags; a config.json without head_dim is refused (MinistralConfig leaves it None,
    and transformers' model then fails to build)."""
    if raw.get("head_dim") is None:
        raise ConfigError("config.json has no 'head_dim': add it (transformers' MinistralForCausalLM needs it; "
                          "usually hidden_size / num_attention_heads)")
    return NO_BIAS


# Ministral3Config's rope where config.json gives none (rope_parameters and rope_scaling null or left out;
# a top-level rope_theta then counts for nothing): YaRN x16 from 16,384 positions, the query scaling's beta
MINISTRAL3_ROPE = {"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0, "original_max_position_embeddings": 16384,
                   "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}


def ministral3_rope(raw: dict) -> dict:
    if raw.get("rope_parameters") is None and raw.get("rope_scaling") is None:
        return dict(raw, rope_parameters=MINISTRAL3_ROPE)
    return raw


def ministral3_defaults(raw: dict) -> dict:
    """Ministral 3: Mistral's layers (a window on every layer where sliding_window is set), queries
    scaled by 1 + llama_4_scaling_beta * log(1 + floor(position / original_max_position_embeddings)),
    both read from the rope settings, which transformers' forward needs."""
    rope, original = dict(raw.get("rope_scaling") or raw["rope_parameters"]), "original_max_position_embeddings"
    if original in raw and (rope.get("rope_type") or rope.get("type")) in ("llama3", "yarn", "longrope"):
        rope[original] = raw[original]  # transformers moves the top-level key into these rope types' settings
    for key in ("llama_4_scaling_beta", original):
        if rope.get(key) is None:
            raise ConfigError(f"config.json gives no '{key}' in its rope settings, which Ministral3ForCausalLM's query "
                              "scaling needs (transformers fails without it): add it to rope_parameters")
    scale = QueryScale(float(rope["llama_4_scaling_beta"]), float(rope[original]))
    return dict(NO_BIAS, query_scale=scale)


def smollm3_defaults(raw: dict) -> dict:
    """SmolLM3's NoPE layers and windows as SmolLM3Config builds them: no_rope_layers holds a flag
    per layer (0: no rotary positions), else every no_rope_layer_interval-th layer (4th) is NoPE;
    without layer_types, the window (use_sliding_window with a sliding_window) is on the NoPE
    layers only."""
    n = raw["num_hidden_layers"]
    flags = raw.get("no_rope_layers")
    if flags is None:
        every = raw["no_rope_layer_interval"]  # hf_defaults: 4 where config.json leaves it out
        flags = [int((i + 1) % every != 0) for i in range(n)]
    elif len(flags) < n:
        raise ConfigError(f"config.json no_rope_layers has {len(flags)} entries for {n} layers: give one per layer "
                          "(1: the layer uses rotary positions, 0: it uses none)")
    nope = tuple(i for i in range(n) if not flags[i])
    if raw.get("layer_types"):
        return dict(nope_layers=nope)
    window = bool(raw.get("use_sliding_window")) and raw.get("sliding_window") is not None
    return dict(nope_layers=nope,
                layer_types=tuple("sliding_attention" if window and i in nope else "full_attention" for i in range(n)))


# The shapes and token ids of LlamaConfig, MistralConfig, Ministral3Config and Qwen2Config where a text config leaves them
# out: multimodal checkpoints save their text config as its difference from these (llava-hf/llava-1.5-7b-hf's gives no shape)
SHAPE = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)
CLASS_DEFAULTS = {
    "llama": dict(SHAPE, vocab_size=32000, intermediate_size=11008, max_position_embeddings=2048, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2),
    "mistral": dict(SHAPE, vocab_size=32000, intermediate_size=14336, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2),
    "ministral3": dict(SHAPE, vocab_size=131072, intermediate_size=14336, num_hidden_layers=34, bos_token_id=1, eos_token_id=2,
                       pad_token_id=11),
    "qwen2": dict(SHAPE, vocab_size=151936, intermediate_size=22016, rms_norm_eps=1e-6),
}

# Mistral Small 3.1 / 3.2, Magistral Small, Devstral Small, Ministral 3 (which ships only inside it): Mistral3Config builds
# its text_config by its model_type (mistral where it gives none; ministral3), a null one from its own values; it ties
# the wrapper's lm_head by its top-level tie_word_embeddings, true where config.json leaves it out
MISTRAL3 = Wrapper(name="Mistral3ForConditionalGeneration", model_type="mistral3", text_model_type="mistral", fixed_text_type=False,
                   top_level=dict(tie_word_embeddings=True), text_defaults=CLASS_DEFAULTS,
                   null_text=dict(model_type="mistral", head_dim=128, hidden_size=5120, intermediate_size=32768,
                                  max_position_embeddings=131072, num_attention_heads=32, num_hidden_layers=40,
                                  num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1e9, sliding_window=None, vocab_size=131072))
def llava_like(name: str, model_type: str, text_model_type: str = "llama", tie_from_text: bool = True, **layout) -> Wrapper:
    """LLaVA's reading of a text config (its model_type's class, `text_model_type` where it gives none; the
    wrapper's own lm_head) for the classes that copy it: LLaVA-NeXT (and its image_newline parameter), LLaVA-NeXT-Video,
    LLaVA-OneVision (Qwen2 by default), Idefics3 / SmolVLM (`layout`: text_model, vision_model and connector under model.*;
    LlamaConfig with rms_norm_eps 1e-5 for a null text_config). The head is tied where the top level's
    tie_word_embeddings says so, or (`tie_from_text`: the config classes that forward it) the text config's."""
    tie = dict(top_level_or=("tie_word_embeddings",)) if tie_from_text else dict(top_level=dict(tie_word_embeddings=False))
    return Wrapper(name=name, model_type=model_type, text_model_type=text_model_type, fixed_text_type=False,
                   text_overrides=OWN_HEAD, text_defaults=CLASS_DEFAULTS, **tie, **layout)


# LLaVA 1.5 and the checkpoints saved in its layout (llava-hf/*, Pixtral-12B): LlavaConfig builds the text_config by
# its model_type (llama where it gives none or none at all); the wrapper's own lm_head gives the logits (OWN_HEAD),
# tied where its top-level or its text config's tie_word_embeddings says so
LLAVA = llava_like("LlavaForConditionalGeneration", "llava")
# LLaVA-NeXT and Idefics3 / SmolVLM tie by the top level alone (their config classes do not forward the text config's)
NEXT = ("vision_tower", "multi_modal_projector", "image_newline")
IDEFICS3 = dict(text_module="text_model", other_modules=("vision_model", "connector"), null_text=dict(model_type="llama", rms_norm_eps=1e-5))
LLAVA_LIKE = (llava_like("LlavaNextForConditionalGeneration", "llava_next", tie_from_text=False, other_modules=NEXT),
              llava_like("LlavaNextVideoForConditionalGeneration", "llava_next_video", other_modules=NEXT),
              llava_like("LlavaOnevisionForConditionalGeneration", "llava_onevision", "qwen2", other_modules=NEXT),
              llava_like("Idefics3ForConditionalGeneration", "idefics3", tie_from_text=False, **IDEFICS3),
              llava_like("SmolVLMForConditionalGeneration", "smolvlm", tie_from_text=False, **IDEFICS3))


def mrope_as_rope(text: dict, split: bool = True, partial: bool = False, own_head_dim: bool = False) -> dict:
    """The text config of Qwen2-VL / Qwen2.5-VL (split) or Qwen3-VL (interleaved) as its text model reads it for
    text alone. Their multimodal rope (M-RoPE) computes the frequencies once per axis of three position ids
    (time, height, width) and takes each frequency from one axis: contiguous mrope_section parts (split) or every
    third one (interleaved). Text alone gives the three axes the same positions (get_rope_index: arange), so every
    frequency is the one plain rope computes with the same inv_freq: rope of the same type and base. Qwen2-VL's
    config class reads the rope type "mrope" as "default"; its rope splits the frequencies into the mrope_section
    parts, which must cover them (transformers fails otherwise), and its attention takes hidden / heads per head;
    GLM-4.1V's (`partial`) the same over the rotated part of each head (partial_rotary_factor, 1 where left out);
    GLM-4.5V's (`own_head_dim`) attention and rope take head_dim where the config gives it."""
    key = "rope_scaling" if text.get("rope_scaling") else "rope_parameters"
    rope = dict(text.get(key) or {})
    if not split:
        return dict(text, **{key: {k: v for k, v in rope.items() if not k.startswith("mrope_")}}) if rope else text
    dim = text["hidden_size"] // text["num_attention_heads"]
    if own_head_dim:
        dim = text.get("head_dim") or dim
    elif text.get("head_dim") not in (None, dim):
        raise ConfigError(f"config.json text head_dim {text['head_dim']} is not hidden_size / num_attention_heads ({dim}), "
                          "which Qwen2-VL's attention takes (its rope would take head_dim: transformers fails): remove head_dim")
    section = rope.get("mrope_section") or ([8, 12, 12] if partial else [16, 24, 24])
    rotated = int(dim * float(rope.get("partial_rotary_factor") or text.get("partial_rotary_factor") or 1.0)) if partial else dim
    if sum(section) != rotated // 2:
        raise ConfigError(f"config.json rope mrope_section {section} sums to {sum(section)}, not half the rotated head size "
                          f"({rotated // 2}), which the model's rope splits into those parts (transformers fails): give parts summing to it")
    if not partial and (rope.get("rope_type") or rope.get("type")) == "mrope":
        rope = dict({k: v for k, v in rope.items() if k != "type"}, rope_type="default")
    return dict(text, head_dim=dim, **{key: {k: v for k, v in rope.items() if k != "mrope_section"}})


# Qwen2VLTextConfig's keys, which Qwen2VLConfig reads off the top level of a config.json without text_config
# (Qwen/Qwen2-VL-*, Qwen/Qwen2.5-VL-*), and its defaults where they differ from Qwen2Config's
QWEN2_VL_FLAT = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "hidden_act", "max_position_embeddings", "rms_norm_eps", "use_sliding_window", "sliding_window", "max_window_layers",
                 "layer_types", "rope_parameters", "rope_scaling", "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id")
QWEN2_VL_DEFAULTS = dict(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1e6, max_window_layers=80, bos_token_id=151643,
                         eos_token_id=151645)


def qwen2_vl(name: str, model_type: str) -> Wrapper:
    """Qwen2-VL's and Qwen2.5-VL's wrapper: Qwen2's layers (q/k/v biases, the window from max_window_layers) under
    M-RoPE (mrope_as_rope); the head tied where the top level's or the text config's tie_word_embeddings says so;
    the vision model (visual) unread."""
    return Wrapper(name=name, model_type=model_type, text_model_type="qwen2", other_modules=("visual",),
                   top_level_or=("tie_word_embeddings",), flat_keys=QWEN2_VL_FLAT, text_defaults={"qwen2": QWEN2_VL_DEFAULTS},
                   edit=mrope_as_rope)


# InternVL (OpenGVLab/InternVL3-*-hf): LLaVA's layout, InternVLConfig's text_config by its model_type (qwen2 where it
# gives none); it ties the wrapper's lm_head by its top-level tie_word_embeddings, true where left out
INTERNVL = Wrapper(name="InternVLForConditionalGeneration", model_type="internvl", text_model_type="qwen2", fixed_text_type=False,
                   top_level=dict(tie_word_embeddings=True), text_overrides=OWN_HEAD, text_defaults=CLASS_DEFAULTS)

# Qwen3-VL: Qwen3's layers (q/k norms, attention_bias on q/k/v/o, no window) under interleaved M-RoPE; Qwen3VLConfig ties
# the head by its top-level tie_word_embeddings alone (false where left out); Qwen3VLTextConfig's defaults
QWEN3_VL = Wrapper(name="Qwen3VLForConditionalGeneration", model_type="qwen3_vl", text_model_type="qwen3", other_modules=("visual",),
                   top_level=dict(tie_word_embeddings=False), text_overrides=dict(use_sliding_window=False, layer_types=None),
                   text_defaults={"qwen3": dict(SHAPE, vocab_size=151936, intermediate_size=22016, num_key_value_heads=32, head_dim=128,
                                                max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=500000.0,
                                                attention_bias=False)},
                   edit=lambda text: mrope_as_rope(text, split=False))

_TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
)

ARCHITECTURES = (
    Architecture(
        name="LlamaForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="llama", ignored_keys=NO_WINDOW,
        not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias"), wrappers=(LLAVA, *LLAVA_LIKE),
        tiny_config=dict(_TINY, rope_theta=10000.0, attention_bias=False),
    ),
    Architecture(
        name="MistralForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="mistral", ignored_keys=NO_WINDOW_SWITCH,
        hf_defaults=dict(sliding_window=4096, num_key_value_heads=8, max_position_embeddings=131072), config_defaults=lambda raw: NO_BIAS,
        not_null=RMS_NOT_NULL + ("num_key_value_heads",),
        tiny_config=dict(_TINY, sliding_window=8, rope_theta=10000.0),
    ),
    # Ministral: Mistral's config and layers (no biases, its defaults) with the window on the layers
    # layer_types names (every layer, without it): transformers' MinistralForCausalLM is Qwen2's code.
    Architecture(
        name="MinistralForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="ministral", ignored_keys=NO_WINDOW_SWITCH,
        hf_defaults=dict(sliding_window=4096, num_key_value_heads=8, max_position_embeddings=131072),
        config_defaults=ministral_defaults, not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim"),
        tiny_config=dict(_TINY, head_dim=16, sliding_window=8, rope_theta=10000.0,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    ),
    # Ministral 3: Mistral's layers with queries scaled by their position (QueryScale)
    Architecture(
        name="Ministral3ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="ministral3",
        ignored_keys=("layer_types",) + NO_WINDOW_SWITCH, common_names=ministral3_rope, config_defaults=ministral3_defaults,
        hf_defaults=dict(num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-5),
        not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim"), wrappers=(MISTRAL3,),
        # YaRN as the Hub's, its original length short enough that the scaling steps within 20 tokens; a window
        tiny_config=dict(_TINY, head_dim=16, sliding_window=8, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4, "beta_fast": 32.0,
            "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}),
    ),
    Architecture(
        name="Qwen2ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="qwen2",
        hf_defaults=dict(use_sliding_window=False, sliding_window=4096, num_key_value_heads=32, max_position_embeddings=32768),
        config_defaults=lambda raw: dict(qkv_bias=True, o_bias=False, mlp_bias=False, **qwen_layer_types(raw)),
        not_null=RMS_NOT_NULL + ("head_dim", "use_sliding_window"),
        wrappers=(qwen2_vl("Qwen2VLForConditionalGeneration", "qwen2_vl"), qwen2_vl("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
                  INTERNVL),
        tiny_config=dict(_TINY, rope_theta=1000000.0, tie_word_embeddings=True),
    ),
    Architecture(
        name="Qwen3ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="qwen3",
        # Qwen3Config's head_dim, whatever hidden / heads
        hf_defaults=dict(use_sliding_window=False, sliding_window=4096, head_dim=128, num_key_value_heads=32, max_position_embeddings=32768),
        config_defaults=lambda raw: dict(qk_norm="per_head", mlp_bias=False, **qwen_layer_types(raw)),
        not_null=RMS_NOT_NULL + ("head_dim", "use_sliding_window", "attention_bias"), wrappers=(QWEN3_VL,),
        tiny_config=dict(_TINY, head_dim=32, rope_theta=1000000.0),
    ),
    # SmolLM3: Llama with NoPE layers (and windows on them); its biases as attention_bias / mlp_bias say
    Architecture(
        name="SmolLM3ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="smollm3",
        hf_defaults=dict(use_sliding_window=False, no_rope_layer_interval=4, rope_theta=2_000_000.0, tie_word_embeddings=True,
                         num_key_value_heads=4, max_position_embeddings=32768),
        config_defaults=smollm3_defaults,
        not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias", "head_dim", "use_sliding_window", "no_rope_layer_interval"),
        # rope layers and a NoPE layer with the window, tied (as SmolLM3-3B); SPELLINGS has a NoPE layer without it
        tiny_config=dict(_TINY, rope_theta=10000.0, tie_word_embeddings=True, use_sliding_window=True, sliding_window=8,
                         no_rope_layers=[1, 0, 1], layer_types=["full_attention", "sliding_attention", "full_attention"],
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ),
    # Seed-OSS: Llama with attention_bias for q/k/v alone (on by default) and attention_out_bias for
    # o_proj (off by default); mlp_bias as Llama reads it
    Architecture(
        name="SeedOssForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="seed_oss", ignored_keys=NO_WINDOW,
        hf_defaults=dict(attention_bias=True, attention_out_bias=False, head_dim=128, num_key_value_heads=8,
                         max_position_embeddings=524288),
        config_defaults=lambda raw: dict(qkv_bias=bool(raw["attention_bias"]), o_bias=bool(raw["attention_out_bias"])),
        not_null=RMS_NOT_NULL + ("attention_bias", "attention_out_bias", "mlp_bias"),
        tiny_config=dict(_TINY, head_dim=32, rope_theta=10000.0, attention_bias=True, attention_out_bias=True, mlp_bias=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ),
    # Arcee (AFM): Llama with Nemotron's ungated MLP, down(relu(up(x))^2) by default; its biases as
    # attention_bias (q/k/v and o) and mlp_bias say
    Architecture(
        name="ArceeForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="arcee", ignored_keys=NO_WINDOW,
        hf_defaults=dict(hidden_act="relu2", rms_norm_eps=1e-5, max_position_embeddings=4096),
        config_defaults=lambda raw: dict(gated_mlp=False),
        not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias"),
        tiny_config=dict(_TINY, rope_theta=10000.0, hidden_act="relu2", attention_bias=True, mlp_bias=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ),
)
