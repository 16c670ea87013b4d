"""Meta's Code World Model (CwmForCausalLM): Llama's layer (no attention biases whatever the config
says, MLP biases as mlp_bias says) with sliding-window layers: layer_types, else every fourth layer
full from the first on and the others sliding (sliding_window, 8,192 by default); Llama 3 rope
scaling (x16 from 8,192 positions, base 1,000,000) where config.json gives no rope settings."""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map

# CwmConfig's rope where config.json gives none (a top-level rope_theta then counts for nothing), and its EOS ids
CWM_ROPE = {"rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192}
CWM_EOS = [128001, 128008, 128009]


def cwm_names(raw: dict) -> dict:
    """config.json as CwmConfig completes it: its rope and EOS ids where the file gives none."""
    if raw.get("rope_parameters") is None and raw.get("rope_scaling") is None:
        raw = dict(raw, rope_parameters=CWM_ROPE)
    return raw if raw.get("eos_token_id") is not None else dict(raw, eos_token_id=CWM_EOS)


def cwm_defaults(raw: dict) -> dict:
    window = raw.get("sliding_window") or None  # CwmConfig: a window of 0 is none
    types = raw.get("layer_types") or ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(raw["num_hidden_layers"])]
    return dict(qkv_bias=False, o_bias=False, mlp_bias=bool(raw["mlp_bias"]), layer_types=tuple(types), sliding_window=window)


ARCHITECTURES = (Architecture(
    name="CwmForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="cwm", config_defaults=cwm_defaults, common_names=cwm_names,
    ignored_keys=NO_WINDOW_SWITCH + ("attention_bias",),
    # CwmConfig's field defaults (CWM's shapes)
    hf_defaults=dict(vocab_size=128256, hidden_size=6144, intermediate_size=21504, num_hidden_layers=64, num_attention_heads=48,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
                     mlp_bias=False, sliding_window=8192),
    # a null top-level original_max_position_embeddings replaces the llama3 rope's own, and transformers then fails
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "mlp_bias", "original_max_position_embeddings"),
    # layer 0 full, 1 and 2 sliding (window 8: CwmConfig's pattern); Llama 3 rope scaling; GQA; MLP biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     sliding_window=8, mlp_bias=True, rope_parameters={**CWM_ROPE, "original_max_position_embeddings": 16,
                                                                       "rope_theta": 10000.0},
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
