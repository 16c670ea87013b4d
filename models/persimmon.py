"""Persimmon (adept/persimmon-8b): GPT-NeoX's module tree under `model` with sequential LayerNorm
layers, q/k/v fused per head in query_key_value (biased, as dense is), a LayerNorm (weight and bias)
of each query and key head before rotation where qk_layernorm (on by default: Phi's q/k norm),
partial rotary (half of each head by default) on heads of hidden_size / num_attention_heads, an
ungated biased MLP of hidden_act (squared ReLU by default), an untied output head."""

from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.gpt_neox import GPTNeoXForCausalLM, neox_layout
from jaxllm.models.stablelm import hidden_heads

PERSIMMON_NAMES = dict(embed="model.embed_tokens.weight", norm="model.final_layernorm", head="lm_head.weight", layers="model.layers",
                       attn="self_attn")


def persimmon_defaults(raw: dict) -> dict:
    return dict(head_dim=hidden_heads(raw, "Persimmon"), qkv_bias=True, o_bias=True, gated_mlp=False, mlp_bias=True,
                qk_norm="layernorm" if raw["qk_layernorm"] else "none")


ARCHITECTURES = (Architecture(
    name="PersimmonForCausalLM", module=GPTNeoXForCausalLM, weight_map=lambda cfg: neox_layout(cfg, PERSIMMON_NAMES),
    hf_model_type="persimmon",
    # every head has its own k/v; the biases hard-wired on
    ignored_keys=NO_WINDOW + NO_WINDOW_SWITCH + ("num_key_value_heads", "attention_bias", "mlp_bias"),
    config_defaults=persimmon_defaults, partial_rotary=True, norm_eps_key="layer_norm_eps",
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "partial_rotary_factor", "qk_layernorm"),
    hf_defaults=dict(layer_norm_eps=1e-5, hidden_act="relu2", partial_rotary_factor=0.5, qk_layernorm=True, max_position_embeddings=16384,
                     tie_word_embeddings=False),
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     max_position_embeddings=256, layer_norm_eps=1e-5, hidden_act="relu2", partial_rotary_factor=0.5,
                     rope_theta=25000.0, qk_layernorm=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
),)
