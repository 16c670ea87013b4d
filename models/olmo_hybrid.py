"""OLMo Hybrid (allenai; transformers' modeling_olmo_hybrid.py): OLMo 3's attention layers between
gated-DeltaNet linear-attention layers (models/linear_attention.py, a recurrent mixer: a state per
sequence, no keys; no prefix cache: docs/architecture.md).

- layer types "linear_attention" / "full_attention" (by default every fourth layer full, the last
  one where that leaves none); transformers refuses a model without either kind, and so do we;
- attention layers: OLMo 2's post-norm layer (no input norm; post_attention_layernorm and
  post_feedforward_layernorm on the branches), q/k RMSNorm over the whole projection, no window;
- linear layers: the shared pre-norm layer (input_layernorm, post_attention_layernorm) around the
  gated DeltaNet, whose difference from Qwen3.5's is options of the shared mixer: q_proj, k_proj and
  v_proj apart (linear_qkv_apart), beta times 2 where linear_allow_neg_eigval (linear_beta_scale),
  its gated norm o_norm with FLA's epsilon 1e-5 (linear_norm_eps); its g_proj, b_proj, a_proj and
  o_proj are Qwen3.5's in_proj_z, in_proj_b, in_proj_a and out_proj;
- RMSNorms applying their weight in float32, rope tables float32 (OLMo 2's flags); no rope at all
  where rope_theta is null (the released checkpoints: OlmoHybridModel builds no rotary embedding).
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, renamed
from jaxllm.models.olmo2 import OLMO2_FLAGS, Olmo2DecoderLayer, post_norms
from jaxllm.models.qwen3_next import linear_specs
from jaxllm.models.weights import saved_as

TYPES = ("linear_attention", "full_attention")
# Qwen3.5's names of the mixer's tensors -> OLMo Hybrid's
_NAMES = {"in_proj_z": "g_proj", "in_proj_b": "b_proj", "in_proj_a": "a_proj", "out_proj": "o_proj", "norm": "o_norm"}
# the layers' norms as its checkpoints name them (transformers renames them on load and back on save:
# conversion_mapping.py; its attention layers' post_attention_layernorm too); transformers' own names read as well
_NORMS = {"input_layernorm": "attention_layer_norm", "post_attention_layernorm": "feedforward_layer_norm"}


def olmo_hybrid_layer(cfg: ModelConfig, layer: int, *, dtype, rngs):
    """The shared pre-norm layer around the linear layers' mixer, OLMo 2's post-norm layer around attention."""
    return (DecoderLayer if cfg.layer_is_recurrent(layer) else Olmo2DecoderLayer)(cfg, layer, dtype=dtype, rngs=rngs)


class OlmoHybridForCausalLM(CausalLM):
    layer_cls = staticmethod(olmo_hybrid_layer)


def _layer_types(raw: dict) -> tuple[str, ...]:
    """layer_types, else OlmoHybridConfig's: every fourth layer full, the last one where none is."""
    n = raw["num_hidden_layers"]
    types = raw.get("layer_types")
    if types is None:
        types = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)]
        if "full_attention" not in types:
            types[-1] = "full_attention"
    known_layer_types(types, TYPES, "OLMo Hybrid", "transformers builds no layer for it")
    for kind in TYPES:
        if kind not in types:
            raise ConfigError(f"config.json layer_types has no {kind} layer, which transformers' OlmoHybridConfig "
                              "refuses: make at least one layer linear_attention and one full_attention")
    return tuple(types)


def _rope_theta(raw: dict):
    """The rope base transformers' config ends with: the rope settings', else the top-level rope_theta (null: none)."""
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    return rope["rope_theta"] if "rope_theta" in rope else raw.get("rope_theta", 10000.0)


def olmo_hybrid_defaults(raw: dict) -> dict:
    types = _layer_types(raw)
    key_heads = raw.get("linear_num_key_heads") or raw["num_attention_heads"]  # OlmoHybridConfig's for absent or null
    key_dim = raw.get("linear_key_head_dim") or int(0.75 * raw["hidden_size"] / key_heads)
    out = dict(OLMO2_FLAGS, layer_types=types, recurrent_kinds=("linear_attention",),
               linear_conv_kernel=raw["linear_conv_kernel_dim"], linear_key_heads=key_heads, linear_key_head_dim=key_dim,
               linear_value_heads=raw.get("linear_num_value_heads") or raw["num_attention_heads"],
               linear_value_head_dim=raw.get("linear_value_head_dim") or 2 * key_dim, linear_qkv_apart=True,
               linear_beta_scale=2.0 if raw["linear_allow_neg_eigval"] else 1.0, linear_norm_eps=1e-5)
    if _rope_theta(raw) is None:  # no rotary embedding (OlmoHybridModel.rotary_emb is None)
        out["nope_layers"] = tuple(range(len(types)))
    return out


def olmo_hybrid_weight_map(cfg: ModelConfig):
    """decoder_weight_map with OLMo 2's norms on the attention layers, the mixer's tensors on the linear ones."""
    attention = [i for i in range(cfg.num_layers) if not cfg.layer_is_recurrent(i)]
    specs = post_norms(decoder_weight_map(cfg), cfg, attention)
    for i in filter(cfg.layer_is_recurrent, range(cfg.num_layers)):
        specs += renamed(linear_specs(cfg, i), _NAMES)
    return renamed(specs, _NORMS)


# OlmoHybridConfig's field defaults (Olmo-Hybrid-7B's shapes); the linear heads': derived in olmo_hybrid_defaults
_DEFAULTS = dict(vocab_size=100352, hidden_size=3840, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=30,
                 max_position_embeddings=65536, rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                 hidden_act="silu", pad_token_id=100277, eos_token_id=100257, linear_conv_kernel_dim=4,
                 linear_allow_neg_eigval=True)

ARCHITECTURES = (Architecture(
    name="OlmoHybridForCausalLM", module=OlmoHybridForCausalLM, hf_model_type="olmo_hybrid", weight_map=olmo_hybrid_weight_map,
    config_defaults=olmo_hybrid_defaults, hf_defaults=_DEFAULTS, tensors=saved_as(_NORMS),
    # its attention has no window and its MLP no bias, whatever these say (OlmoHybridConfig drops mlp_bias)
    ignored_keys=("sliding_window", "mlp_bias") + NO_WINDOW_SWITCH,
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "head_dim", "attention_bias", "linear_conv_kernel_dim",
                         "linear_allow_neg_eigval"),
    # linear, full, linear, full; two value heads per key head, their own head sizes; rope on (the Hub's is off: SPELLINGS)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, linear_conv_kernel_dim=4,
                     linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
                     linear_allow_neg_eigval=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"]),
),)
