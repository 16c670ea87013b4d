"""GLM (GLM-4-9B-chat-hf) and GLM-4 (GLM-4-0414): the shared decoder with rotary positions on
interleaved pairs of the first half of each head (rope_interleaved, partial_rotary_factor 0.5
unless the config says otherwise), q/k/v biases (attention_bias) and none on o_proj or the MLP,
and gate/up fused in one `gate_up_proj` in the checkpoint (split while loading).

GLM-4 adds a norm after attention and one after the MLP: Gemma 2's sandwich layer, whose norms
read GLM-4's tensors (post_self_attn_layernorm is the norm after attention, post_attention_layernorm
the one before the MLP, post_mlp_layernorm the one after it)."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, fused_weight_map
from jaxllm.models.gemma import Gemma2ForCausalLM
from jaxllm.models.llama import mrope_as_rope
from jaxllm.models.weights import WeightSpec


def glm_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's naming, gate_proj and up_proj the two halves of mlp.gate_up_proj."""
    f = cfg.intermediate_size
    return fused_weight_map(cfg, {"mlp.gate_proj": ("mlp.gate_up_proj", 0, 2 * f), "mlp.up_proj": ("mlp.gate_up_proj", f, 2 * f)})


def glm4_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """GLM's, the sandwich layer's norms reading GLM-4's (see the module's docstring)."""
    specs = []
    for spec in glm_weight_map(cfg):
        if spec.path[-2:] == ("post_attention_layernorm", "weight"):  # GLM-4's norm before the MLP
            spec = WeightSpec(spec.hf_names[0], spec.path[:-2] + ("pre_feedforward_layernorm", "weight"))
        specs.append(spec)
    for i in range(cfg.num_layers):
        for hf, ours in (("post_self_attn_layernorm", "post_attention_layernorm"), ("post_mlp_layernorm", "post_feedforward_layernorm")):
            specs.append(WeightSpec(f"model.layers.{i}.{hf}.weight", ("model", "layers", i, ours, "weight")))
    return specs


def glm_defaults(raw: dict) -> dict:
    """attention_bias is q/k/v's alone; the MLP and o_proj have none."""
    return dict(qkv_bias=bool(raw["attention_bias"]), o_bias=False, mlp_bias=False, rope_interleaved=True)


# GlmConfig and Glm4Config: head_dim 128 (not hidden / heads), 2 kv heads, half of each head rotated
_DEFAULTS = dict(rms_norm_eps=1.5625e-07, max_position_embeddings=131072, head_dim=128, num_key_value_heads=2,
                 attention_bias=True, partial_rotary_factor=0.5)
_NOT_NULL = RMS_NOT_NULL + ("head_dim", "attention_bias", "num_key_value_heads")
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
             partial_rotary_factor=0.5, attention_bias=True, tie_word_embeddings=False, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)

# GLM-4.1V / GLM-4.5V's dense sibling (zai-org/GLM-4.1V-9B-*): GLM-4's layers under M-RoPE (mrope_as_rope, over the
# rotated part of each head), heads hidden / heads wide, q/k/v biases hard-wired; Glm4vConfig ties the head where its
# top-level or its text config's tie_word_embeddings says so; Glm4vTextConfig's defaults (the whole head rotated)
GLM4V = Wrapper(name="Glm4vForConditionalGeneration", model_type="glm4v", text_model_type="glm4", other_modules=("visual",),
                top_level_or=("tie_word_embeddings",), text_overrides=dict(attention_bias=True),
                text_defaults={"glm4": dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
                                            num_attention_heads=32, num_key_value_heads=2, max_position_embeddings=32768,
                                            rms_norm_eps=1e-5, partial_rotary_factor=1.0)},
                edit=lambda text: mrope_as_rope(text, partial=True))

ARCHITECTURES = (Architecture(
    name="GlmForCausalLM", module=CausalLM, weight_map=glm_weight_map, hf_model_type="glm", ignored_keys=NO_WINDOW,
    hf_defaults=_DEFAULTS, config_defaults=glm_defaults, partial_rotary=True, not_null=_NOT_NULL,
    tiny_config=_TINY,
), Architecture(
    name="Glm4ForCausalLM", module=Gemma2ForCausalLM, weight_map=glm4_weight_map, hf_model_type="glm4", ignored_keys=NO_WINDOW,
    hf_defaults=_DEFAULTS, config_defaults=glm_defaults, partial_rotary=True, not_null=_NOT_NULL, wrappers=(GLM4V,),
    tiny_config=_TINY,
))
