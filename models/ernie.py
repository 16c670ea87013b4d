"""ERNIE 4.5 (dense: ERNIE-4.5-0.3B): Llama's decoder with rotary positions on interleaved pairs of
the whole head (rope_interleaved), its tables kept in float32 and q/k rotated in float32
(rope_float32), and one switch, use_bias, for the biases of q/k/v/o and of the MLP."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map


def ernie_defaults(raw: dict) -> dict:
    bias = bool(raw.get("use_bias"))
    return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bias, rope_interleaved=True, rope_float32=True)


ARCHITECTURES = (Architecture(
    name="Ernie4_5ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="ernie4_5", ignored_keys=NO_WINDOW,
    # Ernie4_5Config: tied, head_dim 128 (not hidden / heads), 2 kv heads, a rope base of 500,000
    hf_defaults=dict(rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072, head_dim=128,
                     num_key_value_heads=2, rope_theta=500000.0),
    config_defaults=ernie_defaults, not_null=RMS_NOT_NULL,
    # biases on, head_dim unlike hidden / heads
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     use_bias=True, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
