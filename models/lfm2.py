"""LFM2, LFM2-MoE and LFM3 (LiquidAI; transformers' modeling_lfm2.py, modeling_lfm2_moe.py, modeling_lfm3.py):
hybrid decoders whose layers are gated short convs (layer type "conv": models/short_conv.py, a recurrent mixer
that keeps a state per sequence, no keys; no prefix cache: docs/architecture.md) or attention.

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
- LFM3: LFM2's conv layers and its names, with
  - sliding-window attention layers beside the full ones (layer types conv, sliding_attention,
    full_attention; by default full at 2 mod 4, sliding at the other multiples of 4 but 0, conv elsewhere);
  - Qwen3's attention (q_norm, k_norm per head; o_proj; q/k/v/o biases where attention_bias), its output
    times sigmoid of one gate per head from its own projection (use_attention_gate; self_attn.gate_proj in
    the checkpoint, g_proj in transformers); rope tables float32 and one rope per layer type as Gemma 4
    reads them (by default the sliding layers' plain with base 1e4, the full ones' proportional over half
    of each head with base 1e6);
  - norms on the mixer's and the MLP's outputs too (use_sandwich_norm: post_operator_norm, post_ffn_norm;
    gemma.SandwichLayer); the MLP intermediate_size wide as it is (LFM2-MoE's dense MLP).
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, dense, renamed
from jaxllm.models.gemma import SandwichLayer, sandwich_weight_map
from jaxllm.models.gemma4 import gemma4_rope
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
                moe_intermediate_size=raw["moe_intermediate_size"], dense_layers=tuple(range(min(raw["num_dense_layers"], raw["num_hidden_layers"]))),
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


LFM3_TYPES = ("conv", "sliding_attention", "full_attention")
_LFM3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},  # Lfm3Config's where null
              "full_attention": {"rope_type": "proportional", "rope_theta": 1_000_000.0, "partial_rotary_factor": 0.5}}


def lfm3_defaults(raw: dict) -> dict:
    """LFM2's conv layers; Lfm3Config's layer types where the file gives none; each attention type's rope."""
    n = raw["num_hidden_layers"]
    types = raw.get("layer_types") or ["full_attention" if i % 4 == 2 else "sliding_attention" if i % 4 == 0 and i > 0
                                       else "conv" for i in range(n)]
    types = known_layer_types(types, LFM3_TYPES, "LFM3", "transformers has no mask for it")
    attention = [t for t in types if t != "conv"]
    dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    rope = gemma4_rope(raw, attention, {t: (dim,) for t in attention}, default=_LFM3_ROPE, family="LFM3")
    out = dict(qk_norm="per_head", mlp_bias=False, hidden_act="silu", recurrent_kinds=("conv",), layer_types=types,
               linear_conv_kernel=raw["conv_L_cache"], conv_bias=bool(raw["conv_bias"]), rope_float32=True,
               local_rope=rope.get("sliding_attention"), sandwich_norms=bool(raw["use_sandwich_norm"]),
               **(dict(attn_output_gate=True, attn_gate_per_head=True, attn_gate_bias=False) if raw["use_attention_gate"] else {}))
    return dict(out, rope=rope["full_attention"]) if "full_attention" in rope else out


def lfm3_names(raw: dict) -> dict:
    """norm_eps as rms_norm_eps; rms_norm_eps itself, Lfm3Config's attribute_map alias of norm_eps, wins where given."""
    return dict(raw, rms_norm_eps=raw["rms_norm_eps"] if "rms_norm_eps" in raw else raw.get("norm_eps"))


def lfm3_layer(cfg: ModelConfig, layer: int, *, dtype, rngs):
    return (SandwichLayer if cfg.sandwich_norms else DecoderLayer)(cfg, layer, dtype=dtype, rngs=rngs)


class Lfm3ForCausalLM(CausalLM):
    layer_cls = staticmethod(lfm3_layer)


# our names -> LFM3's: LFM2's, its attention's as Qwen3's; with sandwich norms ours after the mixer is its post_operator_norm
_LFM3_NAMES = {k: v for k, v in _NAMES.items() if k not in ("o_proj", "q_norm", "k_norm")}
_SANDWICH_NAMES = dict(_LFM3_NAMES, post_attention_layernorm="post_operator_norm", pre_feedforward_layernorm="ffn_norm",
                       post_feedforward_layernorm="post_ffn_norm")


def lfm3_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """LFM2's map (its sandwich norms where use_sandwich_norm), each attention layer's gate where use_attention_gate."""
    specs = renamed(sandwich_weight_map(cfg), _SANDWICH_NAMES) if cfg.sandwich_norms else renamed(decoder_weight_map(cfg), _LFM3_NAMES)
    for i in [i for i in range(cfg.num_layers) if cfg.attn_output_gate and not cfg.layer_is_recurrent(i)]:
        specs += dense(f"model.layers.{i}.self_attn.gate_proj", ("model", "layers", i, "self_attn", "gate_proj"), bias=False)
    return specs + _conv_specs(cfg)


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

# Lfm3Config's field defaults (LFM3-1.7B's shapes); its rope: _LFM3_ROPE
_LFM3_DEFAULTS = dict(vocab_size=128_000, hidden_size=2048, intermediate_size=7680, num_hidden_layers=24, num_attention_heads=16,
                      num_key_value_heads=4, head_dim=128, max_position_embeddings=128_000, norm_eps=1e-5, tie_word_embeddings=True,
                      pad_token_id=124_893, bos_token_id=124_894, eos_token_id=124_900, conv_bias=False, conv_L_cache=7,
                      sliding_window=256, use_sandwich_norm=True, use_attention_gate=True, attention_bias=False)

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
                     use_expert_bias=True, norm_topk_prob=True, routed_scaling_factor=1.5),), Architecture(
    name="Lfm3ForCausalLM", module=Lfm3ForCausalLM, hf_model_type="lfm3", weight_map=lfm3_weight_map, config_defaults=lfm3_defaults,
    common_names=lfm3_names, norm_eps_key=("norm_eps", "rms_norm_eps"), hf_defaults=_LFM3_DEFAULTS,
    partial_rotary=True,  # the proportional rope's factor (gemma4_rope)
    # keys Lfm3Config dropped from Lfm2Config (LFM2's older spellings among them), and a flat rope base it never reads
    ignored_keys=("mlp_bias", "hidden_act", "rope_theta", "full_attn_idxs", "tie_embedding", "block_ff_dim", "block_multiple_of",
                  "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim") + NO_WINDOW_SWITCH,
    not_null=NOT_NULL + ("norm_eps", "rms_norm_eps", "num_key_value_heads", "head_dim", "conv_bias", "conv_L_cache",
                         "attention_bias", "use_sandwich_norm", "use_attention_gate"),
    # conv, sliding, full, conv; GQA; the conv's biases; the default per-type rope
    tiny_config=dict(_TINY, num_hidden_layers=4, head_dim=16, sliding_window=8, conv_bias=True, use_sandwich_norm=True,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     use_attention_gate=True, layer_types=["conv", "sliding_attention", "full_attention", "conv"],
                     rope_parameters=_LFM3_ROPE),
))
