"""Helium (kyutai's Helium-1): Llama's decoder with rotary positions on interleaved pairs
(rope_interleaved, tables in the model's dtype), RMSNorm scales applied in float32 before the cast
(norm_upcast_scale), q/k/v biases as attention_bias says and none on o_proj, whose input is
hidden_size wide (heads x head_dim must equal it)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map


def helium_defaults(raw: dict) -> dict:
    heads, head, hidden = raw["num_attention_heads"], raw["head_dim"], raw["hidden_size"]
    if heads * head != hidden:
        raise ConfigError(f"config.json num_attention_heads={heads} x head_dim={head} is not hidden_size={hidden}: transformers' "
                          "Helium projects the attention output from hidden_size values and cannot run other heads; correct them")
    return dict(qkv_bias=bool(raw.get("attention_bias")), o_bias=False, rope_interleaved=True, norm_upcast_scale=True)


ARCHITECTURES = (Architecture(
    name="HeliumForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="helium", ignored_keys=NO_WINDOW,
    config_defaults=helium_defaults, not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias", "head_dim", "num_key_value_heads"),
    # HeliumConfig's (Helium-1 2B's shapes)
    hf_defaults=dict(rms_norm_eps=1e-8, head_dim=128, num_key_value_heads=20, max_position_embeddings=4096, rope_theta=100000.0, bos_token_id=1,
                     eos_token_id=2, pad_token_id=3),
    # GQA, q/k/v and MLP biases (Helium-1 has none: the switches)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                     attention_bias=True, mlp_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
