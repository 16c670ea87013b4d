"""TII Falcon-H1 (transformers' FalconH1ForCausalLM: tiiuae/Falcon-H1-*): the shared layer with Llama's attention and
Granite 4.0-H's Mamba2 mixer side by side on the same normed input (cfg.parallel_mixer: each layer's cache both its
KV pages and a recurrent state; no prefix cache), x + attention_out_multiplier attn + ssm_out_multiplier mamba, then
Bamba's pre_ff_layernorm and gated MLP; rotary positions on every head (partial_rotary_factor ignored, as Llama's).

The muP multipliers, each 1 where left out: the embeddings times embedding_multiplier, the attention's input times
attention_in_multiplier and its keys times key_multiplier, the Mamba2 mixer's input times ssm_in_multiplier and its
in_proj's z | x | B | C | dt parts times ssm_multipliers, the MLP's gate product and output times mlp_multipliers, the
logits times lm_head_multiplier. The mixer is mamba_d_ssm wide where given (else mamba_expand x hidden_size); its output
RMS-normed per group before the silu(z) gate where mamba_rms_norm and mamba_norm_before_gate, after it where not
mamba_norm_before_gate, not at all (y silu(z) alone) without mamba_rms_norm; out_proj's bias projectors_bias.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.bamba import bamba_weight_map
from jaxllm.models.decoder import CausalLM
from jaxllm.models.mamba import refuse_layer_types
from jaxllm.models.mamba2 import mamba_fields

_ONE = ("embedding_multiplier", "lm_head_multiplier", "key_multiplier", "attention_in_multiplier", "attention_out_multiplier",
        "ssm_in_multiplier", "ssm_out_multiplier")


def _multipliers(raw: dict, key: str, count: int) -> tuple[float, ...]:
    values = raw.get(key)
    if values is None:
        return (1.0,) * count
    if len(values) != count:
        raise ConfigError(f"config.json {key} has {len(values)} values where Falcon-H1 reads {count} (transformers fails): "
                          f"give {count}, or leave it out for 1.0 each")
    return tuple(float(v) for v in values)


def falcon_h1_defaults(raw: dict) -> dict:
    refuse_layer_types(raw, "remove it (every Falcon-H1 layer is attention beside a Mamba2 mixer)",
                       keys=("layer_types", "layers_block_type"))
    one = {key: 1.0 if raw.get(key) is None else float(raw[key]) for key in _ONE}
    norm = "none" if not raw["mamba_rms_norm"] else "norm_first" if raw["mamba_norm_before_gate"] else "gate_first"
    return dict(mamba_fields(raw), layer_types=("full_attention",) * raw["num_hidden_layers"], parallel_mixer="mamba",
                recurrent_kinds=("mamba",), mamba_norm=norm, mamba_out_bias=bool(raw["projectors_bias"]),
                embed_scale=one["embedding_multiplier"], embed_scale_exact=True, logit_scale=one["lm_head_multiplier"],
                key_scale=one["key_multiplier"], attn_input_scale=one["attention_in_multiplier"],
                attn_out_scale=one["attention_out_multiplier"], mamba_in_scale=one["ssm_in_multiplier"],
                mamba_out_scale=one["ssm_out_multiplier"], mlp_scales=_multipliers(raw, "mlp_multipliers", 2),
                mamba_proj_scales=_multipliers(raw, "ssm_multipliers", 5))


# FalconH1Config's field defaults
_DEFAULTS = dict(vocab_size=128000, tie_word_embeddings=False, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-5, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2, max_position_embeddings=8192, mamba_d_ssm=1024, mamba_n_heads=128,
                 mamba_d_head="auto", mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4, mamba_expand=2, mamba_conv_bias=True,
                 mamba_proj_bias=False, mamba_norm_before_gate=True, mamba_rms_norm=False, projectors_bias=False,
                 rope_theta=10000.0, attention_bias=False, mlp_bias=False)

ARCHITECTURES = (Architecture(
    name="FalconH1ForCausalLM", module=CausalLM, weight_map=bamba_weight_map, hf_model_type="falcon_h1",
    config_defaults=falcon_h1_defaults, hf_defaults=_DEFAULTS,
    ignored_keys=("sliding_window", "use_sliding_window", "mamba_chunk_size", "num_logits_to_keep"),
    not_null=RMS_NOT_NULL + ("head_dim", "attention_bias", "mlp_bias", "layer_types", "layers_block_type") + _ONE,  # null x a tensor
    # every layer attention (GQA, biases, rope) beside a Mamba2 mixer of 6 heads of 16 (mamba_d_ssm 96, not 2 x 64) in 2
    # groups, the conv's bias, out_proj's bias; its output normed before the gate; every multiplier unlike 1
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=True, mlp_bias=False,
                     mamba_d_ssm=96, mamba_n_heads=6, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
                     mamba_conv_bias=True, mamba_proj_bias=False, projectors_bias=True, mamba_rms_norm=True,
                     mamba_norm_before_gate=True, embedding_multiplier=2.0, lm_head_multiplier=0.5, key_multiplier=0.8,
                     attention_in_multiplier=1.2, attention_out_multiplier=0.9, ssm_in_multiplier=0.7, ssm_out_multiplier=1.1,
                     mlp_multipliers=[1.5, 0.7], ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.3],
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
