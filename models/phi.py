"""Phi (phi-1, phi-1.5, phi-2): attention and MLP in parallel off one LayerNorm
(x + attn(ln x) + mlp(ln x)), partial rotary (half of each head unless partial_rotary_factor says
otherwise), biased q/k/v/dense, an optional LayerNorm of each query and key head (qk_layernorm), an
ungated fc1/fc2 MLP, a final LayerNorm and an output head with a bias (kept when the head is tied)."""


from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense, model_ends
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


class PhiForCausalLM(CausalLM):
    """The shared causal LM with Phi's layer and final LayerNorm; its head's bias, tied head or not,
    is the shared head_bias (phi_defaults)."""

    layer_cls = LayerNormDecoderLayer  # parallel (cfg.parallel_residual) with an ungated MLP
    final_norm = LayerNorm


def phi_defaults(raw: dict) -> dict:
    heads, head = raw["num_attention_heads"], raw.get("head_dim")
    if raw.get("qk_layernorm") and head is not None and head * heads != raw["hidden_size"]:
        raise ConfigError(f"config.json head_dim={head} with qk_layernorm: transformers' Phi normalizes heads of "
                          f"hidden_size / num_attention_heads = {raw['hidden_size'] / heads:g} values and cannot run "
                          "other heads; remove head_dim")
    return dict(qkv_bias=True, o_bias=True, head_bias=True, qk_norm="layernorm" if raw.get("qk_layernorm") else "none", parallel_residual=True,
                gated_mlp=False, mlp_bias=True)


# Phi's module names; GPT-J's (models/gptj.py) are the same tree spelled its own way
PHI_NAMES = dict(embed="model.embed_tokens.weight", norm="model.final_layernorm", layers="model.layers", ln="input_layernorm",
                 attn="self_attn", out="dense", mlp=("fc1", "fc2"))


def parallel_layout(cfg: ModelConfig, names: dict) -> list[WeightSpec]:
    """The weight map of Phi's module tree under `names`: embeddings, the final norm, the output head
    and its bias, each layer's one LayerNorm, q/k/v and output projections (biased as the config
    says), q/k LayerNorms where it has them, and the fc1 / fc2 MLP. `names["qkv"]`, where given, is
    (the one fused tensor q, k and v come from, {"q_proj": its transform, ...}): CodeGen's qkv_proj."""
    specs = model_ends(cfg, names["embed"], names["norm"])
    fused, parts = names.get("qkv", (None, {}))
    for i in range(cfg.num_layers):
        hf, ours = f"{names['layers']}.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{names['ln']}.{p}", ours + ("input_layernorm", p)) for p in ("weight", "bias")]
        specs += [WeightSpec(f"{hf}{names['attn']}.{fused}.weight", ours + ("self_attn", name, "kernel"), read) for name, read in parts.items()]
        for theirs, name in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), (names["out"], "o_proj")):
            if name in parts:
                continue
            out = name == "o_proj"
            specs += dense(f"{hf}{names['attn']}.{theirs}", ours + ("self_attn", name), Linear(2 if out else 1),
                           cfg.o_bias if out else cfg.qkv_bias)
        if cfg.qk_norm != "none":
            for theirs, name in (("q_layernorm", "q_norm"), ("k_layernorm", "k_norm")):
                specs += [WeightSpec(f"{hf}{names['attn']}.{theirs}.{p}", ours + ("self_attn", name, p)) for p in ("weight", "bias")]
        for theirs, name in zip(names["mlp"], ("up_proj", "down_proj")):
            specs += dense(f"{hf}mlp.{theirs}", ours + ("mlp", name))
    return specs


ARCHITECTURES = (Architecture(
    name="PhiForCausalLM", module=PhiForCausalLM, weight_map=lambda cfg: parallel_layout(cfg, PHI_NAMES), hf_model_type="phi",
    ignored_keys=NO_WINDOW, config_defaults=phi_defaults, partial_rotary=True, norm_eps_key="layer_norm_eps",
    # PhiConfig has no head_dim (a null one reaches its attention as None); a null partial_rotary_factor
    # leaves its rope parameters without one, which its attention then fails to find
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "head_dim", "partial_rotary_factor", "qk_layernorm"),
    hf_defaults=dict(layer_norm_eps=1e-5, hidden_act="gelu_new", partial_rotary_factor=0.5),
    # GQA and q/k LayerNorm, which phi-1/1.5/2 leave off; partial rotary 0.5 of heads of 16
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, layer_norm_eps=1e-5, hidden_act="gelu_new",
                     partial_rotary_factor=0.5, rope_theta=10000.0, qk_layernorm=True, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2),
),)
