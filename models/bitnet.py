"""BitNet b1.58 (microsoft/bitnet-b1.58-2B-4T-bf16): Llama's decoder with two sub-layer RMSNorms, one of
the attention output over every head before o_proj (attn_sub_norm) and one of the gated MLP's product
before down_proj (ffn_sub_norm: `ModelConfig.sub_norms`), squared ReLU by default, q/k/v/o biases as
attention_bias says and none in the MLP. transformers' BitNetForCausalLM runs plain nn.Linear float
weights unless config.json's quantization_config says bitnet (packed ternary weights, refused as every
quantized checkpoint is: config_fields.check_config); the float ("-bf16") checkpoints are read as they are."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map


def bitnet_defaults(raw: dict) -> dict:
    heads, hidden = raw["num_attention_heads"], raw["hidden_size"]
    head = raw.get("head_dim") or hidden // heads
    if heads * head != hidden:
        raise ConfigError(f"config.json num_attention_heads={heads} x head_dim={head} is not hidden_size={hidden}: transformers' "
                          "BitNet norms the attention output over hidden_size values (attn_sub_norm) and cannot run other heads; "
                          "correct them")
    return dict(sub_norms=True, mlp_bias=False)


ARCHITECTURES = (Architecture(
    name="BitNetForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="bitnet", ignored_keys=NO_WINDOW,
    config_defaults=bitnet_defaults, not_null=RMS_NOT_NULL + ("attention_bias", "head_dim"),
    # BitNetConfig's (bitnet-b1.58-2B-4T's): a rope base of 500,000, 5 kv heads, squared ReLU
    hf_defaults=dict(rope_theta=500000.0, num_key_value_heads=5, hidden_act="relu2", rms_norm_eps=1e-5, bos_token_id=128000,
                     eos_token_id=128001),
    # GQA, q/k/v/o biases (the Hub's have none: the switch)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="relu2",
                     attention_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
