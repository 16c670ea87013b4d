"""NVIDIA Nemotron-H (transformers' NemotronHForCausalLM: Nemotron-H, Nemotron Nano 2, Nemotron 3): layers of one block
each, x + block(norm(x)), the block a Mamba2 mixer ("M": models/mamba2.py, a recurrent mixer keeping a state per
sequence; no prefix cache), attention ("*": no rotary positions, no biases, head_dim as config.json gives it) or a
squared-ReLU MLP without gate ("-"), as hybrid_override_pattern or layers_block_type says (the shared `DecoderLayer`
with `feed_forward_layers`). Its RMSNorms apply their weight in float32; the Mamba2 conv's activation is
mamba_hidden_act, the MLP's mlp_hidden_act; the time steps are clamped below at time_step_min (transformers' prefill
does; its decode step does not, which differs only where softplus(dt) < time_step_min). The head is never tied
(NemotronHForCausalLM ties no weights). Checkpoints name the base model `backbone` (the Hub's, and transformers saves
them so); named `model`, as transformers' classes name it, they read the same.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, renamed
from jaxllm.models.deepseek import sigmoid_router
from jaxllm.models.layers import ACTIVATIONS
from jaxllm.models.mamba2 import mamba_specs
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec, prefix_renamed

_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
# transformers' names (and the legacy ones PreTrainedConfig remaps) -> ours
_TYPES = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "full_attention", "attention": "full_attention",
          "mlp": "mlp", "moe": "moe"}
# NemotronHConfig.__post_init__'s older spellings, which win over the fields they name
_LEGACY = (("mamba_n_groups", "n_groups"), ("mamba_d_conv", "conv_kernel"), ("mamba_expand", "expand"),
           ("mamba_dt_min", "time_step_min"), ("mamba_conv_bias", "use_conv_bias"))


def _block_types(raw: dict) -> list[str]:
    """Each layer's block: layers_block_type (or its alias layer_types, which wins), else hybrid_override_pattern."""
    types = raw.get("layer_types") if raw.get("layer_types") is not None else raw.get("layers_block_type")
    if types is None and raw.get("hybrid_override_pattern") is not None:
        pattern = raw["hybrid_override_pattern"]
        if not isinstance(pattern, str) or set(pattern) - set(_PATTERN):
            raise ConfigError(f"config.json hybrid_override_pattern {pattern!r} is not a string of M (Mamba2), * (attention), "
                              "- (MLP) and E (MoE): fix it")
        types = [_PATTERN[c] for c in pattern]
    if types is None and "hybrid_override_pattern" not in raw:
        types = ["linear_attention", "moe", "full_attention", "mlp"]  # NemotronHConfig's default
    if not isinstance(types, list) or not types or any(t not in _TYPES for t in types):
        raise ConfigError(f"config.json layers_block_type {types} is not a non-empty list of linear_attention, full_attention, "
                          "mlp and moe (transformers refuses it): fix it")
    return [_TYPES[t] for t in types]


def nemotron_h_names(raw: dict) -> dict:
    """The common keys: the layers as many as the blocks (num_hidden_layers is ignored), layer_norm_epsilon as
    rms_norm_eps, the MLP's mlp_hidden_act as hidden_act; no attention heads' key a Mamba2-only file needs; the
    older mamba_* spellings over the keys they name."""
    raw = dict(raw)
    for old, new in _LEGACY:
        if old in raw:
            raw[new] = raw.pop(old)
    types = _block_types(raw)
    raw.pop("layer_types", None)
    return dict(raw, block_types=types, num_hidden_layers=len(types), rms_norm_eps=raw.get("layer_norm_epsilon"),
                hidden_act=raw.get("mlp_hidden_act"))


def nemotron_h_defaults(raw: dict) -> dict:
    types = raw["block_types"]
    heads, head_dim = raw["mamba_num_heads"], raw["mamba_head_dim"]
    if heads % raw["n_groups"]:
        raise ConfigError(f"config.json mamba_num_heads={heads} is not a multiple of n_groups={raw['n_groups']}: each group's B "
                          "and C must serve a whole number of heads")
    for key in ("mlp_hidden_act", "mamba_hidden_act"):
        if raw[key] not in ACTIVATIONS:
            raise ConfigError(f"config.json {key} '{raw[key]}' is not supported; supported: {', '.join(ACTIVATIONS)}")
    moe = {}
    if "moe" in types and not raw["n_routed_experts"]:
        raise ConfigError("config.json n_routed_experts is 0 beside MoE (E) blocks, whose router then has no expert to pick "
                          "(transformers fails): give the checkpoint's n_routed_experts")
    if "moe" in types:  # NemotronHMoE: DeepSeek-V3's router, ungated experts, an ungated shared MLP beside them
        moe = dict(sigmoid_router(raw), num_experts=raw["n_routed_experts"], experts_per_token=raw["num_experts_per_tok"],
                   moe_intermediate_size=raw["moe_intermediate_size"], routed_scaling=float(raw["routed_scaling_factor"]),
                   dense_layers=tuple(i for i, t in enumerate(types) if t != "moe"), router_norm_eps=1e-20,
                   shared_expert_intermediate_size=raw["moe_shared_expert_intermediate_size"] or raw["intermediate_size"],
                   shared_expert_gated=False, moe_latent_size=raw["moe_latent_size"] or 0)
    return dict(moe, layer_types=tuple("mamba" if t == "mamba" else "full_attention" for t in types), recurrent_kinds=("mamba",),
                feed_forward_layers=tuple(i for i, t in enumerate(types) if t in ("mlp", "moe")),
                position_embedding="none", qkv_bias=False, o_bias=False, mlp_bias=bool(raw["mlp_bias"]),
                gated_mlp=False, norm_upcast_scale=True, tie_word_embeddings=False, mamba_heads=heads, mamba_head_dim=head_dim,
                mamba_state=raw["ssm_state_size"], mamba_groups=raw["n_groups"], linear_conv_kernel=raw["conv_kernel"],
                conv_bias=bool(raw["use_conv_bias"]), mamba_proj_bias=bool(raw["use_bias"]), mamba_act=raw["mamba_hidden_act"],
                mamba_dt_min=float(raw["time_step_min"]))


