"""BLOOM (bigscience/bloom, bloomz): ALiBi position biases in place of rotary positions
(`ModelConfig.alibi`, which every attention path takes), LayerNorms, a LayerNorm of the token
embeddings before the first layer (word_embeddings_layernorm: `embed_norm`), q/k/v fused per head
([heads, 3, head_dim], as GPT-NeoX and Falcon-7B without multi-query), biases on every projection,
an ungated 4 x hidden MLP with the tanh GELU (bloom_gelu_forward), the sequential layer, tied
embeddings. Its module names are Falcon's (transformer.h.N.self_attention.query_key_value, ...):
the weight map is Falcon's plus the embeddings' norm.

transformers' BLOOM adds slope * key position (from the attention mask's cumulative sum) to the
scores after the 1 / sqrt(head_dim) scale, in the model's dtype; ours is slope * (key - query
position) in float32 (the same softmax; a bfloat16 model's bias no longer rounds with the position).
pretraining_tp alone changes nothing; with slow_but_exact transformers sums the output projections
slice by slice and leaves out their biases: refused. apply_residual_connection_post_layernorm (the
residual taken after the norm) is refused: no BLOOM checkpoint sets it."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import Alibi, ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer
from jaxllm.models.falcon import bloom_slopes, falcon_weight_map
from jaxllm.models.gpt2 import spelled
from jaxllm.models.layers import LayerNorm
from jaxllm.models.weights import WeightSpec


class BloomForCausalLM(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm  # and the embeddings' norm (cfg.embed_norm)


def bloom_names(raw: dict) -> dict:
    """BLOOM's spellings as the common ones: n_embed (older configs; it wins over hidden_size, as
    BloomConfig reads it), n_layer, n_head, layer_norm_epsilon; the MLP 4 x hidden_size and the
    tanh GELU, which BloomMLP hard-wires."""
    out = spelled(raw, (("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                        ("layer_norm_epsilon", "layer_norm_eps")))
    if raw.get("n_embed") is not None:
        out["hidden_size"] = raw["n_embed"]
    hidden = out.get("hidden_size")
    out["intermediate_size"] = 4 * hidden if isinstance(hidden, int) else None
    out["hidden_act"] = "gelu_pytorch_tanh"
    return out


def bloom_defaults(raw: dict) -> dict:
    if raw.get("apply_residual_connection_post_layernorm"):
        raise ConfigError("config.json apply_residual_connection_post_layernorm=true (the residual taken after each norm) is "
                          "not supported: jaxllm runs BLOOM's layer with the residual before the norms (false, every BLOOM "
                          "checkpoint's)")
    if raw.get("slow_but_exact") and (raw.get("pretraining_tp") or 1) > 1:
        raise ConfigError(f"config.json slow_but_exact=true with pretraining_tp={raw['pretraining_tp']}: transformers' BLOOM then "
                          "sums the output projections slice by slice and drops their biases; not supported: set slow_but_exact "
                          "false (the same model, every BLOOM checkpoint's setting)")
    return dict(position_embedding="alibi", alibi=Alibi(bloom_slopes(raw["num_attention_heads"])), embed_norm=True,
                num_kv_heads=raw["num_attention_heads"], gated_mlp=False, qkv_bias=True, o_bias=True, mlp_bias=True)


def bloom_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Falcon's names (sequential layer, every head's own k/v, biases) and the embeddings' LayerNorm."""
    norm = [WeightSpec(f"transformer.word_embeddings_layernorm.{p}", ("model", "embed_norm", p)) for p in ("weight", "bias")]
    return falcon_weight_map(cfg) + norm


ARCHITECTURES = (Architecture(
    name="BloomForCausalLM", module=BloomForCausalLM, weight_map=bloom_weight_map, hf_model_type="bloom",
    # heads of hidden_size / n_head, each with its own k/v; no rotary positions, no length (jaxllm serves 2,048 positions,
    # its training length); the MLP and its activation hard-wired
    ignored_keys=NO_WINDOW + ("num_key_value_heads", "head_dim", "hidden_act", "intermediate_size", "attention_bias", "mlp_bias",
                              "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "max_position_embeddings"),
    not_null=("tie_word_embeddings", "n_layer", "n_head", "layer_norm_epsilon", "apply_residual_connection_post_layernorm",
              "slow_but_exact"),
    common_names=bloom_names, config_defaults=bloom_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(layer_norm_epsilon=1e-5, tie_word_embeddings=True, apply_residual_connection_post_layernorm=False,
                     bos_token_id=1, eos_token_id=2),
    # 6 heads: the slopes of 4 and two more of the next power's (_get_alibi_slopes' second branch); tied, as the Hub's
    tiny_config=dict(vocab_size=128, hidden_size=48, n_layer=3, n_head=6, layer_norm_epsilon=1e-5,
                     bos_token_id=1, eos_token_id=2),
),)
