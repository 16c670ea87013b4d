"""LFM2 and LFM2-MoE (LiquidAI; transformers' modeling_lfm2.py, modeling_lfm2_moe.py): hybrid decoders
whose layers are gated short convs (layer type "conv": models/short_conv.py, a recurrent mixer that keeps
a state per sequence, no keys; no prefix cache: docs/architecture.md) or attention.

The shared decoder with:
- Llama's attention with q/k RMSNorm per head (q_layernorm, k_layernorm) and no biases, its output
  projection named out_proj; the layer's norms operator_norm and ffn_norm, the final one embedding_norm
  (applied last, despite its name); the MLP feed_forward.w1 / w3 / w2 (silu-gated), no biases;
- LFM2's MLP width auto-adjusted (block_auto_adjust_ff_dim: 2/3 of intermediate_size, times
  block_ffn_dim_multiplier, rounded up to block_multiple_of); layer types from layer_types, else
  full_attn_idxs (every layer attention without either); rope theta 1e6 by default;
- older spellings: tie_embedding for tie_word_embeddings, LFM2's block_ff_dim for intermediate_size (both
  win, as the config classes read them);
- LFM2-MoE: the first num_dense_layers layers dense (intermediate_size as it is), the others routed
  experts (moe_intermediate_size wide) chosen by sigmoid scores plus expert_bias where use_expert_bias,
  renormalised with transformers' 1e-6 where norm_topk_prob, times routed_scaling_factor.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, decoder_weight_map, dense, renamed
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy
from jaxllm.models.weights import WeightSpec

LFM2_TYPES = ("full_attention", "conv")
# our names -> LFM2's
_NAMES = {"input_layernorm": "operator_norm", "post_attention_layernorm": "ffn_norm", "o_proj": "out_proj",
          "q_norm": "q_layernorm", "k_norm": "k_layernorm", "mlp.gate_proj": "feed_forward.w1",
          "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2", "norm": "embedding_norm"}


def lfm2_names(raw: dict) -> dict:
    """The common keys: norm_eps as rms_norm_eps; the older tie_embedding and block_ff_dim, which win over
    tie_word_embeddings and intermediate_size where both are given (Lfm2Config.__post_init__)."""
    raw = dict(raw, rms_norm_eps=raw.get("norm_eps"))
    for old, new in (("tie_embedding", "tie_word_embeddings"), ("block_ff_dim", "intermediate_size")):
        if old in raw:
            raw[new] = raw.pop(old)
    return raw


def _layer_types(raw: dict, every: bool) -> tuple[str, ...]:
    """layer_types, else (`every`: LFM2) attention on the layers full_attn_idxs names, all without it."""
    types = raw.get("layer_types")
    if types is None and every:
        idxs = raw.get("full_attn_idxs")
        attn = set(range(raw["num_hidden_layers"]) if idxs is None else idxs)
        types = ["full_attention" if i in attn else "conv" for i in range(raw["num_hidden_layers"])]
    if types is None:
        raise ConfigError("config.json gives no layer_types, without which transformers' Lfm2MoeForCausalLM cannot build its "
                          "layers: list full_attention or conv for each layer")
    return known_layer_types(types, LFM2_TYPES, "LFM2", "transformers has no mask for it")


def _common(raw: dict, every: bool) -> dict:
    return dict(qk_norm="per_head", qkv_bias=False, o_bias=False, mlp_bias=False, hidden_act="silu", recurrent_kinds=("conv",),
                layer_types=_layer_types(raw, every), linear_conv_kernel=raw["conv_L_cache"], conv_bias=bool(raw["conv_bias"]))


def lfm2_defaults(raw: dict) -> dict:
    width = raw["intermediate_size"]
    if raw["block_auto_adjust_ff_dim"]:  # Lfm2MLP
        width = int(2 * width / 3)
        if raw["block_ffn_dim_multiplier"] is not None:
            step = raw["block_multiple_of"]
            width = step * -(-int(raw["block_ffn_dim_multiplier"] * width) // step)
    return dict(_common(raw, every=True), intermediate_size=width)


def lfm2_moe_defaults(raw: dict) -> dict:
    return dict(_common(raw, every=False), num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"], dense_layers=tuple(range(raw["num_dense_layers"])),
                router="sigmoid_topk", router_score_bias=bool(raw["use_expert_bias"]), norm_topk_prob=bool(raw["norm_topk_prob"]),
                router_norm_eps=1e-6, routed_scaling=float(raw["routed_scaling_factor"]))


def _conv_specs(cfg: ModelConfig) -> list[WeightSpec]:
    """Each conv layer's in_proj, conv and out_proj (their biases where conv_bias)."""
    specs = []
    for i in filter(cfg.layer_is_recurrent, range(cfg.num_layers)):
        hf, ours = f"model.layers.{i}.conv.", ("model", "layers", i, "conv")
        specs += dense(hf + "in_proj", ours + ("in_proj",), bias=cfg.conv_bias)
        specs += dense(hf + "out_proj", ours + ("out_proj",), bias=cfg.conv_bias)
        specs += [WeightSpec(hf + "conv." + p, ours + ("conv", p)) for p in ("weight", "bias")[: 1 + cfg.conv_bias]]
    return specs


