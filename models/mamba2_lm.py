"""Mamba2 (transformers' Mamba2ForCausalLM: mistralai/Mamba-Codestral-7B-v0.1): a stack of Mamba2 blocks alone, Mamba's
module (models/mamba.py: x + mixer(norm(x)), no MLP, no attention, no positions; the residual stream in float32 where
residual_in_fp32, true by default; hidden states each block's input, then the final norm's, as transformers >= 5.25
records them: the shared DecoderModel, unlike Mamba's) and weight map
(`backbone.*`, the head tied where tie_word_embeddings says) with models/mamba2.py's mixer: num_heads heads of head_dim
(their product expand x hidden_size, as Mamba2Config validates), a state of state_size, n_groups groups, a conv of
conv_kernel taps (use_conv_bias), in/out biases (use_bias), hidden_act the conv's activation; a time_step_limit other
than (0, inf) is refused (mamba2.check_time_step_limit). Nothing is cached per position: the engine keeps a state per
sequence and pages of 0 bytes (serving/memory.py); the context is MAMBA_POSITIONS unless config.json gives
max_position_embeddings.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.decoder import DecoderModel
from jaxllm.models.mamba import MAMBA_POSITIONS, MambaForCausalLM, mamba_weight_map, refuse_layer_types
from jaxllm.models.mamba2 import check_time_step_limit


def mamba2_names(raw: dict) -> dict:
    """The common keys: layer_norm_epsilon as rms_norm_eps; the mixer's heads as the attention's (no layer attends: they
    only fill the required keys), the MLP width its inner width (no layer has an MLP)."""
    raw = dict(raw, rms_norm_eps=raw.get("layer_norm_epsilon"), num_attention_heads=raw.get("num_heads"),
               num_key_value_heads=raw.get("num_heads"), intermediate_size=raw.get("expand", 0) * raw.get("hidden_size", 0))
    return raw if raw.get("max_position_embeddings") else dict(raw, max_position_embeddings=MAMBA_POSITIONS)


def mamba2_defaults(raw: dict) -> dict:
    refuse_layer_types(raw, "remove it (every layer is a Mamba2 block)")
    heads, head, inner = raw["num_heads"], raw["head_dim"], raw["expand"] * raw["hidden_size"]
    if heads * head != inner:
        raise ConfigError(f"config.json num_heads={heads} x head_dim={head} is not expand x hidden_size = {inner} (transformers "
                          "refuses it): correct num_heads or head_dim")
    if heads % raw["n_groups"]:
        raise ConfigError(f"config.json num_heads={heads} is not a multiple of n_groups={raw['n_groups']}: each group's B and C "
                          "must serve a whole number of heads")
    check_time_step_limit(raw)
    layers = raw["num_hidden_layers"]
    return dict(layer_types=("mamba",) * layers, recurrent_kinds=("mamba",), position_embedding="none",
                residual_float32=bool(raw.get("residual_in_fp32", True)), mamba_heads=heads, mamba_head_dim=head, mamba_state=raw["state_size"], mamba_groups=raw["n_groups"],
                linear_conv_kernel=raw["conv_kernel"], conv_bias=bool(raw["use_conv_bias"]), mamba_proj_bias=bool(raw["use_bias"]))


# Mamba2Config's field defaults
_DEFAULTS = dict(num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128, num_hidden_layers=64,
                 layer_norm_epsilon=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, expand=2, conv_kernel=4, n_groups=8,
                 use_bias=False, use_conv_bias=True, hidden_act="silu", tie_word_embeddings=False)
_NOT_NULL = ("tie_word_embeddings", "residual_in_fp32", "layer_types", "num_heads", "head_dim", "vocab_size", "hidden_size", "state_size", "num_hidden_layers",
                        "layer_norm_epsilon", "expand", "conv_kernel", "n_groups", "use_bias", "use_conv_bias", "hidden_act")


class Mamba2ForCausalLM(MambaForCausalLM):
    # the shared model's hidden states (each block's input, the last replaced by the final norm's), not MambaModel's:
    # transformers' Mamba2Model records them as other models do since 5.25 (5.24 and before as Mamba's)
    model_cls = DecoderModel


ARCHITECTURES = (Architecture(
    name="Mamba2ForCausalLM", module=Mamba2ForCausalLM, weight_map=mamba_weight_map, hf_model_type="mamba2",
    config_defaults=mamba2_defaults, common_names=mamba2_names, hf_defaults=_DEFAULTS, norm_eps_key="layer_norm_epsilon",
    base_prefix="backbone",
    ignored_keys=("sliding_window", "use_sliding_window", "rope_theta", "rope_parameters", "rope_scaling",
                  "partial_rotary_factor", "num_attention_heads", "num_key_value_heads", "intermediate_size", "attention_bias",
                  "mlp_bias", "chunk_size", "time_step_rank", "rms_norm_eps"),
    not_null=_NOT_NULL,
    # 3 Mamba2 blocks of 8 heads of 16 in 2 groups, the conv's and the projections' biases; untied head
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_heads=8, head_dim=16, expand=2, n_groups=2,
                     state_size=8, conv_kernel=4, use_conv_bias=True, use_bias=True, layer_norm_epsilon=1e-5,
                     tie_word_embeddings=False, bos_token_id=0, eos_token_id=2, pad_token_id=1),
),)
