"""Kimi-Linear (KimiLinearForCausalLM; transformers' modeling_kimi_linear.py): DeepSeek-V3's decoder whose layers
mix tokens by Kimi Delta Attention or by latent attention without positions.

- layer types "linear_attention" (read as our "kimi_delta_attention": linear_attention.KimiDeltaAttention, a
  recurrent mixer under self_attn: the gated delta rule with a decay per key channel; a state per sequence, no
  keys; no prefix cache) and "full_attention"; by default linear but every fourth from the fifth, or as
  linear_attn_config lists them (kda_layers, full_attn_layers: 1-based), which also holds the KDA heads' count,
  size and conv (num_heads, head_dim, short_conv_kernel_size; linear_num_heads, ... at the top level else);
- full layers: DeepSeek's latent attention (models/mla.py) with no rotary embedding at all (KimiLinearModel
  has none: its "rope" part of each key is the latent's shared part as it is), softmax scale qk_head_dim ** -0.5;
- MLP: dense on the layers mlp_layer_types calls "dense" (else the first first_k_dense_replace, 1), elsewhere
  DeepSeek-V3's routed experts (sigmoid router, score bias, groups) beside the shared ones;
- the config class's attribute_map spellings: num_experts, num_experts_per_token, num_shared_experts,
  num_expert_group, moe_renormalize, model_max_length;
- checkpoints name the MLP block_sparse_moe (experts' w1 / w3 / w2) and the KDA conv q_conv1d / k_conv1d /
  v_conv1d, as transformers saves them; transformers' own names (mlp.*) are read as well.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, HEADS, MAX_LAYERS, Field, _given, check_fields, known_layer_types
from jaxllm.models.decoder import renamed
from jaxllm.models.deepseek import latent_attention, latent_head_dim, routed_experts, sigmoid_router
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.mla import LatentCausalLM, mla_weight_map
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.qwen3_next import linear_specs
from jaxllm.models.weights import WeightSpec, saved_as

TYPES = ("linear_attention", "full_attention")
# linear_attn_config's keys KimiLinearConfig reads (the layer lists 1-based)
# null: KimiLinearConfig reads the value as given (and fails on it)
_LINEAR_FIELDS = {"head_dim": _given(COUNT), "num_heads": _given(HEADS), "short_conv_kernel_size": _given(COUNT),
                  "full_attn_layers": Field(int, 1, MAX_LAYERS, many="list", null=False),
                  "kda_layers": Field(int, 1, MAX_LAYERS, many="list", null=False)}
# KimiLinearConfig's attribute_map: the key config.json holds (which wins), its alias and default -> the name
# DeepSeek's reading takes
_ALIASES = {"num_experts": ("num_local_experts", 256, "n_routed_experts"),
            "num_experts_per_token": ("num_experts_per_tok", 8, "num_experts_per_tok"),
            "num_shared_experts": ("n_shared_experts", 1, "n_shared_experts"), "num_expert_group": ("n_group", 1, "n_group"),
            "moe_renormalize": ("norm_topk_prob", True, "norm_topk_prob"),
            "model_max_length": ("max_position_embeddings", 1048576, "max_position_embeddings")}
# Kimi Delta Attention's tensors as its checkpoints name them (the shared mixer's in_proj_b, norm, out_proj)
KDA_NAMES = {"in_proj_b": "b_proj", "norm": "o_norm", "out_proj": "o_proj"}


def attribute_names(raw: dict, aliases: dict) -> dict:
    """config.json with each attribute_map key of `aliases` ({key: (its alias, the class's default, DeepSeek's name)}; the
    key, which transformers stores, wins over its alias) under the name DeepSeek's reading takes (a key n_routed_experts,
    which transformers never reads, replaced): Kimi-Linear's, Bailing-Hybrid's."""
    raw = dict(raw)
    for key, (alias, default, name) in aliases.items():
        raw[name] = raw[key] if key in raw else raw.get(alias, default)
    return raw


def kimi_names(raw: dict) -> dict:
    """config.json under DeepSeek's names (`attribute_names`); linear_attn_config's heads and conv as the top-level keys
    they set; head_dim the latent attention's width."""
    raw = attribute_names(raw, _ALIASES)
    linear = check_fields(raw.get("linear_attn_config") or {}, _LINEAR_FIELDS, "config.json", "linear_attn_config.")
    for key, name in (("head_dim", "linear_head_dim"), ("num_heads", "linear_num_heads"),
                      ("short_conv_kernel_size", "linear_conv_kernel_dim")):
        if key in linear:
            raw[name] = linear[key]
    return latent_head_dim(raw)


