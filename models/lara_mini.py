"""LaraMini (LaraMiniForCausalLM, Lara-4-Mini; transformers' modeling_lara_mini.py): Qwen3.5-MoE's hybrid layers
(models/qwen3_next.py) with:
- three layer types: gated-DeltaNet "linear_attention", "sliding_attention" (rotary positions, the window) and
  "full_attention" without positions (`nope_layers`); by default the period-5 pattern linear, sliding, linear, full,
  sliding;
- Qwen3's attention (q/k RMSNorm per head, no output gate), every rotary one rotating whole heads;
- RMSNorms scaling by w in float32 before the cast (HeliumRMSNorm: `norm_upcast_scale`), the linear layers' gated norm
  too (Glm5NextTextRMSNormGated: `linear_norm_upcast`);
- every layer routed: a float32 softmax router (renormalised top k where norm_topk_prob) beside a shared MLP added
  without a gate (FlintSparseMoeBlock); the experts fused as transformers saves them (experts.gate_up_proj
  [X, 2F, E], experts.down_proj [X, E, F]: `moe_weight_map(fused=True)`);
- its checkpoints' linear layers fuse in_proj_qkv, in_proj_z, in_proj_b and in_proj_a into one in_proj (rows
  q | k | v | z | b | a: each a `Part`, the first regrouped by key head through `ByHead`) and name the gated norm
  out_norm (transformers' conversion_mapping, reversed when it saves them).
"""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, renamed
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.qwen3_next import HYBRID_NOT_NULL, ROUTED, ROUTED_NOT_NULL, hybrid_weight_map

TYPES = ("linear_attention", "sliding_attention", "full_attention")
PATTERN = ("linear_attention", "sliding_attention", "linear_attention", "full_attention", "sliding_attention")


def lara_names(raw: dict) -> dict:
    """LaraMiniConfig's layer_types where left out (the period-5 pattern), and the experts' width for the
    intermediate_size it lacks (no layer is dense)."""
    types = raw.get("layer_types") or [PATTERN[i % 5] for i in range(raw.get("num_hidden_layers") or 0)]
    return dict(raw, layer_types=types, intermediate_size=raw["moe_intermediate_size"])


def lara_defaults(raw: dict) -> dict:
    types = known_layer_types(raw["layer_types"], TYPES, "LaraMini", "transformers has no attention mask for it")
    return dict(
        qk_norm="per_head", norm_upcast_scale=True, mlp_bias=False, layer_types=types, recurrent_kinds=("linear_attention",),
        nope_layers=tuple(i for i, t in enumerate(types) if t == "full_attention"),
        linear_conv_kernel=raw["linear_conv_kernel_dim"], linear_key_head_dim=raw["linear_key_head_dim"],
        linear_value_head_dim=raw["linear_value_head_dim"], linear_key_heads=raw["linear_num_key_heads"],
        linear_value_heads=raw["linear_num_value_heads"], linear_norm_upcast=True,
        num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"], dense_layers=(),
        moe_intermediate_size=raw["moe_intermediate_size"], norm_topk_prob=bool(raw["norm_topk_prob"]), router_float32=True,
        shared_expert_intermediate_size=raw["shared_expert_intermediate_size"], shared_expert_gated=False,
    )


def lara_weight_map(cfg: ModelConfig):
    specs = moe_weight_map("mlp", ROUTED, base=hybrid_weight_map("rows"), fused=True)(cfg)
    return renamed(specs, {"linear_attn.norm": "linear_attn.out_norm"})


ARCHITECTURES = (Architecture(
    name="LaraMiniForCausalLM", module=CausalLM, hf_model_type="lara_mini", config_defaults=lara_defaults,
    weight_map=lara_weight_map, common_names=lara_names,
    # keys of Qwen3NextConfig that LaraMiniConfig dropped, which its model never reads
    ignored_keys=("intermediate_size", "decoder_sparse_step", "mlp_only_layers") + NO_WINDOW_SWITCH,
    not_null=HYBRID_NOT_NULL + ROUTED_NOT_NULL + ("norm_topk_prob", "sliding_window"),
    # LaraMiniConfig's field defaults (Lara-4-Mini's shapes)
    hf_defaults=dict(vocab_size=151936, hidden_size=1024, num_hidden_layers=34, num_attention_heads=16, num_key_value_heads=4,
                     head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                     attention_bias=False, sliding_window=512, linear_conv_kernel_dim=4, linear_key_head_dim=128,
                     linear_value_head_dim=128, linear_num_key_heads=8, linear_num_value_heads=16, moe_intermediate_size=512,
                     shared_expert_intermediate_size=512, num_experts_per_tok=4, num_experts=128, norm_topk_prob=True,
                     eos_token_id=151643),
    # the pattern's first five layers: linear, sliding (window 8), linear, full (NoPE), sliding; two value heads per
    # key head; 4 experts, top 2, beside the shared MLP; tied
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True, sliding_window=8,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, linear_conv_kernel_dim=4,
                     linear_key_head_dim=8, linear_value_head_dim=12, linear_num_key_heads=2, linear_num_value_heads=4,
                     num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                     norm_topk_prob=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
