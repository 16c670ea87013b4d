"""IBM Bamba (transformers' modeling_bamba.py): the shared decoder whose token mixer is Mamba2
(models/mamba2.py, a recurrent mixer keeping a state per sequence, no keys; no prefix cache:
docs/architecture.md) but on the layers attn_layer_indices names, where it is Llama's attention (q/k/v/o
biases as attention_bias says) with rotary positions on half of each head: BambaConfig hard-wires
partial_rotary_factor 0.5, a factor in rope_parameters winning, a top-level one overwritten. The MLP
(mlp_bias), norms pre_ff_layernorm and final_layernorm in Llama's places; the Mamba2 keys as
models/mamba2.py's mamba_fields reads them. BambaConfig cannot set layer_types (a property of
attn_layer_indices): a config.json giving it is refused, as transformers refuses it."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.mamba2 import mamba_fields, mamba_specs

_ROPE_KEYS = ("rope_parameters", "rope_scaling")


def bamba_names(raw: dict) -> dict:
    """config.json with BambaConfig's rotary share: the rope settings' own factor, else 0.5."""
    raw = {k: v for k, v in raw.items() if k != "partial_rotary_factor"}
    ropes = [k for k in _ROPE_KEYS if isinstance(raw.get(k), dict)]
    for key in ropes:
        raw[key] = dict(dict(partial_rotary_factor=0.5), **raw[key])
    return raw if ropes else dict(raw, partial_rotary_factor=0.5)


def bamba_defaults(raw: dict) -> dict:
    for key in ("layer_types", "layers_block_type"):
        if key in raw:
            raise ConfigError(f"config.json gives '{key}', which BambaConfig cannot set (transformers refuses it): name the "
                              "attention layers in attn_layer_indices instead")
    attn = set(raw.get("attn_layer_indices") or ())
    types = tuple("full_attention" if i in attn else "mamba" for i in range(raw["num_hidden_layers"]))
    return dict(mamba_fields(raw), layer_types=types, recurrent_kinds=("mamba",), qkv_bias=bool(raw["attention_bias"]),
                o_bias=bool(raw["attention_bias"]), mlp_bias=bool(raw["mlp_bias"]))


def bamba_weight_map(cfg):
    names = {"post_attention_layernorm": "pre_ff_layernorm", "mlp": "feed_forward", "norm": "final_layernorm"}
    return renamed(decoder_weight_map(cfg), names) + mamba_specs(cfg)


# BambaConfig's field defaults (Bamba-9B's shapes)
_DEFAULTS = dict(vocab_size=128000, tie_word_embeddings=False, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-5, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2, max_position_embeddings=262144, mamba_n_heads=128, mamba_d_head="auto",
                 mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4, mamba_expand=2, mamba_conv_bias=True,
                 mamba_proj_bias=False, rope_theta=10000.0, attention_bias=False, mlp_bias=False)

ARCHITECTURES = (Architecture(
    name="BambaForCausalLM", module=CausalLM, weight_map=bamba_weight_map, hf_model_type="bamba", config_defaults=bamba_defaults,
    common_names=bamba_names, partial_rotary=True, hf_defaults=_DEFAULTS,
    ignored_keys=("sliding_window", "use_sliding_window", "mamba_chunk_size", "z_loss_coefficient", "num_logits_to_keep"),
    not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias", "head_dim", "mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_head",
                             "mamba_d_conv", "mamba_expand", "mamba_conv_bias", "mamba_proj_bias"),
    # mamba, attention, mamba; 8 Mamba2 heads of 16 in 2 groups with the conv's bias; attention biases; GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_layer_indices=[1],
                     mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_conv_bias=True,
                     mamba_proj_bias=False, attention_bias=True, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
