"""GPT-NeoX (Pythia): LayerNorm, parallel residual (x + attn(ln1 x) + mlp(ln2 x)), partial rotary,
an ungated GELU MLP, and q/k/v fused in one matrix interleaved per head ([heads, 3, head_dim])."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, rotary_fraction
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense, model_ends
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import FusedQKV, Linear
from jaxllm.models.weights import WeightSpec


class GPTNeoXForCausalLM(CausalLM):
    layer_cls = LayerNormDecoderLayer  # parallel: the MLP off a norm of its own (parallel_mlp_norm)
    final_norm = LayerNorm


def neox_names(raw: dict, rotary_pct: float = 0.25) -> dict:
    """GPT-NeoX's own rope spellings (rotary_pct, rotary_emb_base; transformers' defaults `rotary_pct` and
    10,000) as the common ones, where the config gives no common one. A top-level
    partial_rotary_factor is not one: GPTNeoXConfig reads the rope parameters' or rotary_pct."""
    out = dict(raw)
    out["partial_rotary_factor"] = raw.get("rotary_pct", rotary_pct)
    out.setdefault("rope_theta", raw.get("rotary_emb_base", 10000.0))
    if out.get("head_dim") is not None:
        out = _head_dim_as_rotary(out)
    return out


def _head_dim_as_rotary(raw: dict) -> dict:
    """config.json without head_dim, which GPT-NeoX's rotary embedding alone reads: it rotates
    int(head_dim x partial factor) dims of heads that stay hidden_size / num_attention_heads wide.
    That many dims as the partial factor of the real heads (half a dim above them, so that
    int(head x factor) gives them back through float rounding); more than a head, or an odd
    number, transformers cannot apply (a shape error, or a frequency short), and is refused."""
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if not isinstance(hidden, int) or not isinstance(heads, int) or hidden % heads:
        return raw  # refused later, by name
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    rope = dict(raw.get(key) or {})
    factor = rope.get("partial_rotary_factor") or raw["partial_rotary_factor"]
    head, given = hidden // heads, raw["head_dim"]
    dims = int(given * factor)
    if dims > head or dims % 2:
        raise ConfigError(f"config.json head_dim={given} x partial rotary factor {factor:g} rotates {dims} dims of GPT-NeoX's "
                          f"heads of {head} (hidden_size / num_attention_heads): transformers cannot apply that rotary "
                          "embedding; remove head_dim")
    rope["partial_rotary_factor"] = rotary_fraction(dims, head)
    out = {k: v for k, v in raw.items() if k != "head_dim"}
    return dict(out, partial_rotary_factor=rope["partial_rotary_factor"], **{key: rope})


# GPT-NeoX's module names; Persimmon's (models/persimmon.py) are the same tree spelled its own way
NEOX_NAMES = dict(embed="gpt_neox.embed_in.weight", norm="gpt_neox.final_layer_norm", head="embed_out.weight", layers="gpt_neox.layers",
                  attn="attention")


def neox_layout(cfg: ModelConfig, names: dict) -> list[WeightSpec]:
    """The weight map of GPT-NeoX's module tree under `names`: embeddings, the final norm, the output
    head, each layer's two LayerNorms, q/k/v fused per head in query_key_value, the dense output
    projection (biased as the config says), Phi's q/k LayerNorms (q_layernorm, k_layernorm) where the
    model has them, and the dense_h_to_4h / dense_4h_to_h MLP."""
    specs = model_ends(cfg, names["embed"], names["norm"], head=names["head"])
    for i in range(cfg.num_layers):
        hf, ours = f"{names['layers']}.{i}.", ("model", "layers", i)
        attn = f"{hf}{names['attn']}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            specs += [WeightSpec(f"{hf}{norm}.{p}", ours + (norm, p)) for p in ("weight", "bias")]
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            specs.append(WeightSpec(f"{attn}query_key_value.weight", ours + ("self_attn", name, "kernel"), FusedQKV(part)))
            if cfg.qkv_bias:
                specs.append(WeightSpec(f"{attn}query_key_value.bias", ours + ("self_attn", name, "bias"), FusedQKV(part)))
        specs += dense(f"{attn}dense", ours + ("self_attn", "o_proj"), Linear(2), cfg.layer_o_bias(i))
        if cfg.qk_norm == "layernorm":
            specs += [WeightSpec(f"{attn}{theirs}_layernorm.{p}", ours + ("self_attn", f"{theirs}_norm", p)) for theirs in "qk"
                      for p in ("weight", "bias")]
        mlp = dict(bias=cfg.mlp_bias)
        specs += dense(f"{hf}mlp.dense_h_to_4h", ours + ("mlp", "up_proj"), **mlp) + dense(f"{hf}mlp.dense_4h_to_h", ours + ("mlp", "down_proj"), **mlp)
    return specs


ARCHITECTURES = (Architecture(
    name="GPTNeoXForCausalLM", module=GPTNeoXForCausalLM, weight_map=lambda cfg: neox_layout(cfg, NEOX_NAMES), hf_model_type="gpt_neox",
    # every head has its own k/v; head_dim sets the rotary dims alone (neox_names)
    ignored_keys=NO_WINDOW + ("num_key_value_heads",),
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "attention_bias", "use_parallel_residual", "rotary_pct", "rotary_emb_base"),
    common_names=neox_names, head_name="embed_out.weight", base_prefix="gpt_neox", partial_rotary=True, norm_eps_key="layer_norm_eps",
    # Checkpoints converted by EleutherAI's tools (Pythia) keep each layer's causal-mask buffers,
    # which transformers ignores (_keys_to_ignore_on_load_unexpected), beside the rotary inv_freq.
    ignore=(r".*rotary_emb\.inv_freq$", r".*\.attention\.bias$", r".*\.attention\.masked_bias$"),
    hf_defaults=dict(hidden_act="gelu", layer_norm_eps=1e-5, attention_bias=True, use_parallel_residual=True),
    config_defaults=lambda raw: dict(
        qkv_bias=raw.get("attention_bias") is not False, o_bias=raw.get("attention_bias") is not False,
        parallel_residual=raw.get("use_parallel_residual") is not False, parallel_mlp_norm=True, gated_mlp=False, mlp_bias=True,
    ),
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=256, layer_norm_eps=1e-5,
                     rotary_pct=0.25, rotary_emb_base=10000, hidden_act="gelu", use_parallel_residual=True,
                     bos_token_id=1, eos_token_id=2),
),)
