"""Falcon: LayerNorms, an ungated MLP, rotary positions on whole heads, biases on every projection
where `bias` says, and q/k/v fused in query_key_value, all through the shared layer with LayerNorms:

- new_decoder_architecture (Falcon-40B/180B): num_kv_heads kv heads, each with its queries, key and
  value together in the fused tensor ([K, G + 2, head_dim]); attention and MLP in parallel off
  ln_attn and ln_mlp (num_ln_in_parallel_attn 2, the default) or off one input_layernorm (1);
- else (Falcon-7B/1B) one kv head with multi_query (q | k | v rows), every head's own without it
  ([heads, 3, head_dim]); attention and MLP in parallel off input_layernorm (parallel_attn), or
  sequential with a post_attention_layernorm.

With alibi (Falcon-RW-1B/7B) ALiBi position biases replace the rotary positions (`ModelConfig.alibi`,
which every attention path takes): BLOOM's slopes, each rounded to bfloat16 and its product with the
key position rounded to bfloat16 again, divided by sqrt(head_dim) (transformers' build_alibi_tensor
and FalconModel, as the RefinedWeb code trained them). That is transformers' sdpa attention, which
adds the bias once; its eager attention adds it twice in 5.x (once to the scores, once in the mask
it builds with the bias inside), so tests compare against sdpa."""

import math

import numpy as np

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.config import Alibi, ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense, model_ends
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import FusedQKV, Linear
from jaxllm.models.weights import WeightSpec


class FalconForCausalLM(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm


def bloom_slopes(heads: int) -> tuple[float, ...]:
    """ALiBi's slope per head as transformers' BLOOM and Falcon compute them (_get_alibi_slopes,
    float32): powers of 2^(-8 / n) for the largest power of two n <= heads, then every other power
    of 2^(-4 / n) for the heads beyond it."""
    closest = 2 ** math.floor(math.log2(heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(closest) - 3))))
    slopes = list(np.power(base, np.arange(1, 1 + closest, dtype=np.float32)))
    if closest != heads:
        extra = np.float32(2 ** (-(2 ** -(math.log2(2 * closest) - 3))))
        slopes += list(np.power(extra, np.arange(1, 1 + 2 * min(closest, heads - closest), 2, dtype=np.float32)))
    return tuple(float(s) for s in slopes)


def falcon_names(raw: dict) -> dict:
    """Falcon's spellings as the common ones: n_embed (older configs; it wins over hidden_size, as
    FalconConfig reads it), ffn_hidden_size (4 x hidden_size where null or left out), activation,
    layer_norm_epsilon."""
    out = dict(raw)
    if raw.get("n_embed") is not None:
        out["hidden_size"] = raw["n_embed"]
    hidden = out.get("hidden_size")
    out["intermediate_size"] = raw.get("ffn_hidden_size") or (4 * hidden if isinstance(hidden, int) else None)
    out["hidden_act"] = raw.get("activation")
    out["layer_norm_eps"] = raw.get("layer_norm_epsilon")
    return out


def falcon_defaults(raw: dict) -> dict:
    if "head_dim" in raw:
        raise ConfigError(f"config.json head_dim={raw['head_dim']}: FalconConfig derives head_dim (hidden_size / num_attention_heads) "
                          "and transformers refuses the key; remove it")
    heads, new = raw["num_attention_heads"], bool(raw.get("new_decoder_architecture"))
    kv, norms = raw.get("num_kv_heads") or heads, raw.get("num_ln_in_parallel_attn")
    parallel = new or bool(raw.get("parallel_attn"))
    if new and not raw.get("parallel_attn"):
        raise ConfigError("config.json new_decoder_architecture=true with parallel_attn false: transformers' Falcon cannot run "
                          "that layer (its new decoder is parallel); set parallel_attn true")
    if (new and norms not in (None, 1, 2)) or (not new and parallel and norms == 2):
        raise ConfigError(f"config.json num_ln_in_parallel_attn={norms}: transformers' Falcon runs 2 (ln_attn and ln_mlp) or 1 only "
                          "with new_decoder_architecture, else one norm: set it to 1, 2 or null accordingly")
    if not new and not raw.get("multi_query") and kv != heads:
        raise ConfigError(f"config.json num_kv_heads={kv} without multi_query or new_decoder_architecture: transformers' Falcon "
                          f"then gives every one of the {heads} heads its own key and value; remove num_kv_heads")
    bias = bool(raw.get("bias"))
    alibi = dict(position_embedding="alibi", alibi=Alibi(bloom_slopes(heads), bf16=True, scale=(raw["hidden_size"] // heads) ** -0.5)) \
        if raw.get("alibi") else {}
    return dict(num_kv_heads=kv if new else 1 if raw.get("multi_query") else heads, parallel_residual=parallel,
                parallel_mlp_norm=new and norms in (None, 2), gated_mlp=False, qkv_bias=bias, o_bias=bias, mlp_bias=bias, **alibi)


def falcon_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = model_ends(cfg, "transformer.word_embeddings.weight", "transformer.ln_f")
    if not cfg.parallel_residual:
        norms = (("input_layernorm", "input_layernorm"), ("post_attention_layernorm", "post_attention_layernorm"))
    else:
        norms = (("ln_attn", "input_layernorm"), ("ln_mlp", "post_attention_layernorm")) if cfg.parallel_mlp_norm else \
            (("input_layernorm", "input_layernorm"),)
    group = cfg.num_heads // cfg.num_kv_heads
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{theirs}.{p}", ours + (norm, p)) for theirs, norm in norms for p in ("weight", "bias")]
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            attn = ours + ("self_attn", name)
            specs.append(WeightSpec(f"{hf}self_attention.query_key_value.weight", attn + ("kernel",), FusedQKV(part, group)))
            if cfg.qkv_bias:
                specs.append(WeightSpec(f"{hf}self_attention.query_key_value.bias", attn + ("bias",), FusedQKV(part, group)))
        for theirs, path, n_in in (("self_attention.dense", ("self_attn", "o_proj"), 2), ("mlp.dense_h_to_4h", ("mlp", "up_proj"), 1),
                                   ("mlp.dense_4h_to_h", ("mlp", "down_proj"), 1)):
            specs += dense(hf + theirs, ours + path, Linear(n_in), cfg.o_bias)  # bias: one switch for every projection
    return specs


ARCHITECTURES = (Architecture(
    name="FalconForCausalLM", module=FalconForCausalLM, weight_map=falcon_weight_map, hf_model_type="falcon",
    # heads of hidden_size / num_attention_heads; kv heads num_kv_heads's (new decoder) or multi_query's; its MLP width,
    # activation and biases its own keys' (falcon_names)
    ignored_keys=NO_WINDOW + ("num_key_value_heads", "hidden_act", "intermediate_size", "attention_bias", "mlp_bias"),
    not_null=NOT_NULL + ("layer_norm_epsilon", "activation", "rope_theta"),
    common_names=falcon_names, config_defaults=falcon_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(layer_norm_epsilon=1e-5, activation="gelu", tie_word_embeddings=True, max_position_embeddings=2048,
                     multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False, alibi=False),
    # Falcon-40B's new decoder (grouped q/k/v, ln_attn and ln_mlp) with GQA and biases; SPELLINGS has Falcon-7B's
    # multi-query layer, the sequential one and one norm in the new decoder
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_kv_heads=2,
                     new_decoder_architecture=True, ffn_hidden_size=96, activation="gelu", bias=True, layer_norm_epsilon=1e-5,
                     max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
),)