def nemotron_h_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's names for the blocks (attention, MLP) under each layer's `mixer`, its norm `norm`; embeddings and the
    final norm as NemotronHModel (and Mamba2Model) names them, under `backbone`; the Mamba2 layers' tensors at
    backbone.layers.{i}.mixer; the head where untied (Mamba2's may be tied)."""
    specs = [WeightSpec("backbone.embeddings.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("backbone.norm_f.weight", ("model", "norm", "weight"))]
    specs += [] if cfg.tie_word_embeddings else [WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    layers = [s for s in _EXPERTS(cfg) if s.hf_names[0].startswith("model.layers.")]
    names = {"self_attn": "mixer", "mlp": "mixer", "input_layernorm": "norm"}
    layers = renamed([WeightSpec(tuple(n.replace("model.", "backbone.", 1) for n in s.hf_names), s.path, s.transform)
                      if isinstance(s.hf_name, tuple) else WeightSpec(s.hf_name.replace("model.", "backbone.", 1), s.path, s.transform)
                      for s in layers], names)
    return specs + layers + mamba_specs(cfg, "backbone.layers.{i}.mixer")


# Llama's names for the blocks, the MoE blocks' experts {j}.up_proj / down_proj, router gate, shared_experts beside them
_EXPERTS = moe_weight_map("mlp", {"up_proj": "up_proj", "down_proj": "down_proj"}, shared="shared_experts")

# NemotronHConfig's field defaults
_DEFAULTS = dict(vocab_size=131072, hidden_size=4096, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096, intermediate_size=21504,
                 mlp_hidden_act="relu2", mlp_bias=False, ssm_state_size=128, mamba_num_heads=128, mamba_head_dim=64,
                 mamba_hidden_act="silu", n_groups=8, conv_kernel=4, time_step_min=0.001, use_conv_bias=True, use_bias=False,
                 layer_norm_epsilon=1e-5, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=7688,
                 moe_shared_expert_intermediate_size=7688, moe_latent_size=None, routed_scaling_factor=1.0, n_group=1,
                 topk_group=1, norm_topk_prob=True)
_NOT_NULL = ("max_position_embeddings", "num_key_value_heads", "layer_norm_epsilon", "mlp_hidden_act", "mamba_hidden_act", "head_dim", "mlp_bias",
             "use_bias", "use_conv_bias", "ssm_state_size", "mamba_num_heads", "mamba_head_dim", "n_groups", "conv_kernel",
             "time_step_min", "num_attention_heads", "intermediate_size", "hidden_size", "vocab_size", "tie_word_embeddings",
             "attention_bias", "layer_types", "mamba_chunk_size", "residual_in_fp32", "moe_intermediate_size", "norm_topk_prob",
             "n_routed_experts", "n_shared_experts", "routed_scaling_factor", "n_group", "topk_group")

ARCHITECTURES = (Architecture(
    name="NemotronHForCausalLM", module=CausalLM, weight_map=nemotron_h_weight_map, hf_model_type="nemotron_h",
    config_defaults=nemotron_h_defaults, common_names=nemotron_h_names, hf_defaults=_DEFAULTS, norm_eps_key="layer_norm_epsilon",
    ignored_keys=("sliding_window", "use_sliding_window", "rope_theta", "rope_parameters", "rope_scaling", "partial_rotary_factor",
                  "attention_bias", "hidden_act", "mamba_proj_bias", "time_step_limit", "mamba_dt_limit", "chunk_size",
                  "mamba_chunk_size", "num_logits_to_keep", "residual_in_fp32"),
    not_null=_NOT_NULL, ignore=(r".*rotary_emb\.inv_freq$", r"^mtp\."), base_prefix="backbone",
    tensors=lambda source: prefix_renamed(source, "model.", "backbone."),
    # Mamba2, MoE, attention, Mamba2, MLP: 8 Mamba2 heads of 16 in 2 groups with the conv's bias and in/out biases; GQA
    # attention of head_dim 24 (not hidden / heads); MLP biases; a time-step floor; 4 ungated experts in 2 groups, the best
    # group's top 2 scaled by 2.5, an ungated shared MLP of its own width
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, hybrid_override_pattern="ME*M-", num_attention_heads=4,
                     n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
                     n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                     num_key_value_heads=2, head_dim=24, max_position_embeddings=256, layer_norm_epsilon=1e-5,
                     tie_word_embeddings=False, mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=8, conv_kernel=4,
                     use_conv_bias=True, use_bias=True, mlp_bias=True, mlp_hidden_act="relu2", mamba_hidden_act="silu",
                     time_step_min=0.01, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
