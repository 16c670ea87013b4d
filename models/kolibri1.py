"""Kolibri-1 (Kolibri1ForCausalLM, Aleph Alpha): GLM-4's sandwich layer (models/glm.py: norms after attention and
after the MLP) around EXAONE 4.0's attention (an RMSNorm of each q/k head, no biases, no rotary positions on the full
layers of a model with a window: `nope_layers`), every layer routed experts beside an ungated shared MLP
(DeepSeek-V3's block with Qwen3-MoE's experts). Its router chooses the top k of its float32 logits plus the score
bias, the weights the sigmoid of the chosen logits (router "topk_sigmoid" with `router_score_bias`), renormalised
where norm_topk_prob. layer_types where left out: every 5th layer full, the others sliding.

Its checkpoints name the norms after attention and the MLP post_attn_norm / post_ffn_norm and the score bias
moe.router.expert_bias (transformers' conversion mapping renames them, and back on save)."""

from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import renamed
from jaxllm.models.deepseek import EXPERTS
from jaxllm.models.gemma import Gemma2ForCausalLM, sandwich_weight_map
from jaxllm.models.moe import _experts, moe_weight_map
from jaxllm.models.weights import WeightSpec

# ours: theirs, in this order (our post_attention_layernorm is after attention; theirs before the MLP)
NAMES = {"post_attention_layernorm": "post_attn_norm", "pre_feedforward_layernorm": "post_attention_layernorm",
         "post_feedforward_layernorm": "post_ffn_norm", "mlp.gate.e_score_correction_bias": "moe.router.expert_bias"}


def kolibri1_names(raw: dict) -> dict:
    """Kolibri1Config's reading: num_local_experts (num_experts its alias), layer_types every 5th layer full where
    left out, no intermediate_size (every layer routed: the experts' width stands for it)."""
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention"
                                       for i in range(raw.get("num_hidden_layers") or 0)]
    return dict(raw, num_local_experts=_experts(raw, 384), layer_types=types, intermediate_size=raw.get("moe_intermediate_size"))


def kolibri1_defaults(raw: dict) -> dict:
    full = () if raw.get("sliding_window") is None else tuple(i for i, t in enumerate(raw["layer_types"]) if t != "sliding_attention")
    return dict(qk_norm="per_head", qkv_bias=False, o_bias=False, mlp_bias=False, nope_layers=full,
                num_experts=raw["num_local_experts"], experts_per_token=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"], norm_topk_prob=bool(raw["norm_topk_prob"]),
                shared_expert_intermediate_size=raw["shared_expert_intermediate_size"], shared_expert_gated=False,
                router="topk_sigmoid", router_score_bias=True, router_float32=True)


def kolibri1_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """The sandwich layer's map with DeepSeek's expert names, by Kolibri's names for the norms and the score bias."""
    return renamed(moe_weight_map("mlp", EXPERTS, base=sandwich_weight_map, shared="shared_experts")(cfg), NAMES)


ARCHITECTURES = (Architecture(
    name="Kolibri1ForCausalLM", module=Gemma2ForCausalLM, hf_model_type="kolibri1", config_defaults=kolibri1_defaults,
    weight_map=kolibri1_weight_map, common_names=kolibri1_names,
    # keys of Qwen3-MoE's config that Kolibri1Config removed, which its model never reads
    ignored_keys=("intermediate_size", "use_sliding_window", "decoder_sparse_step", "mlp_only_layers", "attention_bias"),
    # Kolibri1Config's field defaults (Kolibri-1's shapes)
    hf_defaults=dict(vocab_size=128000, hidden_size=2560, num_hidden_layers=50, num_attention_heads=48, num_key_value_heads=4,
                     head_dim=128, max_position_embeddings=262144, sliding_window=513, rms_norm_eps=1e-6, rope_theta=10000.0,
                     moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts_per_tok=6,
                     norm_topk_prob=False),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "moe_intermediate_size", "shared_expert_intermediate_size",
                             "num_experts_per_tok", "norm_topk_prob", "num_local_experts", "num_experts"),
    # layers 0 and 2 sliding (window 8) with rotary positions, layer 1 full without; 6 experts, top 2, renormalised,
    # beside a shared MLP; GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default",
                     "rope_theta": 10000.0}, tie_word_embeddings=False, sliding_window=8,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"], moe_intermediate_size=32,
                     shared_expert_intermediate_size=48, num_local_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
