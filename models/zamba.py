"""Zyphra Zamba (v1: transformers' ZambaForCausalLM, Zyphra/Zamba-7B-v1): Zamba2's model (models/zamba2.py) with one
shared block and no adapters. Every layer is x + mamba(norm(x)); on the hybrid layers (layers_block_type, else the
config's pattern: layers 2 and every attn_layer_period-th from attn_layer_offset + 3) the shared block's output goes
through the layer's `linear` into the mixer's input. The block reads concat(x, the token embeddings): attention without
positions, heads of attention_head_dim (2 x hidden_size / num_attention_heads where null; its alias head_dim wins),
scores scaled by (head_dim / 2) ** -0.5; a gated MLP without biases (hidden_act), no residuals. Its parameters are
stored once, at the first hybrid layer (shared_transf, as transformers saves it); a checkpoint's tied copies at later
layers are not read.

The mixer is Zamba's multi-head Mamba (mamba1.MultiHeadMamba): n_mamba_heads independent Mamba (v1) mixers of
mamba_expand x hidden_size / n_mamba_heads channels, each its own x_proj and dt_proj (a time step of mamba_dt_rank,
"auto": ceil(hidden_size / 16)), in_proj's x and z rows interleaved, the conv's activation hidden_mamba_act, its bias
mamba_conv_bias, in/out biases mamba_proj_bias. attention_hidden_size other than 2 x hidden_size is refused (transformers
fails on it), as are layer types other than hybrid and the Mamba ones.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.decoder import dense
from jaxllm.models.mamba1 import mamba1_fields, mamba1_specs
from jaxllm.models.zamba2 import (
    Zamba2ForCausalLM,
    block_types,
    check_width,
    head_dim,
    hybrid_ignored,
    hybrid_weight_map,
    shared_blocks,
)


def _default_blocks(raw: dict) -> list[str]:
    """ZambaConfig's layers where layers_block_type is left out: Mamba, Mamba, hybrid, then hybrid where the index past
    those three is attn_layer_offset modulo attn_layer_period."""
    period, offset = raw["attn_layer_period"], raw["attn_layer_offset"]
    rest = ["hybrid" if i % period == offset else "linear_attention" for i in range(raw["num_hidden_layers"] - 3)]
    return ["linear_attention", "linear_attention", "hybrid"] + rest


def zamba_names(raw: dict) -> dict:
    """The common keys: head_dim as ZambaConfig reads it (head_dim, an alias applied over attention_head_dim, else that,
    else 2 x hidden_size // num_attention_heads); the layers' types."""
    if "head_dim" in raw and raw["head_dim"] is None:
        raise ConfigError("config.json head_dim is null, which ZambaConfig sets over attention_head_dim (transformers fails): "
                          "give the heads' size, or leave the key out")
    if not all(isinstance(raw[k], int) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers")):
        return raw  # a missing key: require_fields names it
    given = {k: raw[k] for k in ("head_dim", "attention_head_dim") if raw.get(k) is not None}
    check_width(raw, null=True)
    types = block_types(raw, _default_blocks(raw), "Zamba", "mamba1_heads")
    raw = {k: v for k, v in raw.items() if k not in ("layer_types", "attention_head_dim")}
    return dict(raw, block_types=types, head_dim=head_dim(raw, dict(list(given.items())[:1])))


def zamba_defaults(raw: dict) -> dict:
    heads, inner = raw["n_mamba_heads"], raw["mamba_expand"] * raw["hidden_size"]
    if inner % heads:
        raise ConfigError(f"config.json n_mamba_heads={heads} does not divide mamba_expand x hidden_size = {inner} (transformers "
                          "refuses it): correct n_mamba_heads")
    fields = mamba1_fields(raw, inner, state="mamba_d_state", conv="mamba_d_conv", dt_rank="mamba_dt_rank",
                           conv_bias="mamba_conv_bias", proj_bias="mamba_proj_bias")
    return dict(fields, layer_types=tuple(raw["block_types"]), recurrent_kinds=("mamba1_heads",), parallel_mixer="mamba1_heads",
                position_embedding="none", attn_scale=(raw["head_dim"] / 2) ** -0.5, attn_input_size=2 * raw["hidden_size"],
                shared_blocks=shared_blocks(raw, 1), qkv_bias=False, o_bias=False, mlp_bias=False, mamba_heads=heads,
                mamba_act=raw["hidden_mamba_act"])


def zamba_weight_map(cfg):
    def mlp(cfg, hf, ours):
        return [s for n in ("gate_proj", "up_proj", "down_proj") for s in dense(f"{hf}feed_forward.{n}", ours + ("feed_forward", n),
                                                                                 bias=False)]
    return hybrid_weight_map(cfg, "shared_transf", lambda hf, i: mamba1_specs(cfg, hf + ".", ("model", "layers", i, "mamba")), mlp)


# ZambaConfig's field defaults (Zamba-7B's shapes)
_DEFAULTS = dict(vocab_size=32000, tie_word_embeddings=True, hidden_size=3712, intermediate_size=14848, num_hidden_layers=76,
                 num_attention_heads=16, num_key_value_heads=16, n_mamba_heads=2, hidden_act="gelu", hidden_mamba_act="silu",
                 rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096,
                 attn_layer_period=6, attn_layer_offset=4, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto",
                 mamba_conv_bias=True, mamba_proj_bias=False)

ARCHITECTURES = (Architecture(
    name="ZambaForCausalLM", module=Zamba2ForCausalLM, weight_map=zamba_weight_map, hf_model_type="zamba",
    config_defaults=zamba_defaults, common_names=zamba_names, hf_defaults=_DEFAULTS,
    ignore_for=lambda cfg: hybrid_ignored(cfg, "shared_transf"),
    ignored_keys=("sliding_window", "use_sliding_window", "attention_bias", "mlp_bias", "rope_theta", "rope_parameters",
                  "rope_scaling", "partial_rotary_factor", "num_logits_to_keep", "use_mamba_kernels", "use_associative_scan",
                  "time_step_min", "time_step_max", "time_step_floor"),
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "num_key_value_heads", "intermediate_size", "mamba_dt_rank"),
    # Mamba, Mamba, hybrid, Mamba, hybrid (ZambaConfig's pattern of attn_layer_period 2, offset 1: the block invoked twice);
    # 2 Mamba heads of 64 channels, a time step of rank 6, in/out and conv biases; GQA attention
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=5, attn_layer_period=2,
                     attn_layer_offset=1, num_attention_heads=4, num_key_value_heads=2, n_mamba_heads=2, mamba_d_state=8,
                     mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=6, mamba_conv_bias=True, mamba_proj_bias=True,
                     hidden_act="gelu", hidden_mamba_act="silu", rms_norm_eps=1e-5, max_position_embeddings=256,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
