"""Laguna (LagunaForCausalLM, poolside) and Mellum (MellumForCausalLM, JetBrains Mellum 2, transformers' derivative
of Laguna's model): the shared pre-norm decoder with per-head q/k RMSNorms, a rope per layer type (rope_parameters
keyed by full_attention / sliding_attention: `local_rope`, each rotating int(head_dim * partial_rotary_factor) dims,
all of them where an entry leaves the factor out; `mimo_v2_flash.layer_type_ropes`), sliding-window layers as
layer_types says (all full where left out, whatever sliding_window says) and dense MLPs on the layers
mlp_layer_types calls dense. Each difference from the shared modules is an option of theirs:

Laguna: its attention's output times softplus(g_proj(x)) in float32, one gate per head (gating true or
"per-head") or per head and dim (`attn_gate_act`, `attn_gate_per_head`); query heads per layer
(num_attention_heads_per_layer: `heads_per_layer`); q/k/v/o biases where attention_bias. Its experts: sigmoid
scores of the soft-capped logits (moe_router_logit_softcapping: `router_softcap`), the top k by score plus the
score bias, renormalised, the routed output times moe_routed_scaling_factor, beside an ungated shared expert
shared_expert_intermediate_size wide (0, which jaxllm's config reading refuses for every family, is
refused); the first layer dense where mlp_layer_types is left out.
moe_apply_router_weight_on_input, which transformers does not implement, is refused.

Mellum: Qwen3-MoE's attention and experts (softmax router, norm_topk_prob) in Laguna's model; every layer routed
where mlp_layer_types is left out. Its attention rotates whole heads: a partial_rotary_factor (a shape error in
transformers) is refused. Its multi-token-prediction module mtp.* is not read."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import INDEX, MAX_HEADS, NON_NEGATIVE, Field, check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.mimo_v2_flash import layer_type_ropes
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy, Linear
from jaxllm.models.weights import WeightSpec

OWN_FIELDS = {"num_attention_heads_per_layer": Field(int, 1, MAX_HEADS, many="list", empty=False), "gating": Field(bool, or_text=True),
              "moe_routed_scaling_factor": Field(float), "moe_router_logit_softcapping": NON_NEGATIVE,
              "moe_apply_router_weight_on_input": Field(bool), "num_mtp_layers": INDEX, "num_nextn_predict_layers": INDEX}


def full_layers(raw: dict) -> dict:
    """layer_types as Laguna's and Mellum's config classes build them where left out: every layer full."""
    check_fields(raw, OWN_FIELDS, "config.json")
    if raw.get("layer_types") is not None or raw.get("num_hidden_layers") is None:  # no layers: require_fields refuses it
        return raw
    return dict(raw, layer_types=["full_attention"] * raw["num_hidden_layers"])


def _layers(raw: dict, dense: int, rope: dict, partial: float = 1.0) -> dict:
    """The fields both read alike: the rope per layer type, the dense layers (the first `dense` where mlp_layer_types is
    left out), the experts' shapes."""
    experts, types = raw["num_experts"], raw["layer_types"]
    if not experts:
        raise ConfigError(f"config.json num_experts={experts} leaves the sparse layers no experts (transformers' router "
                          "fails): give the checkpoint's num_experts")
    return dict(layer_type_ropes(raw, types, partial, rope), qk_norm="per_head", mlp_bias=False, num_experts=experts,
                experts_per_token=raw["num_experts_per_tok"], moe_intermediate_size=raw["moe_intermediate_size"],
                dense_layers=tuple(i for i, t in enumerate(mlp_layer_types(raw, dense)) if t == "dense"))


LAGUNA_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}}


def laguna_defaults(raw: dict) -> dict:
    if raw.get("moe_apply_router_weight_on_input"):
        raise ConfigError("config.json moe_apply_router_weight_on_input=true is not implemented by transformers' Laguna (it "
                          "refuses the config): set it to false")
    layers, kv = raw["num_hidden_layers"], raw["num_key_value_heads"]
    heads = raw.get("num_attention_heads_per_layer") or [raw["num_attention_heads"]] * layers
    if len(heads) != layers or any(h % kv for h in heads):
        raise ConfigError(f"config.json num_attention_heads_per_layer {heads!r:.80} must give each of the {layers} layers a "
                          f"multiple of num_key_value_heads={kv} (transformers refuses or fails otherwise): correct it")
    gating = raw["gating"]
    return dict(
        _layers(raw, 1, LAGUNA_ROPE), qkv_bias=bool(raw["attention_bias"]), o_bias=bool(raw["attention_bias"]),
        heads_per_layer=tuple(heads), attn_output_gate=True, attn_gate_bias=False, attn_gate_act="softplus",
        attn_gate_per_head=gating is True or gating == "per-head",
        shared_expert_intermediate_size=raw["shared_expert_intermediate_size"], shared_expert_gated=False,
        router="sigmoid_topk", router_score_bias=True, norm_topk_prob=True, router_softcap=float(raw["moe_router_logit_softcapping"]),
        routed_scaling=float(raw["moe_routed_scaling_factor"]),
    )


