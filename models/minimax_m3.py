"""MiniMax-M3's text model (MiniMaxM3VLForCausalLM, minimax_m3_vl_text; transformers' modeling_minimax_m3_vl.py):
the shared pre-norm decoder with Gemma's RMSNorms ((1 + w), in float32: every norm, q/k norms per head among them),
no biases, rotary positions on the part of each head rope_parameters' partial_rotary_factor says (its rotary_dim key
is never read), and per layer (mlp_layer_types, or the legacy moe_layer_freq) a dense MLP dense_intermediate_size wide
or routed experts: MiniMax-M2's sigmoid router with a score bias (weights renormalised), times routed_scaling_factor,
beside a shared MLP shared_intermediate_size wide. Every MLP (dense, shared, experts) fuses gate | up in one
gate_up_proj and runs gpt-oss's clamped SwiGLU (swiglu_alpha, swiglu_limit) on its halves.

Its block-sparse layers ("minimax_m3_sparse", or the legacy sparse_attention_config's sparse_attention_freq) select,
per kv head, the index_topk_blocks key blocks of index_block_size keys a lightning indexer scores best; while a
sequence has no more blocks than that, every earlier key is selected and the layer is dense attention exactly. That
is what jaxllm runs: such a model serves index_topk_blocks x index_block_size positions (ModelConfig.exact_positions,
2,048 by default), its indexer's tensors unread. The selection itself (a per-kv-head key mask over pooled index keys)
is not implemented.

Read in transformers' own layout (fused gate_up_proj tensors, mlp.experts); the released multimodal checkpoints
(MiniMaxM3SparseForConditionalGeneration: per-expert block_sparse_moe.experts.{j}.w1 / w3 / w2, unfused gate and up)
are not read yet (docs/adding_a_model.md).
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, INDEX, Field, check_fields, known_layer_types
from jaxllm.models.decoder import CausalLM, dense, fused_weight_map
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.llama import NO_BIAS
from jaxllm.models.moe import fused_expert_specs
from jaxllm.models.transforms import Copy, Linear, Part
from jaxllm.models.weights import WeightSpec

TYPES = ("full_attention", "minimax_m3_sparse")
# sparse_attention_config's legacy keys (MiniMaxM3VLTextConfig.__post_init__) -> the flat ones they set
_LEGACY = {"sparse_num_index_heads": "index_n_heads", "sparse_index_dim": "index_head_dim", "sparse_block_size": "index_block_size",
           "sparse_topk_blocks": "index_topk_blocks", "sparse_local_block": "index_local_blocks"}
_FIELDS = {"index_n_heads": COUNT, "index_head_dim": COUNT, "moe_layer_freq": Field(int, 0, 1, many="list"),
           **{key: COUNT for key in _LEGACY}, "sparse_local_block": INDEX, "sparse_attention_freq": Field(int, 0, 1, many="list")}


def m3_names(raw: dict) -> dict:
    """config.json with the legacy sparse_attention_config's keys and moe_layer_freq as the flat keys and layer lists
    MiniMaxM3VLTextConfig makes of them (layer_types and mlp_layer_types where the file gives none); num_experts (its
    attribute_map's alias) as num_local_experts."""
    sparse = check_fields(raw.get("sparse_attention_config") or {}, _FIELDS, "config.json", "sparse_attention_config.")
    check_fields(raw, _FIELDS, "config.json")
    raw = dict(raw, **{flat: sparse[legacy] for legacy, flat in _LEGACY.items() if legacy in sparse})
    if "num_experts" in raw:  # its attribute_map alias of num_local_experts, which wins
        raw["num_local_experts"] = raw["num_experts"]
    if raw.get("layer_types") is None and "sparse_attention_freq" in sparse:
        raw["layer_types"] = ["minimax_m3_sparse" if f else "full_attention" for f in sparse["sparse_attention_freq"]]
    if raw.get("mlp_layer_types") is None and raw.get("moe_layer_freq") is not None:
        raw["mlp_layer_types"] = ["sparse" if f else "dense" for f in raw["moe_layer_freq"]]
    return raw


def m3_defaults(raw: dict) -> dict:
    n = raw["num_hidden_layers"]
    types = known_layer_types(raw.get("layer_types") or ["full_attention"] * n, TYPES, "MiniMax-M3", "transformers builds no layer for it")
    if len(types) != n:
        raise ConfigError(f"config.json layer_types gives {len(types)} types for {n} layers (transformers fails on it): give one per layer")
    sparse = "minimax_m3_sparse" in types
    if sparse and raw["num_attention_heads"] % raw["index_n_heads"]:
        raise ConfigError(f"config.json index_n_heads={raw['index_n_heads']} does not divide num_attention_heads="
                          f"{raw['num_attention_heads']} (transformers' block mask gives each indexer head's selection to a whole "
                          "number of query heads): correct it")
    dense = tuple(i for i, t in enumerate(mlp_layer_types(dict(raw, mlp_layer_types=raw.get("mlp_layer_types")), 0)) if t == "dense")
    return dict(NO_BIAS, qk_norm="per_head", norm_offset=1.0, norm_upcast_scale=True, hidden_act="silu",
                layer_types=("full_attention",) * n,  # the sparse layers: dense attention within exact_positions
                exact_positions=raw["index_topk_blocks"] * raw["index_block_size"] if sparse else None,
                intermediate_size=raw["dense_intermediate_size"], moe_intermediate_size=raw["intermediate_size"],
                num_experts=raw["num_local_experts"], experts_per_token=raw["num_experts_per_tok"], dense_layers=dense,
                router="sigmoid_topk", router_score_bias=True, norm_topk_prob=True, routed_scaling=float(raw["routed_scaling_factor"]),
                shared_expert_intermediate_size=raw["shared_intermediate_size"], shared_expert_gated=False,
                swiglu_limit=float(raw["swiglu_limit"]), swiglu_alpha=float(raw["swiglu_alpha"]), mlp_swiglu=True)


def _gate_up(hf: str, ours: tuple, width: int) -> list[WeightSpec]:
    """A gated MLP's gate and up projections out of one fused `hf`.gate_up_proj [2F, E] (gate rows, then up rows)."""
    return [WeightSpec(f"{hf}.gate_up_proj.weight", ours + (name, "kernel"), Part(offset, 2 * width, Linear()))
            for name, offset in (("gate_proj", 0), ("up_proj", width))]


def m3_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's naming, each dense MLP's gate_up_proj split; on the expert layers the router and its score bias, the
    experts' fused stacks and the shared MLP's gate_up_proj."""
    f = cfg.intermediate_size
    specs = [s for s in fused_weight_map(cfg, {"mlp.gate_proj": ("mlp.gate_up_proj", 0, 2 * f), "mlp.up_proj": ("mlp.gate_up_proj", f, 2 * f)})
             if not (".mlp." in s.hf_names[0] and cfg.layer_is_moe(int(s.hf_names[0].split(".")[2])))]
    for i in filter(cfg.layer_is_moe, range(cfg.num_layers)):
        hf, ours = f"model.layers.{i}.mlp.", ("model", "layers", i, "mlp")
        specs += [WeightSpec(hf + "gate.weight", ours + ("gate", "kernel"), Linear()),
                  WeightSpec(hf + "gate.e_score_correction_bias", ours + ("e_score_correction_bias",), Copy())]
        specs += fused_expert_specs(hf + "experts.gate_up_proj", hf + "experts.down_proj", ours, cfg.moe_intermediate_size)
        if cfg.shared_expert_intermediate_size:
            specs += _gate_up(hf + "shared_experts", ours + ("shared_expert",), cfg.shared_expert_intermediate_size)
            specs += dense(hf + "shared_experts.down_proj", ours + ("shared_expert", "down_proj"), bias=False)
    return specs


# MiniMaxM3VLTextConfig's field defaults (MiniMax-M3's shapes)
_DEFAULTS = dict(vocab_size=200064, hidden_size=6144, intermediate_size=3072, dense_intermediate_size=12288, shared_intermediate_size=3072,
                 num_hidden_layers=60, num_attention_heads=64, num_key_value_heads=4, head_dim=128, max_position_embeddings=524288,
                 rms_norm_eps=1e-6, num_local_experts=128, num_experts_per_tok=4, routed_scaling_factor=2.0, swiglu_alpha=1.702,
                 swiglu_limit=7.0, index_n_heads=4, index_head_dim=128, index_block_size=128, index_topk_blocks=16,
                 index_local_blocks=1, tie_word_embeddings=False, bos_token_id=200034, eos_token_id=200020, rope_theta=5_000_000.0)

ARCHITECTURES = (Architecture(
    name="MiniMaxM3VLForCausalLM", module=CausalLM, weight_map=m3_weight_map, hf_model_type="minimax_m3_vl_text",
    config_defaults=m3_defaults, common_names=m3_names, hf_defaults=_DEFAULTS, partial_rotary=True,
    # no window or biases; rotary_dim never read (the rope's partial_rotary_factor is); hidden_act always silu
    ignored_keys=("sliding_window", "use_sliding_window", "attention_bias", "mlp_bias", "rotary_dim", "hidden_act",
                  "moe_intermediate_size"),
    # the indexer of the sparse layers (unread: see above) and the multi-token-prediction module
    ignore=(r".*rotary_emb\.inv_freq$", r".*\.self_attn\.indexer\.", r"^(?:.*\.)?mtp\."),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "num_experts_per_tok", "num_local_experts", "dense_intermediate_size",
                             "shared_intermediate_size", "routed_scaling_factor", "swiglu_alpha", "swiglu_limit", "index_n_heads",
                             "index_head_dim", "index_block_size", "index_topk_blocks", "index_local_blocks", "intermediate_size",
                             "rotary_dim", "num_experts"),
    # a sparse layer (dense within its 16 blocks of 8 keys: 128 positions) with a dense MLP, then a full layer with 4
    # experts (top 2) beside a shared MLP; GQA; half of each head rotated; a SwiGLU limit of 1, which bites
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, dense_intermediate_size=96, shared_intermediate_size=32,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                     rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                     num_local_experts=4, num_experts_per_tok=2, routed_scaling_factor=2.0, swiglu_limit=1.0,
                     layer_types=["minimax_m3_sparse", "full_attention"], mlp_layer_types=["dense", "sparse"],
                     index_n_heads=2, index_head_dim=8, index_block_size=8, index_topk_blocks=16, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
