"""HyperCLOVA X SEED (naver-hyperclovax/HyperCLOVAX-SEED-*): Granite's layer and scalings with an RMSNorm of
each residual branch before its scale (post_norm1, post_norm2: use_post_norm, on by default; Peri-LN), the
logits times logits_scaling (Granite divides by it), an attention scale of head_dim ** -0.5 where
attention_multiplier is left out or null, and head_dim read where given."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import decoder_weight_map
from jaxllm.models.granite import MULTIPLIERS, GraniteForCausalLM, granite_defaults


def hyperclovax_defaults(raw: dict) -> dict:
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise ConfigError(f"config.json hidden_size={hidden} is not a multiple of num_attention_heads={heads}, which "
                          "HyperCLOVAXConfig refuses (whatever head_dim says): correct them")
    scale = raw.get("attention_multiplier")
    granite = granite_defaults({k: v for k, v in raw.items() if k != "attention_multiplier"})
    return dict(granite, logits_divisor=1.0, logit_scale=float(raw.get("logits_scaling", 1.0)),
                attn_scale=float((raw.get("head_dim") or hidden // heads) ** -0.5 if scale is None else scale),
                branch_norms=raw.get("use_post_norm", True))


ARCHITECTURES = (Architecture(
    name="HyperCLOVAXForCausalLM", module=GraniteForCausalLM, weight_map=decoder_weight_map, hf_model_type="hyperclovax",
    ignored_keys=NO_WINDOW, config_defaults=hyperclovax_defaults,
    not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias", "use_post_norm") + tuple(m for m in MULTIPLIERS if m != "attention_multiplier"),
    # GQA, biases, head_dim unlike hidden / heads, multipliers unlike 1 (the attention's left to head_dim ** -0.5: SPELLINGS)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, attention_bias=True, mlp_bias=True, use_post_norm=True, embedding_multiplier=3.0,
                     residual_multiplier=0.6, attention_multiplier=0.1, logits_scaling=0.5, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
