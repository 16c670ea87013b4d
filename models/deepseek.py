"""DeepSeek-V2 and DeepSeek-V3 (and their checkpoints: Kimi-K2, DeepSeek-R1, ...): the shared
decoder with multi-head latent attention (models/mla.py) in every layer, dense MLPs in the first
first_k_dense_replace layers and routed experts beside n_shared_experts ungated shared ones after.

Routing (models/experts.py MoE, `limited_top_k`): V3 takes sigmoid scores, chooses the top k by
score plus e_score_correction_bias among the topk_group best of n_group groups (each scored by
its best two), renormalises where norm_topk_prob; V2 takes softmax scores, the top k (greedy) or
the top k within the topk_group groups of the highest score (group_limited_greedy), never
renormalised. Both multiply the weights by routed_scaling_factor.

Rotary: V2 turns interleaved pairs in float32 (complex products); V3 interleaved pairs too where
rope_interleave (its default), else halves, in the model's dtype. The softmax scale takes YaRN's
mscale_all_dim (`mla.mla_scale`). Router weights and V3's score bias stay float32 in a bfloat16
model and the router's product is a float32 one, as transformers keeps them (`router_float32`)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import MlaConfig
from jaxllm.models.mla import LatentCausalLM, mla_weight_map
from jaxllm.models.moe import moe_weight_map

EXPERTS = {name: name for name in ("gate_proj", "up_proj", "down_proj")}
weight_map = moe_weight_map("mlp", EXPERTS, base=mla_weight_map, shared="shared_experts")


def routed_experts(raw: dict) -> dict:
    """DeepSeek's MoE layout, which GLM-4-MoE and dots.llm1 share: dense MLPs in the first
    first_k_dense_replace layers, then n_routed_experts routed experts (moe_intermediate_size wide)
    beside n_shared_experts ungated shared ones (one MLP as wide as them all), weights times
    routed_scaling_factor."""
    for key in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok"):
        if raw.get(key) is None:
            raise ConfigError(f"config.json has no '{key}' (transformers' MoE layers then fail): add it")
        if raw[key] == 0:
            raise ConfigError(f"config.json {key} 0 is not supported (every MoE layer routes to experts beside shared "
                              f"ones): give the checkpoint's {key}")
    return dict(
        num_experts=raw["n_routed_experts"], experts_per_token=raw["num_experts_per_tok"],
        moe_intermediate_size=raw["moe_intermediate_size"],
        dense_layers=tuple(range(min(raw["first_k_dense_replace"], raw["num_hidden_layers"]))),
        shared_expert_intermediate_size=raw["moe_intermediate_size"] * raw["n_shared_experts"], shared_expert_gated=False,
        routed_scaling=float(raw["routed_scaling_factor"]),
    )


def sigmoid_router(raw: dict) -> dict:
    """DeepSeek-V3's router (GLM-4-MoE's, dots.llm1's): sigmoid scores, e_score_correction_bias for the
    choice, n_group groups scored by their best two, topk_group of them; norm_topk_prob (null: off)."""
    return dict(router="sigmoid_topk", router_score_bias=True, router_float32=True, router_groups=raw["n_group"],
                router_topk_groups=raw["topk_group"], router_group_score="top2", norm_topk_prob=bool(raw.get("norm_topk_prob")))


def mla_defaults(raw: dict) -> dict:
    """The latent attention and expert layout both versions read the same way."""
    return dict(routed_experts(raw), **latent_attention(raw))


def latent_attention(raw: dict) -> dict:
    """The latent attention's fields (Youtu's too): its shapes, a kv head per head, biases as attention_bias says."""
    heads = raw["num_attention_heads"]
    if raw.get("num_key_value_heads") not in (None, heads):
        raise ConfigError(f"config.json num_key_value_heads={raw['num_key_value_heads']} with {heads} attention heads: latent "
                          "attention decompresses a key and value for every head (transformers' eager attention fails "
                          "otherwise): set num_key_value_heads to num_attention_heads")
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if rope.get("mscale_all_dim") and "factor" in rope and rope["factor"] is None:
        raise ConfigError("config.json rope factor is null beside mscale_all_dim, which transformers' latent attention scales "
                          "its softmax by (it fails on the null): give the rope's factor")
    mla = MlaConfig(kv_lora_rank=raw["kv_lora_rank"], qk_nope_head_dim=raw["qk_nope_head_dim"],
                    qk_rope_head_dim=raw["qk_rope_head_dim"], v_head_dim=raw["v_head_dim"], q_lora_rank=raw.get("q_lora_rank"))
    bias = bool(raw["attention_bias"])
    return dict(mla=mla, num_kv_heads=heads, qkv_bias=bias, o_bias=bias)


def deepseek_v3_defaults(raw: dict) -> dict:
    """V3's sigmoid router with its score bias and groups; no MLP biases; rope_interleave (null: halves)."""
    return dict(mla_defaults(raw), **sigmoid_router(raw), mlp_bias=False, rope_interleaved=bool(raw.get("rope_interleave")))


TOPK_METHODS = ("greedy", "group_limited_greedy")


