"""MPT (mosaicml/mpt-7b, mpt-30b): ALiBi position biases in place of rotary positions
(`ModelConfig.alibi`: build_mpt_alibi_tensor's slopes), LayerNorms without bias (norm_1, norm_2,
norm_f), q | k | v as rows of one Wqkv, no biases anywhere, an ungated 4 x d_model MLP with the
exact GELU, the sequential layer, tied embeddings; the attention's options nested in attn_config:
softmax_scale (the score scale; null: 1 / sqrt(head_dim)) and clip_qkv (q, k and v clamped after
Wqkv: the shared attention's clip).

transformers' MPT implements no more of MosaicML's options, and builds a model that ignores them
(dropping the checkpoint's tensors, or failing to load them): such configs are refused in one line
rather than computed otherwise than the checkpoint was trained (mpt_defaults): attn_type
multiquery_attention, qk_ln, prefix_lm, alibi false (learned positions), alibi_bias_max other than
the 8 transformers always uses, no_bias false, expansion_ratio other than 4, a logit_scale."""

import math

import numpy as np

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.cohere import NormNoBias
from jaxllm.models.config import Alibi, ModelConfig
from jaxllm.models.config_fields import FLAG, NAME, POSITIVE, Field, check_fields
from jaxllm.models.decoder import CausalLM, DecoderLayer, dense, model_ends
from jaxllm.models.gpt2 import spelled
from jaxllm.models.transforms import Linear, Part
from jaxllm.models.weights import WeightSpec

# What attn_config's fields may hold (MptAttentionConfig's types)
ATTN_FIELDS = {"attn_type": NAME, "clip_qkv": POSITIVE, "softmax_scale": POSITIVE, "prefix_lm": FLAG, "qk_ln": FLAG,
               "attn_uses_sequence_id": FLAG, "alibi": FLAG, "alibi_bias_max": Field(int, 1, 2**31 - 1)}


class MptDecoderLayer(DecoderLayer):
    norm_cls = NormNoBias


class MptForCausalLM(CausalLM):
    layer_cls = MptDecoderLayer
    final_norm = NormNoBias


def mpt_slopes(heads: int, bias_max: int = 8) -> tuple[float, ...]:
    """ALiBi's slope per head as transformers' build_mpt_alibi_tensor computes them (float32):
    1 / 2^(i * bias_max / n) for i = 1 .. n, n the power of two >= heads; for other head counts the
    odd-indexed ones, then the even-indexed, the first `heads` of them."""
    n = 2 ** math.ceil(math.log2(heads))
    slopes = np.float32(1.0) / np.power(np.float32(2.0), np.arange(1, n + 1, dtype=np.float32) * np.float32(bias_max / n))
    if n != heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:heads]
    return tuple(float(s) for s in slopes)


def mpt_names(raw: dict) -> dict:
    """MPT's spellings as the common ones: d_model, n_heads, n_layers (the common keys win, as
    MptConfig's attribute_map sets its own from them), max_seq_len (the length of its bias table:
    the context), layer_norm_epsilon; the MLP 4 x d_model with the exact GELU, as MptMLP hard-wires."""
    out = spelled(raw, (("d_model", "hidden_size"), ("n_heads", "num_attention_heads"), ("n_layers", "num_hidden_layers"),
                        ("max_seq_len", "max_position_embeddings"), ("layer_norm_epsilon", "layer_norm_eps")))
    hidden = out.get("hidden_size")
    out["intermediate_size"] = 4 * hidden if isinstance(hidden, int) else None
    out["hidden_act"] = "gelu"
    return out


