"""IBM Granite 4.0 hybrids (transformers' GraniteMoeHybridForCausalLM: granite-4.0-h-*): GraniteMoeShared's
layers (Granite's four multipliers, routed experts plus an ungated shared MLP; no experts: the shared MLP
alone) whose token mixer is attention or a Mamba2 layer (models/mamba2.py, a recurrent mixer keeping a
state per sequence, no keys; no prefix cache: docs/architecture.md).

- layer types from layer_types (or layers_block_type): "mamba" / "linear_attention" Mamba2, "attention" /
  "full_attention" attention (transformers' remap of the older names); every layer Mamba2 without either;
- rotary positions only where position_embedding_type is "rope" (granite-4.0-h's "nope": none);
- the Mamba2 keys as models/mamba2.py's mamba_fields reads them.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import decoder_weight_map
from jaxllm.models.granite import MULTIPLIERS, GraniteForCausalLM
from jaxllm.models.granitemoe import granitemoe_defaults, granitemoe_weight_map, shared_mlp_specs
from jaxllm.models.mamba2 import mamba_fields, mamba_specs
from jaxllm.models.weights import WeightSpec

_TYPES = {"mamba": "mamba", "linear_attention": "mamba", "attention": "full_attention", "full_attention": "full_attention"}


def _layer_types(raw: dict) -> tuple[str, ...]:
    types = raw.get("layer_types") or raw.get("layers_block_type") or ["mamba"] * raw["num_hidden_layers"]
    for kind in types:
        if kind not in _TYPES:
            raise ConfigError(f"config.json layer type '{kind}' is not one Granite 4.0 hybrid layers run (transformers has no "
                              "mask for it): use mamba or attention")
    return tuple(_TYPES[kind] for kind in types)


def hybrid_defaults(raw: dict) -> dict:
    types = _layer_types(raw)
    out = dict(granitemoe_defaults(raw), **mamba_fields(raw), layer_types=types, recurrent_kinds=("mamba",))
    if raw["position_embedding_type"] != "rope":  # GraniteMoeHybridModel builds no rotary embedding
        out["nope_layers"] = tuple(range(len(types)))
    if not raw["num_local_experts"]:  # the shared MLP alone: our dense MLP of its width
        out.update(num_experts=0, experts_per_token=0, shared_expert_intermediate_size=0, intermediate_size=raw["shared_intermediate_size"])
    return out


def hybrid_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """GraniteMoeShared's map (the shared MLP alone read as the dense MLP), and each Mamba2 layer's tensors."""
    if cfg.num_experts:
        specs = granitemoe_weight_map(cfg)
    else:
        specs = [s for s in decoder_weight_map(cfg) if ".mlp." not in s.hf_names[0]]
        for i in range(cfg.num_layers):
            specs += shared_mlp_specs(f"model.layers.{i}.shared_mlp.", ("model", "layers", i, "mlp"), cfg.intermediate_size)
    return specs + mamba_specs(cfg)


# GraniteMoeHybridConfig's field defaults (the multipliers' 1.0: granite_defaults)
_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, num_local_experts=8,
                 num_experts_per_tok=2, shared_intermediate_size=1024, position_embedding_type=None, mamba_n_heads=128,
                 mamba_n_groups=1, mamba_d_state=256, mamba_d_head="auto", mamba_d_conv=4, mamba_expand=2,
                 mamba_conv_bias=True, mamba_proj_bias=False, hidden_act="silu", attention_bias=False)
_MAMBA_NOT_NULL = ("mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_head", "mamba_d_conv", "mamba_expand",
                   "mamba_conv_bias", "mamba_proj_bias")

ARCHITECTURES = (Architecture(
    name="GraniteMoeHybridForCausalLM", module=GraniteForCausalLM, weight_map=hybrid_weight_map,
    hf_model_type="granitemoehybrid", config_defaults=hybrid_defaults, hf_defaults=_DEFAULTS,
    ignored_keys=tuple(k for k in NO_WINDOW if k != "layer_types") + ("mamba_chunk_size",),
    not_null=RMS_NOT_NULL + ("attention_bias", "head_dim", "num_local_experts", "num_experts_per_tok",
                             "shared_intermediate_size", "layers_block_type") + MULTIPLIERS + _MAMBA_NOT_NULL,
    # mamba, attention, mamba; 4 experts, top 2, beside a wider shared MLP; 8 Mamba2 heads of 16 in 2 groups,
    # the projections' and conv's biases; rope; multipliers unlike 1
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, position_embedding_type="rope",
                     num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=48, embedding_multiplier=3.0,
                     residual_multiplier=0.6, attention_multiplier=0.1, logits_scaling=4.0, tie_word_embeddings=False,
                     layer_types=["mamba", "attention", "mamba"], mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=8,
                     mamba_d_conv=4, mamba_expand=2, mamba_conv_bias=True, mamba_proj_bias=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
