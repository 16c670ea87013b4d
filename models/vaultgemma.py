"""VaultGemma (google/vaultgemma-1b): Gemma 2 without its post-attention and post-feedforward norms:
the shared pre-norm layer (x + attn(input_layernorm x), then x + mlp(pre_feedforward_layernorm x)) with
Gemma's (1 + w) RMSNorms and scaled embeddings, Gemma 2's sliding and global layers (every other one
by default), query_pre_attn_scalar and soft-capping. VaultGemmaConfig has no use_bidirectional_attention."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.gemma import SANDWICH_NOT_NULL, TINY, gemma2_defaults


def vaultgemma_defaults(raw: dict) -> dict:
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:  # VaultGemmaConfig's validate_architecture
        raise ConfigError(f"config.json hidden_size={hidden} is not a multiple of num_attention_heads={heads}, which transformers' "
                          "VaultGemma refuses (whatever head_dim says): correct either")
    return gemma2_defaults(raw)


ARCHITECTURES = (Architecture(
    name="VaultGemmaForCausalLM", module=CausalLM, hf_model_type="vaultgemma",
    weight_map=lambda cfg: renamed(decoder_weight_map(cfg), {"post_attention_layernorm": "pre_feedforward_layernorm"}),
    # Gemma 2's switchless window; its attention is causal whatever use_bidirectional_attention says (a key it never reads)
    ignored_keys=("use_sliding_window", "use_bidirectional_attention"),
    hf_defaults=dict(tie_word_embeddings=True, sliding_window=4096, head_dim=256, num_key_value_heads=4, max_position_embeddings=8192),
    config_defaults=vaultgemma_defaults, not_null=SANDWICH_NOT_NULL + ("rope_theta",),
    # Gemma 2's tiny form: a window shorter than the test sequences, a scalar unlike head_dim, soft caps that bite
    tiny_config=dict(TINY, rope_theta=10000.0, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
                     final_logit_softcapping=5.0),
),)
