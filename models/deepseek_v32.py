"""DeepSeek-V3.2 (DeepseekV32ForCausalLM): DeepSeek-V3's decoder (models/deepseek.py: latent attention, dense
first layers, routed experts beside a shared one under the sigmoid router with its score bias and groups) whose
every attention layer is sparse: a lightning indexer keeps each query's index_topk best earlier keys
(models/sparse_attention.py). As DeepseekV32Config reads config.json: queries always through q_lora_rank (null
fails in transformers), rope always on interleaved pairs in the attention (rope_interleave is no field of it),
in halves in the indexer; which layers are dense is mlp_layer_types, else the first first_k_dense_replace;
layer_types (every layer "indexed_attention") and head_dim (set to qk_rope_head_dim) are its own bookkeeping."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import IndexerConfig
from jaxllm.models.deepseek import _NOT_NULL, _TINY, deepseek_v3_defaults, expert_names, latent_head_dim, weight_map
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.sparse_attention import SparseLatentCausalLM, sparse_weight_map

INDEX_KEYS = ("index_topk", "index_head_dim", "index_n_heads")


def indexer(raw: dict, interleaved: bool = False, shared: tuple[int, ...] = ()) -> IndexerConfig:
    """The lightning indexer of config.json's index_* keys, or a ConfigError for one transformers cannot run."""
    for key in INDEX_KEYS:
        if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1:
            raise ConfigError(f"config.json {key}={raw[key]!r} must be a positive integer (transformers' indexer fails or "
                              f"selects nothing otherwise): give the checkpoint's {key}")
    if raw["index_head_dim"] < raw["qk_rope_head_dim"]:
        raise ConfigError(f"config.json index_head_dim={raw['index_head_dim']} is narrower than qk_rope_head_dim="
                          f"{raw['qk_rope_head_dim']}, the indexer's rotated part (transformers fails on the split): give "
                          "an index_head_dim of at least qk_rope_head_dim")
    return IndexerConfig(heads=raw["index_n_heads"], head_dim=raw["index_head_dim"], topk=raw["index_topk"],
                         interleaved=interleaved, shared=shared)


def v32_names(raw: dict) -> dict:
    """config.json as DeepseekV32Config reads it: n_routed_experts, else num_local_experts (its attribute_map), else
    256, and num_experts over both (its kwargs' BC); head_dim the width of the cached heads (models/mla.py)."""
    if raw.get("num_experts") is not None:
        raw = dict(raw, n_routed_experts=raw["num_experts"])
    return latent_head_dim(expert_names("num_local_experts", 256)(raw))


def deepseek_v32_defaults(raw: dict) -> dict:
    """V3's reading (q_lora_rank never null: not_null), its dense layers by mlp_layer_types, its indexer."""
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, raw["first_k_dense_replace"])) if t == "dense")
    v3 = deepseek_v3_defaults(dict(raw, first_k_dense_replace=0, rope_interleave=True))
    return dict(v3, dense_layers=dense, indexer=indexer(raw))


V32 = Architecture(
    name="DeepseekV32ForCausalLM", module=SparseLatentCausalLM, weight_map=sparse_weight_map(weight_map),
    hf_model_type="deepseek_v32", config_defaults=deepseek_v32_defaults, common_names=v32_names,
    ignored_keys=NO_WINDOW + ("mlp_bias", "topk_method", "head_dim", "rope_interleave", "scoring_func"),
    # transformers ignores the multi-token prediction layer DeepSeek-V3.2's checkpoints keep as layer 61
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.61\."),
    # DeepseekV32Config's field defaults (DeepSeek-V3.2-Exp's shapes; n_routed_experts' in v32_names)
    hf_defaults=dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                     num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                     routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                     qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, norm_topk_prob=True,
                     max_position_embeddings=163840, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
                     attention_bias=False, first_k_dense_replace=3, index_topk=2048, index_head_dim=128, index_n_heads=64),
    not_null=_NOT_NULL + ("num_key_value_heads", "head_dim", "mlp_bias", "n_group", "topk_group", "num_experts_per_tok", "q_lora_rank",
                                  "norm_topk_prob") + INDEX_KEYS,
    # a dense layer, then MoE layers of 8 experts in 4 groups beside a shared one; q_a/kv_a/o biases; an indexer of
    # 8 heads of 16 (its rotated part 8 of them) keeping 5 keys, fewer than the tests' prompts hold
    tiny_config=dict(_TINY, q_lora_rank=24, n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2,
                     routed_scaling_factor=2.5, norm_topk_prob=True, attention_bias=True, index_topk=5, index_head_dim=16,
                     index_n_heads=8),
)
ARCHITECTURES = (V32,)
