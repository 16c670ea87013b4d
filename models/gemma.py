"""Gemma (1): the Llama decoder with GeGLU (tanh GELU), embeddings scaled by sqrt(hidden), and
RMSNorm scaling by (1 + w) in float32. Everything else is the Llama family's module tree and
weight map; what differs is config flags."""

from jaxllm.registry import Architecture, register
from jaxllm.models.llama import CausalLM, llama_weight_map


def gemma_defaults(raw: dict) -> dict:
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    return dict(
        embed_scale=float(raw["hidden_size"]) ** 0.5,
        norm_offset=1.0,
        # transformers maps the legacy "gelu" of the first releases to the tanh approximation.
        hidden_act="gelu_pytorch_tanh" if act == "gelu" else act,
    )


GEMMA = register(Architecture(
    name="GemmaForCausalLM", module=CausalLM, weight_map=llama_weight_map, hf_model_type="gemma",
    config_defaults=gemma_defaults,
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                     rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                     hidden_act="gelu_pytorch_tanh"),
))
