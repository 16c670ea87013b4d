"""AI21 Jamba (transformers' modeling_jamba.py: ai21labs/Jamba-v0.1, AI21-Jamba-*-1.5/1.6/1.7): the shared decoder
whose token mixer is attention on every attn_layer_period-th layer from attn_layer_offset, a Mamba layer
(models/mamba1.py, with RMS norms of the time step, B and C that have weights: dt_layernorm, b_layernorm,
c_layernorm, rms_norm_eps) on the others; routed experts (softmax, top num_experts_per_tok, weights not renormalised)
on every expert_layer_period-th layer from expert_layer_offset, a gated MLP elsewhere (everywhere with num_experts 1).

- attention without positions (JambaAttention applies no rotary embedding) and without biases;
- the layer's norms input_layernorm and pre_ff_layernorm, the final one final_layernorm, the MLP feed_forward, its
  router feed_forward.router;
- the experts one tensor per expert and projection as the Hub's files hold them, or fused ([X, 2F, E] gate_up_proj,
  [X, E, F] down_proj) as transformers 5 may save them (weights.split_experts);
- num_local_experts, an attribute_map alias of num_experts, wins over it;
- layer_types and layers_block_type are properties of JambaConfig, which transformers refuses to set: refused.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, renamed
from jaxllm.models.mamba import refuse_layer_types
from jaxllm.models.mamba1 import mamba1_fields, mamba1_specs
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.weights import WeightSpec, split_experts


def jamba_names(raw: dict) -> dict:
    """num_local_experts (JambaConfig's attribute_map alias) read as num_experts, which it wins over."""
    return raw if raw.get("num_local_experts") is None else dict(raw, num_experts=raw["num_local_experts"])


def _every(raw: dict, period: str, offset: str) -> tuple[int, ...]:
    """The layers i with i % raw[period] == raw[offset], the offset refused where it is not below the period (JambaConfig
    refuses it)."""
    if raw[offset] >= raw[period]:
        raise ConfigError(f"config.json {offset}={raw[offset]} is not smaller than {period}={raw[period]} (transformers "
                          f"refuses it): set {offset} below {period}")
    return tuple(i for i in range(raw["num_hidden_layers"]) if i % raw[period] == raw[offset])


def jamba_defaults(raw: dict) -> dict:
    refuse_layer_types(raw, "set attn_layer_period and attn_layer_offset instead", ("layer_types", "layers_block_type"))
    attn, routed = _every(raw, "attn_layer_period", "attn_layer_offset"), _every(raw, "expert_layer_period", "expert_layer_offset")
    n, experts = raw["num_hidden_layers"], raw["num_experts"]
    mamba = mamba1_fields(raw, raw["mamba_expand"] * raw["hidden_size"], state="mamba_d_state", conv="mamba_d_conv",
                          dt_rank="mamba_dt_rank", conv_bias="mamba_conv_bias", proj_bias="mamba_proj_bias")
    out = dict(mamba, layer_types=tuple("full_attention" if i in attn else "mamba1" for i in range(n)), recurrent_kinds=("mamba1",),
               mamba_bcdt_norm="weighted", mamba_norm_eps=float(raw["rms_norm_eps"]), position_embedding="none",
               qkv_bias=False, o_bias=False, mlp_bias=False)
    if experts > 1:  # JambaSparseMoeBlock only where a layer has more than one expert
        out.update(num_experts=experts, experts_per_token=raw["num_experts_per_tok"], norm_topk_prob=False,
                   dense_layers=tuple(i for i in range(n) if i not in routed))
    return out


_NAMES = {"post_attention_layernorm": "pre_ff_layernorm", "mlp": "feed_forward", "norm": "final_layernorm"}
_moe_map = moe_weight_map("feed_forward", {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"},
                          router="router.weight")


def jamba_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = renamed(_moe_map(cfg), _NAMES)
    for i in filter(cfg.layer_is_recurrent, range(cfg.num_layers)):
        specs += mamba1_specs(cfg, f"model.layers.{i}.mamba.", ("model", "layers", i, "mamba"))
    return specs


# JambaConfig's field defaults (Jamba-v0.1's shapes)
_DEFAULTS = dict(vocab_size=65536, tie_word_embeddings=False, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-6, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2, max_position_embeddings=262144, num_experts_per_tok=2, num_experts=16,
                 expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4, mamba_d_state=16,
                 mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True, mamba_proj_bias=False)
# keys transformers' Jamba never reads (no positions, no window, no biases)
_IGNORED = ("sliding_window", "use_sliding_window", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
            "attention_bias", "mlp_bias")

ARCHITECTURES = (Architecture(
    name="JambaForCausalLM", module=CausalLM, weight_map=jamba_weight_map, hf_model_type="jamba", config_defaults=jamba_defaults,
    common_names=jamba_names, hf_defaults=_DEFAULTS, ignored_keys=_IGNORED, tensors=split_experts,
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok", "expert_layer_period",
                         "expert_layer_offset", "attn_layer_period", "attn_layer_offset", "mamba_d_state", "mamba_d_conv",
                         "mamba_expand", "mamba_dt_rank", "mamba_conv_bias", "mamba_proj_bias"),
    # mamba, attention, mamba, attention; 4 experts, top 2, on layers 0 (mamba) and 3 (attention), dense MLPs on 1 and 2;
    # GQA; the Mamba projections' and conv's biases, a time step of rank 6
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     attn_layer_period=2, attn_layer_offset=1, expert_layer_period=3, expert_layer_offset=0, num_experts=4,
                     num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=6,
                     mamba_conv_bias=True, mamba_proj_bias=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
