"""EXAONE 4.0: OLMo 2's layer (norms after attention and after the MLP, no input norm) with Llama's
RMSNorm (scale after the cast back), an RMSNorm of each q/k head, no biases, sliding-window layers
(every sliding_window_pattern-th layer full, by default) and, where the model has a window, no
rotary positions on its full-attention layers."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.gemma import alternating
from jaxllm.models.llama import NO_BIAS
from jaxllm.models.olmo2 import Olmo2ForCausalLM, olmo2_weight_map


def exaone4_defaults(raw: dict) -> dict:
    """Exaone4Config's layers: layer_types, else every sliding_window_pattern-th layer full (a null
    sliding_window makes that pattern 0, which transformers cannot apply without layer_types). Its
    attention rotates q/k only on sliding layers when the model has a window, on every layer when not."""
    window = raw.get("sliding_window")
    if window is None and not raw.get("layer_types"):
        raise ConfigError("config.json sliding_window is null and gives no layer_types, which transformers' "
                          "Exaone4ForCausalLM cannot build: give a sliding_window, or layer_types (full_attention each)")
    types = alternating(raw, raw["sliding_window_pattern"])  # hf_defaults: 4 where config.json leaves it out
    nope = () if window is None else tuple(i for i, t in enumerate(types) if t != "sliding_attention")
    return dict(NO_BIAS, qk_norm="per_head", layer_types=types, nope_layers=nope)


ARCHITECTURES = (Architecture(
    name="Exaone4ForCausalLM", module=Olmo2ForCausalLM, weight_map=olmo2_weight_map, hf_model_type="exaone4",
    ignored_keys=NO_WINDOW_SWITCH, config_defaults=exaone4_defaults,
    hf_defaults=dict(sliding_window=4096, sliding_window_pattern=4, num_key_value_heads=32, max_position_embeddings=2048,
                     rms_norm_eps=1e-5),
    # its attention reads head_dim with getattr: a null one reaches the projections as None; its
    # num_key_value_heads is typed int, not optional
    not_null=RMS_NOT_NULL + ("head_dim", "num_key_value_heads"),
    # sliding layers with rotary positions and a full one without (pattern 2: S F S), GQA, tied (as EXAONE-4.0-1.2B)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=True, sliding_window=8, sliding_window_pattern=2,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
