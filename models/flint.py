"""Flint (FlintForCausalLM, RecursiveSI): Qwen3-MoE's layers with gpt-oss's attention sinks (a learned logit per
query head, `attn_sinks`; its checkpoints name it self_attn.softmax_offset), rotary positions on the sliding-window
layers alone (the full ones NoPE: `nope_layers`), GPT-oss's RMSNorm (the weight applied in float32,
`norm_upcast_scale`), dense MLPs on mlp_only_layers (the first two by default), and routed experts beside an ungated
shared MLP elsewhere: a float32 router whose sigmoid scores choose the top k, renormalised where norm_topk_prob
(router "sigmoid_topk" without a score bias). layer_types where left out: full on the first two layers, every
fourth from layer 1 and the last, sliding elsewhere."""

from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, renamed
from jaxllm.models.deepseek import EXPERTS
from jaxllm.models.moe import dense_layers, moe_weight_map
from jaxllm.models.weights import WeightSpec


def flint_names(raw: dict) -> dict:
    """FlintConfig's layer_types and mlp_only_layers where left out."""
    n = raw.get("num_hidden_layers") or 0
    types = raw.get("layer_types") or ["full_attention" if i < 2 or i % 4 == 1 or i == n - 1 else "sliding_attention"
                                       for i in range(n)]
    only = raw["mlp_only_layers"] if raw.get("mlp_only_layers") is not None else [0, 1]
    return dict(raw, layer_types=types, mlp_only_layers=only)


def flint_defaults(raw: dict) -> dict:
    full = tuple(i for i, t in enumerate(raw["layer_types"]) if t != "sliding_attention")
    return dict(qk_norm="per_head", mlp_bias=False, norm_upcast_scale=True, attn_sinks=True, nope_layers=full,
                num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"], norm_topk_prob=bool(raw["norm_topk_prob"]),
                dense_layers=dense_layers(raw, raw["num_experts"]), router="sigmoid_topk", router_float32=True,
                shared_expert_intermediate_size=raw["shared_expert_intermediate_size"], shared_expert_gated=False)


def flint_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return renamed(moe_weight_map("mlp", EXPERTS)(cfg), {"self_attn.sinks": "self_attn.softmax_offset"})


ARCHITECTURES = (Architecture(
    name="FlintForCausalLM", module=CausalLM, hf_model_type="flint", config_defaults=flint_defaults,
    weight_map=flint_weight_map, common_names=flint_names,
    # keys of Qwen2-MoE's config that FlintConfig removed, which its model never reads
    ignored_keys=("use_sliding_window", "max_window_layers", "qkv_bias", "num_local_experts"),
    # FlintConfig's field defaults (Flint's shapes)
    hf_defaults=dict(vocab_size=150144, hidden_size=2048, intermediate_size=6144, num_hidden_layers=49, num_attention_heads=32,
                     num_key_value_heads=4, head_dim=128, attention_bias=False, max_position_embeddings=262144,
                     sliding_window=513, rms_norm_eps=1e-6, rope_theta=10000.0, decoder_sparse_step=1, moe_intermediate_size=512,
                     shared_expert_intermediate_size=1024, num_experts_per_tok=6, num_experts=256, norm_topk_prob=True),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "decoder_sparse_step", "moe_intermediate_size",
                             "shared_expert_intermediate_size", "num_experts_per_tok", "num_experts", "norm_topk_prob"),
    # layers 0 and 1 full without rotary positions, 2 and 3 sliding (window 8) with them; layer 0 dense, the others 6
    # experts, top 2, renormalised, beside a shared MLP; GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                     sliding_window=8, layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
                     mlp_only_layers=[0], decoder_sparse_step=1, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                     num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