def _layer_types(raw: dict) -> tuple[str, ...]:
    """layer_types, else linear_attn_config's lists (both given), else full every fourth layer from the fifth."""
    n, linear = raw["num_hidden_layers"], raw.get("linear_attn_config") or {}
    types = raw.get("layer_types")
    if types is None and "full_attn_layers" in linear and "kda_layers" in linear:
        types = [None] * n
        for kind, key in (("full_attention", "full_attn_layers"), ("linear_attention", "kda_layers")):
            for i in linear[key]:
                if i > n:
                    raise ConfigError(f"config.json linear_attn_config.{key} names layer {i} of {n} (1-based; transformers fails "
                                      "on it): correct the list")
                types[i - 1] = kind
        if None in types:
            raise ConfigError(f"config.json linear_attn_config lists layer {types.index(None) + 1} in neither full_attn_layers "
                              "nor kda_layers (transformers builds no layer for it): list every layer in one of them")
    elif types is None:
        types = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(n)]
    return tuple("kimi_delta_attention" if t == "linear_attention" else t
                 for t in known_layer_types(types, TYPES, "Kimi-Linear", "transformers builds no layer for it"))


def kimi_defaults(raw: dict) -> dict:
    heads, size = raw["linear_num_heads"], raw["linear_head_dim"]
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, raw.get("first_k_dense_replace", 1))) if t == "dense")
    return dict(routed_experts(dict(raw, first_k_dense_replace=0)), **latent_attention(raw), **sigmoid_router(raw),
                dense_layers=dense, mlp_bias=False, position_embedding="none", layer_types=_layer_types(raw),
                recurrent_kinds=("kimi_delta_attention",), linear_conv_kernel=raw["linear_conv_kernel_dim"],
                linear_key_heads=heads, linear_value_heads=heads, linear_key_head_dim=size, linear_value_head_dim=size,
                linear_qkv_apart=True)


_experts = moe_weight_map("mlp", {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}, base=mla_weight_map,
                          shared="shared_experts")


def kimi_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """DeepSeek-V3's map on the full layers, Kimi Delta Attention's on the others; the MLPs under block_sparse_moe."""
    specs = _experts(cfg)
    for i in filter(cfg.layer_is_recurrent, range(cfg.num_layers)):
        specs += renamed(linear_specs(cfg, i), KDA_NAMES)
    return renamed(specs, {"mlp": "block_sparse_moe"})


# KimiLinearConfig's field defaults (Kimi-Linear-48B-A3B's shapes); its attribute_map keys': _ALIASES
_DEFAULTS = dict(vocab_size=163840, hidden_size=2304, intermediate_size=9216, moe_intermediate_size=1024, num_hidden_layers=27,
                 num_attention_heads=32, num_key_value_heads=32, routed_scaling_factor=2.446,
                 kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=1,
                 topk_group=1, hidden_act="silu", rms_norm_eps=1e-5, pad_token_id=163839, bos_token_id=163584,
                 eos_token_id=163586, tie_word_embeddings=False, attention_bias=False, linear_head_dim=128, linear_num_heads=32,
                 linear_conv_kernel_dim=4)

ARCHITECTURES = (Architecture(
    name="KimiLinearForCausalLM", module=LatentCausalLM, weight_map=kimi_weight_map, hf_model_type="kimi_linear",
    config_defaults=kimi_defaults, common_names=kimi_names, hf_defaults=_DEFAULTS, tensors=saved_as({"mlp": "block_sparse_moe"}),
    # no positions, no window, the MLPs without biases; keys of Moonshot's own code transformers never reads
    ignored_keys=("sliding_window", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "rope_interleave",
                              "mlp_bias", "topk_method", "head_dim", "use_sliding_window", "n_routed_experts"),
    ignore=(r".*rotary_emb\.inv_freq$",),
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                             "routed_scaling_factor", "moe_intermediate_size", "topk_group", "linear_head_dim",
                           "num_experts", "num_experts_per_token", "num_shared_experts", "num_expert_group", "model_max_length",
                           "first_k_dense_replace", "linear_attn_config", "norm_topk_prob", "n_group", "num_local_experts",
                           "n_shared_experts", "linear_num_heads", "linear_conv_kernel_dim"),
    # KDA (two heads) with a dense MLP, then full attention (latent, no positions) with 8 experts in 4 groups (top 2 from
    # the best 2) beside a shared one, as linear_attn_config lists them, under the Hub's attribute_map spellings
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, v_head_dim=16, model_max_length=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     linear_attn_config={"head_dim": 16, "num_heads": 2, "short_conv_kernel_size": 4, "full_attn_layers": [2],
                                         "kda_layers": [1]},
                     num_experts=8, num_experts_per_token=2, num_shared_experts=1, num_expert_group=4, topk_group=2,
                     moe_renormalize=True, routed_scaling_factor=2.5, first_k_dense_replace=1, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
