"""Nemotron (Nemotron-3/4, Minitron): Llama's layer with LayerNorms that scale by (1 + w) and add a
bias (layernorm1p, epsilon norm_eps), an ungated MLP (squared ReLU by default), partial rotary (half
of each head by default), and biases as attention_bias (q/k/v/o) and mlp_bias say."""

import functools

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, with_norm_biases
from jaxllm.models.layers import LayerNorm

LayerNorm1P = functools.partial(LayerNorm, offset=1.0)


class NemotronDecoderLayer(DecoderLayer):
    norm_cls = LayerNorm1P


class NemotronForCausalLM(CausalLM):
    layer_cls = NemotronDecoderLayer
    final_norm = LayerNorm1P


def nemotron_names(raw: dict) -> dict:
    """norm_eps as the common layer_norm_eps."""
    return {**{k: v for k, v in raw.items() if k != "norm_eps"}, "layer_norm_eps": raw.get("norm_eps")}


def nemotron_defaults(raw: dict) -> dict:
    if raw.get("num_key_value_heads") is None:  # NemotronConfig leaves it None, and its attention then fails
        raise ConfigError("config.json has no 'num_key_value_heads': transformers' Nemotron needs it (num_attention_heads "
                          "for every head its own key and value); add it")
    return dict(gated_mlp=False)


ARCHITECTURES = (Architecture(
    name="NemotronForCausalLM", module=NemotronForCausalLM, weight_map=lambda cfg: with_norm_biases(decoder_weight_map(cfg)),
    hf_model_type="nemotron", ignored_keys=NO_WINDOW, common_names=nemotron_names, norm_eps_key="norm_eps", partial_rotary=True,
    config_defaults=nemotron_defaults,
    not_null=NOT_NULL + ("norm_eps", "hidden_act", "rope_theta", "attention_bias", "mlp_bias", "partial_rotary_factor"),
    hf_defaults=dict(norm_eps=1e-5, hidden_act="relu2", max_position_embeddings=4096, partial_rotary_factor=0.5, bos_token_id=2,
                     eos_token_id=3),
    # GQA, half of each head rotated, biases (Nemotron ships none; mlp_bias and attention_bias exercise the switches)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, norm_eps=1e-5, hidden_act="relu2", rope_theta=10000.0,
                     partial_rotary_factor=0.5, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2),
),)
