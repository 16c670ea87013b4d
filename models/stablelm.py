"""StableLM (stablelm-3b-4e1t, StableLM 2): the shared decoder with LayerNorms (weight and bias),
partial rotary (a quarter of each head unless partial_rotary_factor says otherwise), q/k/v biases
where use_qkv_bias says (never on o_proj nor the gated MLP), a LayerNorm without bias of each query
and key head, each head its own weights, where qk_layernorm says (StableLM 2 12B), and with
use_parallel_residual x + attn(ln x) + mlp(ln x) off the one input norm (no post-attention norm).

The layer is the shared one with LayerNorms (decoder.LayerNormDecoderLayer, parallel as
cfg.parallel_residual says); its weight map also serves StarCoder 2 (models/starcoder2.py)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, decoder_weight_map, with_norm_biases
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Stack
from jaxllm.models.weights import WeightSpec


class StableLmForCausalLM(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm


def layernorm_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """transformers' Llama naming with a bias beside each norm's weight (its LayerNorms), less the
    post-attention norms of a parallel-residual model and the q/k norms (their own naming)."""
    return with_norm_biases([spec for spec in decoder_weight_map(cfg) if not (
        spec.path[-2] in ("q_norm", "k_norm") or (cfg.parallel_residual and "post_attention_layernorm" in spec.path))])


def stablelm_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = layernorm_weight_map(cfg)
    if cfg.qk_norm == "layernorm_per_head":
        for i in range(cfg.num_layers):
            hf, ours = f"model.layers.{i}.self_attn.", ("model", "layers", i, "self_attn")
            for name, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads)):
                per_head = tuple(f"{hf}{name}_layernorm.norms.{h}.weight" for h in range(heads))
                specs.append(WeightSpec(per_head, ours + (f"{name}_norm", "weight"), Stack()))
    return specs


def hidden_heads(raw: dict, family: str) -> int:
    """hidden_size / num_attention_heads: the heads of a family whose attention takes that whatever
    head_dim says while its rotary embedding reads head_dim (StableLM, Persimmon), which transformers
    can run only where it gives the same rotary dims (refused otherwise)."""
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise ConfigError(f"config.json hidden_size={hidden} is not divisible by num_attention_heads={heads}, which "
                          f"transformers' {family} needs (its heads are hidden_size / num_attention_heads): correct either")
    head, factor = hidden // heads, parse_rope(raw).partial_rotary_factor
    given = raw.get("head_dim")
    if given is not None and int(given * factor) != int(head * factor):
        raise ConfigError(f"config.json head_dim={given} gives {family}'s rotary embedding {int(given * factor)} dims where its "
                          f"heads of {head} (hidden_size / num_attention_heads) rotate {int(head * factor)}: transformers "
                          "cannot run that; remove head_dim")
    return head


def stablelm_defaults(raw: dict) -> dict:
    """StableLM's flags; its heads hidden_heads'."""
    return dict(head_dim=hidden_heads(raw, "StableLM"), qkv_bias=bool(raw.get("use_qkv_bias")), o_bias=False, mlp_bias=False,
                qk_norm="layernorm_per_head" if raw.get("qk_layernorm") else "none",
                parallel_residual=bool(raw.get("use_parallel_residual")))


ARCHITECTURES = (Architecture(
    name="StableLmForCausalLM", module=StableLmForCausalLM, weight_map=stablelm_weight_map, hf_model_type="stablelm",
    ignored_keys=NO_WINDOW + NO_WINDOW_SWITCH, config_defaults=stablelm_defaults, partial_rotary=True,
    norm_eps_key="layer_norm_eps",
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "partial_rotary_factor", "num_key_value_heads",
                         "use_qkv_bias", "qk_layernorm", "use_parallel_residual"),
    hf_defaults=dict(layer_norm_eps=1e-5, partial_rotary_factor=0.25, num_key_value_heads=32, max_position_embeddings=4096),
    # StableLM 2 12B's form (q/k norms of each head, parallel residual) with q/k/v biases (StableLM 2 1.6B's) and
    # GQA; SPELLINGS has the sequential layer without q/k norms
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, layer_norm_eps=1e-5, hidden_act="silu",
                     partial_rotary_factor=0.25, rope_theta=10000.0, use_qkv_bias=True, qk_layernorm=True,
                     use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
),)