def laguna_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """The MoE map (Qwen2-MoE's names, the score bias under mlp.experts, the shared expert mlp.shared_expert), each
    attention's gate g_proj."""
    specs = moe_weight_map("mlp", EXPERTS, shared="shared_expert", score_bias=("experts.e_score_correction_bias", Copy()))(cfg)
    return specs + [WeightSpec(f"model.layers.{i}.self_attn.g_proj.weight", ("model", "layers", i, "self_attn", "gate_proj", "kernel"),
                               Linear()) for i in range(cfg.num_layers)]


MELLUM_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}


def mellum_names(raw: dict) -> dict:
    """The experts under num_local_experts (MellumConfig's attribute_map alias, which wins), else num_experts."""
    raw = full_layers(raw)
    return dict(raw, num_experts=raw["num_local_experts"]) if "num_local_experts" in raw else raw


def mellum_defaults(raw: dict) -> dict:
    if (raw.get("num_mtp_layers") or raw.get("num_nextn_predict_layers") or 0) > 1:
        raise ConfigError("config.json asks for more than one multi-token-prediction layer, which transformers' MellumConfig "
                          "refuses: set num_mtp_layers to 0 or 1")
    layers = _layers(raw, 0, MELLUM_ROPE)
    if any(rope is not None and rope.partial_rotary_factor != 1 for rope in (layers["rope"], layers["local_rope"])):
        raise ConfigError("config.json rope_parameters gives a partial_rotary_factor, which transformers' Mellum attention cannot "
                          "apply (it rotates whole heads: a shape error): remove it or set it to 1")
    return dict(layers, qkv_bias=bool(raw["attention_bias"]), o_bias=bool(raw["attention_bias"]), norm_topk_prob=bool(raw["norm_topk_prob"]))


_NOT_NULL = NOT_NULL + ("rms_norm_eps", "hidden_act", "num_key_value_heads", "head_dim", "attention_bias", "num_experts",
                        "num_experts_per_tok", "moe_intermediate_size")
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
             layer_types=["full_attention", "sliding_attention", "sliding_attention"], sliding_window=8, num_experts=6,
             num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
             rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}})

ARCHITECTURES = (Architecture(
    name="LagunaForCausalLM", module=CausalLM, weight_map=laguna_weight_map, hf_model_type="laguna", config_defaults=laguna_defaults,
    common_names=full_layers, partial_rotary=True,
    # Qwen2MoeConfig's keys LagunaConfig removes; its rotary embedding reads rope_parameters alone
    ignored_keys=("decoder_sparse_step", "mlp_only_layers", "qkv_bias", "norm_topk_prob", "use_sliding_window", "max_window_layers",
                  "rope_theta", "partial_rotary_factor", "mlp_bias"),
    # LagunaConfig's field defaults (Laguna-XS.2's shapes)
    hf_defaults=dict(vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=40, num_attention_heads=48,
                     num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-6, sliding_window=512,
                     moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts_per_tok=8, num_experts=256,
                     head_dim=128, attention_bias=False, gating=True, moe_routed_scaling_factor=1.0,
                     moe_apply_router_weight_on_input=False, moe_router_logit_softcapping=0.0),
    not_null=_NOT_NULL + ("shared_expert_intermediate_size", "gating", "moe_routed_scaling_factor", "moe_apply_router_weight_on_input",
                          "moe_router_logit_softcapping"),
    # layer 0 full and dense, 1 and 2 sliding (window 8) and routed: 6 experts, top 2, soft-capped, scaled, beside a shared
    # expert; query heads per layer (4, 8, 4) over 2 kv heads; a gate per head; q/k/v/o biases; a rope per layer type
    tiny_config=dict(_TINY, num_attention_heads=4, num_attention_heads_per_layer=[4, 8, 4], attention_bias=True, gating="per-head",
                     shared_expert_intermediate_size=48, moe_routed_scaling_factor=1.5, moe_router_logit_softcapping=2.0),
), Architecture(
    name="MellumForCausalLM", module=CausalLM, hf_model_type="mellum", config_defaults=mellum_defaults, common_names=mellum_names,
    weight_map=moe_weight_map("mlp", EXPERTS), partial_rotary=True, ignore=(r".*rotary_emb\..*inv_freq$", r"^mtp\."),
    # Qwen3MoeConfig's keys MellumConfig removes; its rotary embedding reads rope_parameters alone
    ignored_keys=("use_sliding_window", "decoder_sparse_step", "mlp_only_layers", "rope_theta", "partial_rotary_factor", "mlp_bias"),
    # MellumConfig's field defaults (Mellum2-12B-A2.5B's shapes)
    hf_defaults=dict(vocab_size=98304, hidden_size=2304, intermediate_size=7168, num_hidden_layers=28, num_attention_heads=32,
                     num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6, attention_bias=False,
                     sliding_window=1024, moe_intermediate_size=896, num_experts_per_tok=8, num_experts=64, norm_topk_prob=True,
                     head_dim=128),
    not_null=_NOT_NULL + ("norm_topk_prob", "num_local_experts"),
    # layer 1 dense, 0 and 2 routed (6 experts, top 2, renormalised); layer 0 full, 1 and 2 sliding (window 8); GQA;
    # q/k/v/o biases; a rope per layer type
    tiny_config=dict(_TINY, num_attention_heads=4, attention_bias=True, norm_topk_prob=True, mlp_layer_types=["sparse", "dense", "sparse"],
                     rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}),
))