def _refusals(raw: dict, attn: dict):
    """(what config.json says, why) for each option transformers' MPT does not run as trained."""
    yield attn.get("attn_type", "multihead_attention") != "multihead_attention", \
        f"attn_config.attn_type={attn.get('attn_type')!r}: transformers' MPT runs multihead_attention only; use that"
    yield attn.get("qk_ln"), "attn_config.qk_ln=true: transformers' MPT has no q/k LayerNorms (it drops the checkpoint's)"
    yield attn.get("prefix_lm"), "attn_config.prefix_lm=true: transformers' MPT attends causally over the prefix too"
    yield attn.get("alibi") is False, "attn_config.alibi=false (learned positions): transformers' MPT has ALiBi biases only"
    yield attn.get("alibi_bias_max", 8) != 8, \
        f"attn_config.alibi_bias_max={attn.get('alibi_bias_max')}: transformers' MPT builds its ALiBi slopes with 8 whatever it says"
    yield raw.get("no_bias") is False, "no_bias=false: transformers' MPT has no biases (it drops the checkpoint's)"
    yield raw.get("expansion_ratio", 4) != 4, \
        f"expansion_ratio={raw.get('expansion_ratio')}: transformers' MPT builds its MLP 4 x d_model wide whatever it says"
    yield raw.get("logit_scale") is not None, "logit_scale: transformers' MPT never scales its logits"


def mpt_defaults(raw: dict) -> dict:
    attn = check_fields(raw.get("attn_config") or {}, ATTN_FIELDS, "config.json", "attn_config.")
    for refused, why in _refusals(raw, attn):
        if refused:
            raise ConfigError(f"config.json {why}: not supported")
    heads = raw["num_attention_heads"]
    return dict(position_embedding="alibi", alibi=Alibi(mpt_slopes(heads)), num_kv_heads=heads, gated_mlp=False,
                qkv_bias=False, o_bias=False, mlp_bias=False, attn_scale=attn.get("softmax_scale"), clip_qkv=attn.get("clip_qkv"))


def mpt_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    e = cfg.hidden_size
    specs = [s for s in model_ends(cfg, "transformer.wte.weight", "transformer.norm_f") if s.path[-1] != "bias"]
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.blocks.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{theirs}.weight", ours + (norm, "weight"))
                  for theirs, norm in (("norm_1", "input_layernorm"), ("norm_2", "post_attention_layernorm"))]
        specs += [WeightSpec(f"{hf}attn.Wqkv.weight", ours + ("self_attn", name, "kernel"), Part(part * e, 3 * e, Linear()))
                  for part, name in enumerate(("q_proj", "k_proj", "v_proj"))]
        for theirs, path, n_in in (("attn.out_proj", ("self_attn", "o_proj"), 2), ("ffn.up_proj", ("mlp", "up_proj"), 1),
                                   ("ffn.down_proj", ("mlp", "down_proj"), 1)):
            specs += dense(hf + theirs, ours + path, Linear(n_in), bias=False)
    return specs


ARCHITECTURES = (Architecture(
    name="MptForCausalLM", module=MptForCausalLM, weight_map=mpt_weight_map, hf_model_type="mpt",
    # heads of d_model / n_heads, each with its own k/v; no rotary positions; MLP and activation hard-wired; its context max_seq_len
    ignored_keys=NO_WINDOW + ("num_key_value_heads", "head_dim", "hidden_act", "intermediate_size", "attention_bias", "mlp_bias",
                              "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "max_position_embeddings",
                              "clip_qkv"),
    not_null=("tie_word_embeddings", "d_model", "n_heads", "n_layers", "max_seq_len", "expansion_ratio", "layer_norm_epsilon",
              "no_bias", "learned_pos_emb"),
    common_names=mpt_names, config_defaults=mpt_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(layer_norm_epsilon=1e-5, tie_word_embeddings=True, max_seq_len=2048, no_bias=True, expansion_ratio=4),
    # 6 heads (the slopes of 8, odd then even), clip_qkv that bites, a softmax_scale of its own; tied, as the Hub's
    tiny_config=dict(vocab_size=128, d_model=48, n_layers=3, n_heads=6, max_seq_len=256, layer_norm_epsilon=1e-5,
                     attn_config=dict(clip_qkv=1.0, softmax_scale=0.3), bos_token_id=1, eos_token_id=2),
),)