def deepseek_v2_defaults(raw: dict) -> dict:
    """V2's softmax router (topk_method; norm_topk_prob it never reads); rope on interleaved pairs in float32."""
    heads, hidden, method = raw["num_attention_heads"], raw["hidden_size"], raw.get("topk_method")
    if hidden % heads:
        raise ConfigError(f"config.json hidden_size={hidden} is not a multiple of num_attention_heads={heads}, which "
                          "transformers' DeepseekV2Config refuses: correct them")
    if method not in TOPK_METHODS:
        raise ConfigError(f"config.json topk_method {method!r} is not supported; supported: {', '.join(TOPK_METHODS)}")
    groups = {}
    if method == "group_limited_greedy":
        if raw.get("n_group") is None or raw.get("topk_group") is None:
            raise ConfigError("config.json topk_method group_limited_greedy needs n_group and topk_group (transformers' "
                              "router fails without them): give both")
        groups = dict(router_groups=raw["n_group"], router_topk_groups=raw["topk_group"], router_group_score="max")
    return dict(mla_defaults(raw), mlp_bias=bool(raw.get("mlp_bias")), rope_interleaved=True, rope_float32=True,
                norm_topk_prob=False, router_float32=True, **groups)


def expert_names(key: str, experts: int | None):
    """config.json as the family's config class reads it: n_routed_experts, else `key` (its
    attribute_map's spelling of it), else `experts` (the class's default)."""
    def names(raw: dict) -> dict:
        return raw if "n_routed_experts" in raw else dict(raw, n_routed_experts=raw.get(key, experts))
    return names


def mla_names(key: str, experts: int):
    """`expert_names`, and head_dim (which DeepSeek's config classes set to qk_rope_head_dim, whatever
    the file says) the width of the cached heads (models/mla.py)."""
    return lambda raw: latent_head_dim(expert_names(key, experts)(raw))


def rope_head_dim(raw: dict) -> dict:
    """`latent_head_dim` for the families whose config class sets head_dim to qk_rope_head_dim, the width their
    rotary embedding turns (Youtu, MiniCPM3), where the file's own head_dim replaces it: another is refused,
    as transformers fails on it (a shape error)."""
    given, rope = raw.get("head_dim"), raw["qk_rope_head_dim"]
    if given is not None and given != rope:
        raise ConfigError(f"config.json head_dim={given} differs from qk_rope_head_dim={rope}, the rotary part transformers "
                          "rotates head_dim values of (a shape error): remove head_dim or set it to qk_rope_head_dim")
    return latent_head_dim(raw)


def latent_head_dim(raw: dict) -> dict:
    """config.json with head_dim the width of latent attention's cached heads, max(qk_head_dim, v_head_dim)."""
    return dict(raw, head_dim=max(raw["qk_nope_head_dim"] + raw["qk_rope_head_dim"], raw["v_head_dim"]))


_NOT_NULL = RMS_NOT_NULL + ("attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                            "n_routed_experts", "n_shared_experts", "first_k_dense_replace", "routed_scaling_factor",
                            "moe_intermediate_size")
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
             v_head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
             first_k_dense_replace=1, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)

ARCHITECTURES = (Architecture(
    name="DeepseekV3ForCausalLM", module=LatentCausalLM, weight_map=weight_map, hf_model_type="deepseek_v3",
    config_defaults=deepseek_v3_defaults, common_names=mla_names("num_local_experts", 256),
    ignored_keys=NO_WINDOW + ("mlp_bias", "topk_method", "head_dim"),
    # transformers ignores the multi-token prediction layer DeepSeek-V3's checkpoints keep as layer 61
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.61\."),
    # DeepseekV3Config's field defaults (DeepSeek-V3's shapes; n_routed_experts' in mla_names)
    hf_defaults=dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                     num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1,
                     routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                     qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
                     norm_topk_prob=True, max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
                     rope_interleave=True, attention_bias=False),
    not_null=_NOT_NULL + ("n_group", "topk_group", "num_experts_per_tok"),
    # a dense layer, then MoE layers of 8 experts in 4 groups (top 2 from the best 2 groups) beside one shared
    # expert; queries through q_lora_rank (V2's tiny config: none); q_a/kv_a/o biases; value heads narrower
    # than key heads; interleaved rope
    tiny_config=dict(_TINY, q_lora_rank=24, n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2,
                     routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True, attention_bias=True),
), Architecture(
    name="DeepseekV2ForCausalLM", module=LatentCausalLM, weight_map=weight_map, hf_model_type="deepseek_v2",
    config_defaults=deepseek_v2_defaults, common_names=mla_names("num_experts", 64),
    ignored_keys=NO_WINDOW + ("rope_interleave", "norm_topk_prob", "head_dim"),
    # DeepseekV2Config's field defaults (DeepSeek-V2-Lite's attention, DeepSeek-V2's experts; n_routed_experts' in mla_names)
    hf_defaults=dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, attention_bias=False,
                     mlp_bias=False, first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536,
                     n_shared_experts=2, qk_nope_head_dim=128, qk_rope_head_dim=64, routed_scaling_factor=1.0,
                     topk_method="greedy", v_head_dim=128, moe_intermediate_size=1407),
    not_null=_NOT_NULL + ("mlp_bias", "num_experts"),
    # a dense layer, then MoE layers of 6 experts in 3 groups (group_limited_greedy, top 2 of the best two
    # groups) beside two shared experts, weights scaled; one q_proj (q_lora_rank null); MLP biases
    tiny_config=dict(_TINY, q_lora_rank=None, n_routed_experts=6, n_shared_experts=2, n_group=3, topk_group=2,
                     topk_method="group_limited_greedy", routed_scaling_factor=2.0, mlp_bias=True),
))
