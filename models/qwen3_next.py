"""Qwen3-Next and Qwen3.5: hybrid decoders whose layers are gated-DeltaNet linear attention
(models/linear_attention.py) or full attention (transformers' modeling_qwen3_next.py, modeling_qwen3_5.py).

The shared decoder with:
- layer_types "linear_attention" / "full_attention" (by default every full_attention_interval-th
  layer, 4th, full); a linear layer keeps a recurrent state per sequence, no keys (the engine's
  state slots; no prefix cache: docs/architecture.md);
- gated full attention: q_proj gives each head its query and a gate, the output times sigmoid(gate)
  before o_proj (attn_output_gate); q/k RMSNorm per head; partial rotary (0.25 by default);
- RMSNorms scaling by (1 + w) in float32 (norm_offset 1.0, Qwen3NextRMSNorm), the linear layers'
  own gated norm by w;
- Qwen3-Next: routed experts with a gated shared expert (Qwen2-MoE's block), its linear layers'
  projections fused per key head (in_proj_qkvz, in_proj_ba: read apart by `Regrouped`);
- Qwen3.5 (dense MLP): the linear projections apart (in_proj_qkv, in_proj_z, in_proj_b,
  in_proj_a); its text model also loads out of Qwen3_5ForConditionalGeneration checkpoints. Its
  multimodal rope (mrope) turns text positions as plain rope does, which is what is computed here;
- Qwen3.5-MoE (modeling_qwen3_5_moe.py): Qwen3.5's layers with Qwen3-Next's routed experts and gated
  shared expert in every layer (its config has no mlp_only_layers, decoder_sparse_step, norm_topk_prob
  nor intermediate_size: the router always renormalises its top k); the experts per expert
  (experts.{j}.gate_proj, as transformers saves them) or fused (experts.gate_up_proj [X, 2F, E],
  experts.down_proj [X, E, F], transformers' parameters; weights.split_experts reads them apart).
"""

import dataclasses

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, decoder_weight_map, dense, fused_rows
from jaxllm.models.mixers import mixer_cls
from jaxllm.models.moe import dense_layers, moe_weight_map
from jaxllm.models.transforms import ByHead, Concatenated, Copy, Linear, Regrouped
from jaxllm.models.weights import WeightSpec, split_experts

HYBRID_TYPES = ("linear_attention", "full_attention")


def hybrid_layer_types(raw: dict) -> tuple[str, ...]:
    """The config class's layer types: the file's, else linear but every full_attention_interval-th (4th) layer."""
    every = raw.get("full_attention_interval") or 4
    types = raw.get("layer_types") or ["linear_attention" if (i + 1) % every else "full_attention"
                                       for i in range(raw["num_hidden_layers"])]
    return known_layer_types(types, HYBRID_TYPES, "Qwen3-Next / Qwen3.5", "transformers builds no mixer for it")


def hybrid_defaults(raw: dict) -> dict:
    return dict(
        qk_norm="per_head", norm_offset=1.0, attn_output_gate=True, mlp_bias=False, layer_types=hybrid_layer_types(raw),
        recurrent_kinds=("linear_attention",),
        linear_conv_kernel=raw["linear_conv_kernel_dim"], linear_key_head_dim=raw["linear_key_head_dim"],
        linear_value_head_dim=raw["linear_value_head_dim"], linear_key_heads=raw["linear_num_key_heads"],
        linear_value_heads=raw["linear_num_value_heads"],
    )


def _routed_defaults(raw: dict, norm_topk_prob: bool, dense: tuple[int, ...]) -> dict:
    """The hybrid layers with routed experts and the gated shared expert."""
    return dict(hybrid_defaults(raw), num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"], norm_topk_prob=norm_topk_prob, dense_layers=dense,
                shared_expert_intermediate_size=raw["shared_expert_intermediate_size"])


def qwen3_next_defaults(raw: dict) -> dict:
    return _routed_defaults(raw, bool(raw["norm_topk_prob"]), dense_layers(raw, raw["num_experts"]))


def qwen3_5_moe_defaults(raw: dict) -> dict:
    """Every layer routed, the top k always renormalised (Qwen3_5MoeTopKRouter)."""
    if not raw["num_experts"] or not raw["num_experts_per_tok"]:
        raise ConfigError("config.json num_experts / num_experts_per_tok is 0, but every Qwen3.5-MoE layer routes its "
                          "tokens to experts (transformers cannot pick from none): give both a positive value")
    return _routed_defaults(raw, True, ())


def _moe_width(raw: dict) -> dict:
    """Qwen3_5MoeTextConfig has no intermediate_size (no layer is dense): the experts' width stands for it."""
    return dict(raw, intermediate_size=raw["moe_intermediate_size"])