def lfm2_weight_map(base=decoder_weight_map):
    return lambda cfg: renamed(base(cfg), _NAMES) + _conv_specs(cfg)


# keys transformers' LFM2 never reads (its projections without biases, silu hard-wired, no window)
_IGNORED = ("sliding_window", "attention_bias", "mlp_bias", "hidden_act") + NO_WINDOW_SWITCH
_EXPERTS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_NOT_NULL = NOT_NULL + ("norm_eps", "num_key_value_heads", "head_dim", "conv_bias", "conv_L_cache", "rope_theta",
                         "tie_embedding")
# Lfm2Config's field defaults (LFM2-2.6B's shapes; rope theta its default_theta)
_DEFAULTS = dict(vocab_size=65536, hidden_size=2560, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=128_000, norm_eps=1e-5, tie_word_embeddings=True,
                 rope_theta=1_000_000.0, conv_bias=False, conv_L_cache=3, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
                 block_auto_adjust_ff_dim=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Lfm2MoeConfig's (LFM2-8B-A1B's)
_MOE_DEFAULTS = dict({k: v for k, v in _DEFAULTS.items() if not k.startswith("block_")}, hidden_size=2048,
                     intermediate_size=7168, moe_intermediate_size=1792, num_dense_layers=2, num_experts_per_tok=4,
                     num_experts=32, use_expert_bias=True, routed_scaling_factor=1.0, norm_topk_prob=True)
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, conv_L_cache=3,
             layer_types=["conv", "full_attention", "conv"])

ARCHITECTURES = (Architecture(
    name="Lfm2ForCausalLM", module=CausalLM, hf_model_type="lfm2", weight_map=lfm2_weight_map(),
    config_defaults=lfm2_defaults, common_names=lfm2_names, norm_eps_key="norm_eps", hf_defaults=_DEFAULTS,
    ignored_keys=_IGNORED,
    not_null=_NOT_NULL + ("block_multiple_of", "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim", "block_ff_dim"),
    # conv, attention, conv; the conv's biases; the MLP width adjusted (2/3 of 96, times 1.5, up to a multiple of 16: 96)
    tiny_config=dict(_TINY, conv_bias=True, block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.5, block_multiple_of=16),
), Architecture(
    name="Lfm2MoeForCausalLM", module=CausalLM, hf_model_type="lfm2_moe", config_defaults=lfm2_moe_defaults,
    weight_map=lfm2_weight_map(moe_weight_map("feed_forward", _EXPERTS, score_bias=("expert_bias", Copy()))),
    common_names=lfm2_names, norm_eps_key="norm_eps", hf_defaults=_MOE_DEFAULTS,
    # Lfm2MoeConfig reads no block_* key: its MLP is intermediate_size wide, block_ff_dim no older spelling of it
    ignored_keys=_IGNORED + ("block_ff_dim", "block_auto_adjust_ff_dim", "block_ffn_dim_multiplier", "block_multiple_of"),
    not_null=_NOT_NULL + ("moe_intermediate_size", "num_dense_layers", "num_experts", "num_experts_per_tok", "use_expert_bias",
                          "routed_scaling_factor", "norm_topk_prob"),
    # layer 0 dense, layers 1 and 2 routed (sigmoid scores with the expert bias, renormalised, scaled)
    tiny_config=dict(_TINY, moe_intermediate_size=32, num_dense_layers=1, num_experts=4, num_experts_per_tok=2,
                     use_expert_bias=True, norm_topk_prob=True, routed_scaling_factor=1.5),
))
