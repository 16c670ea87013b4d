"""Jais 2 (inceptionai/Jais-2-*): Llama's layer with LayerNorms (weight and bias, epsilon layer_norm_eps),
an ungated MLP (Nemotron's: squared ReLU by default), q/k/v/o biases as attention_bias and MLP biases as
mlp_bias say (both on by default)."""

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.decoder import decoder_weight_map, normed_causal_lm, with_norm_biases
from jaxllm.models.layers import LayerNorm

Jais2ForCausalLM = normed_causal_lm(LayerNorm, "Jais2ForCausalLM")

ARCHITECTURES = (Architecture(
    name="Jais2ForCausalLM", module=Jais2ForCausalLM, weight_map=lambda cfg: with_norm_biases(decoder_weight_map(cfg)),
    hf_model_type="jais2", ignored_keys=NO_WINDOW, norm_eps_key="layer_norm_eps", config_defaults=lambda raw: dict(gated_mlp=False),
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "attention_bias", "mlp_bias"),
    # Jais2Config's (Jais-2-8B's)
    hf_defaults=dict(layer_norm_eps=1e-5, hidden_act="relu2", max_position_embeddings=8192, attention_bias=True, mlp_bias=True,
                     bos_token_id=0, eos_token_id=150024),
    # GQA, biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, layer_norm_eps=1e-5, rope_theta=10000.0, hidden_act="relu2",
                     attention_bias=True, mlp_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