def linear_specs(cfg: ModelConfig, layer: int, layout: str = "apart") -> list[WeightSpec]:
    """A linear-attention layer's tensors, its input projections by `layout`: Qwen3.5's apart ("apart"), Qwen3-Next's
    fused per key head ("per_key_head": in_proj_qkvz, in_proj_ba) or LaraMini's one tensor ("rows": in_proj, the four
    one after another, each a `Part` of it); q_proj, k_proj and v_proj where the layer projects them apart
    (cfg.linear_qkv_apart: OLMo Hybrid); Kimi Delta Attention's low-rank forget and output gates in place of
    in_proj_a and in_proj_z."""
    attr = mixer_cls(cfg, layer).attr  # linear_attn; Kimi's self_attn
    hf, ours = f"model.layers.{layer}.{attr}.", ("model", "layers", layer, attr)
    kda = cfg.layer_mixer(layer) == "kimi_delta_attention"  # its decay per channel [H * Dk], A_log [1, 1, H, 1]
    hk, dk, dv = cfg.linear_key_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    group = cfg.linear_value_heads // hk
    # the conv's channels q | k | v (each head by head), ours per key head (GatedDeltaNet)
    qkv = ByHead(hk, (dk, dk, group * dv), (0, 1, 2))
    conv = dataclasses.replace(qkv, lead=2)
    if cfg.linear_qkv_apart:  # the conv's weight as q, k and v tensors (OLMo Hybrid's checkpoints, transformers' Concatenate)
        specs = [WeightSpec(tuple(f"{hf}{p}_conv1d.weight" for p in "qkv"), ours + ("conv1d", "weight"), Concatenated(3, conv))]
    else:
        specs = [WeightSpec(hf + "conv1d.weight", ours + ("conv1d", "weight"), conv)]
    specs += [WeightSpec(hf + "dt_bias", ours + ("dt_bias",), Copy(flatten=kda)),
             WeightSpec(hf + "A_log", ours + ("A_log",), Copy(flatten=True) if cfg.kda_full_rank else Copy(lead=2 if kda else 0)),
             WeightSpec(hf + "norm.weight", ours + ("norm", "weight"))]
    specs += dense(hf + "out_proj", ours + ("out_proj",), Linear(2), bias=False)
    if layout == "rows":  # q | k | v (each piece's heads together, as in_proj_qkv's), z, b, a
        hv = cfg.linear_value_heads
        widths = (2 * hk * dk + hv * dv, hv * dv, hv, hv)
        return specs + fused_rows(hf + "in_proj.weight", [(ours + (name, "kernel"), rows, inner) for name, rows, inner in zip(
            ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"), widths, (qkv, Linear(), Linear(), Linear()))])
    if layout == "apart":
        for name in ("q_proj", "k_proj", "v_proj") if cfg.linear_qkv_apart else ():
            specs += dense(hf + name, ours + (name,), bias=False)
        if not cfg.linear_qkv_apart:
            specs += dense(hf + "in_proj_qkv", ours + ("in_proj_qkv",), qkv, bias=False)
        gates = ("f_proj", "g_proj") if cfg.kda_full_rank else ("f_a_proj", "f_b_proj", "g_a_proj", "g_b_proj")
        for name in ("in_proj_b",) + (gates if kda else ("in_proj_z", "in_proj_a")):
            specs += dense(hf + name, ours + (name,), bias=False)
        return specs
    qkvz, ba = (dk, dk, group * dv, group * dv), (group, group)
    return specs + [
        WeightSpec(hf + "in_proj_qkvz.weight", ours + ("in_proj_qkv", "kernel"), ByHead(hk, qkvz, (0, 1, 2), interleaved=True)),
        WeightSpec(hf + "in_proj_qkvz.weight", ours + ("in_proj_z", "kernel"), Regrouped(hk, qkvz, (3,))),
        WeightSpec(hf + "in_proj_ba.weight", ours + ("in_proj_b", "kernel"), Regrouped(hk, ba, (0,))),
        WeightSpec(hf + "in_proj_ba.weight", ours + ("in_proj_a", "kernel"), Regrouped(hk, ba, (1,))),
    ]


def hybrid_weight_map(layout: str, base=decoder_weight_map):
    """`base`'s map (no attention tensors on the linear layers), theirs added (linear_specs' `layout`); where the
    attention has an output gate, each attention layer's q_proj read as its query rows and its gate rows (per head:
    query, then gate)."""

    def weight_map(cfg: ModelConfig) -> list[WeightSpec]:
        specs, h, d = [], cfg.num_heads, cfg.head_dim
        for spec in base(cfg):
            parts = spec.hf_names[0].split(".")
            if len(parts) > 4 and parts[1] == "layers" and parts[3] == "self_attn":
                if parts[4] == "q_proj" and cfg.attn_output_gate:
                    inner = Linear() if parts[5] == "weight" else Copy(flatten=True)
                    path = spec.path[:-2]
                    specs += [WeightSpec(spec.hf_name, path + ("q_proj", spec.path[-1]), Regrouped(h, (d, d), (0,), inner)),
                              WeightSpec(spec.hf_name, path + ("gate_proj", spec.path[-1]), Regrouped(h, (d, d), (1,), inner))]
                    continue
            specs.append(spec)
        for i in range(cfg.num_layers):
            if cfg.layer_is_linear(i):
                specs += linear_specs(cfg, i, layout)
        return specs

    return weight_map


HYBRID_NOT_NULL = RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "linear_conv_kernel_dim",
                                   "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads")
# Qwen3NextConfig's field defaults (Qwen3-Next-80B-A3B's shapes); Qwen3_5TextConfig's differ where given below
_NEXT_DEFAULTS = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=48, num_attention_heads=16,
                      num_key_value_heads=2, head_dim=256, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=10000.0,
                      partial_rotary_factor=0.25, tie_word_embeddings=False, attention_bias=False, linear_conv_kernel_dim=4,
                      linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32)
_QWEN3_5_DEFAULTS = dict(_NEXT_DEFAULTS, vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
                         num_key_value_heads=4)
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
             linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=12, linear_num_key_heads=2,
             linear_num_value_heads=4, layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"])

QWEN3_5_MULTIMODAL = Wrapper(name="Qwen3_5ForConditionalGeneration", model_type="qwen3_5", text_model_type="qwen3_5_text",
                             other_modules=("visual",), top_level=dict(tie_word_embeddings=False))

# Qwen3_5MoeTextConfig's field defaults (Qwen3.5-35B-A3B's shapes)
_QWEN3_5_MOE_DEFAULTS = dict({k: v for k, v in _NEXT_DEFAULTS.items() if k != "intermediate_size"}, vocab_size=248320,
                             num_hidden_layers=40, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                             shared_expert_intermediate_size=512)
QWEN3_5_MOE_MULTIMODAL = Wrapper(name="Qwen3_5MoeForConditionalGeneration", model_type="qwen3_5_moe",
                                 text_model_type="qwen3_5_moe_text", other_modules=("visual",),
                                 top_level=dict(tie_word_embeddings=False))
ROUTED = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
ROUTED_NOT_NULL = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")

ARCHITECTURES = (Architecture(
    name="Qwen3_5ForCausalLM", module=CausalLM, weight_map=hybrid_weight_map("apart"), hf_model_type="qwen3_5_text",
    config_defaults=hybrid_defaults, hf_defaults=_QWEN3_5_DEFAULTS, partial_rotary=True, not_null=HYBRID_NOT_NULL,
    ignored_keys=("sliding_window",) + NO_WINDOW_SWITCH, ignore=(r".*rotary_emb\.inv_freq$", r"^mtp\."),
    wrappers=(QWEN3_5_MULTIMODAL,),
    # linear, full, linear, full; two value heads per key head
    tiny_config=_TINY,
), Architecture(
    name="Qwen3NextForCausalLM", module=CausalLM, hf_model_type="qwen3_next", config_defaults=qwen3_next_defaults,
    weight_map=moe_weight_map("mlp", ROUTED, base=hybrid_weight_map("per_key_head")),
    hf_defaults=dict(_NEXT_DEFAULTS, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
                     shared_expert_intermediate_size=512, norm_topk_prob=True, decoder_sparse_step=1),
    partial_rotary=True, ignored_keys=("sliding_window",) + NO_WINDOW_SWITCH, ignore=(r".*rotary_emb\.inv_freq$", r"^mtp\."),
    not_null=HYBRID_NOT_NULL + ROUTED_NOT_NULL + ("norm_topk_prob", "decoder_sparse_step"),
    # layer 1 dense (mlp_only_layers), the others routed with the gated shared expert
    tiny_config=dict(_TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                     norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1]),
), Architecture(
    name="Qwen3_5MoeForCausalLM", module=CausalLM, hf_model_type="qwen3_5_moe_text", config_defaults=qwen3_5_moe_defaults,
    weight_map=moe_weight_map("mlp", ROUTED, base=hybrid_weight_map("apart")), hf_defaults=_QWEN3_5_MOE_DEFAULTS,
    common_names=_moe_width, partial_rotary=True, not_null=HYBRID_NOT_NULL + ROUTED_NOT_NULL,
    # keys Qwen3_5MoeTextConfig dropped from Qwen3NextConfig, which its modeling never reads
    ignored_keys=("sliding_window", "intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")
    + NO_WINDOW_SWITCH, ignore=(r".*rotary_emb\.inv_freq$", r"^mtp\."), wrappers=(QWEN3_5_MOE_MULTIMODAL,),
    tensors=split_experts,
    # Qwen3.5's tiny layers, every one routed, with an mrope rope as Qwen3.5-MoE's text configs spell it
    tiny_config=dict({k: v for k, v in _TINY.items() if k != "intermediate_size"}, num_experts=4, num_experts_per_tok=2,
                     moe_intermediate_size=32, shared_expert_intermediate_size=48,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                      "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
))
