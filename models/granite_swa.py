"""Granite SWA and Granite MoE SWA (ibm-granite/granite-swash-*): Granite's and GraniteMoeShared's layers
(models/granite.py, models/granitemoe.py) with sliding-window layers (every layer but each 4th from the
first where layer_types is left out, a window of 128 by default), a learned sink logit per query head
(transformers' eager form scales each output by sigmoid(logsumexp(scores) - sink): the same as the sink
joining the softmax's denominator, gpt-oss's `attn_sinks`) and a rope base per layer (layer_rope_theta,
0 for a layer without rotary positions: `ModelConfig.rope_thetas`, `nope_layers`). Granite MoE SWA's
checkpoints keep its experts as transformers 5 saves them (experts.gate_up_proj, experts.down_proj)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, Architecture
from jaxllm.models.config import parse_rope
from jaxllm.models.decoder import decoder_weight_map
from jaxllm.models.granite import GraniteForCausalLM, granite_defaults
from jaxllm.models.granitemoe import GRANITE_NOT_NULL, TINY, granitemoe_defaults, granitemoe_layout


def swa_fields(raw: dict) -> dict:
    """The windows, sinks and per-layer rope bases GraniteSWAConfig and GraniteMoeSWAConfig read."""
    n = raw["num_hidden_layers"]
    types = raw.get("layer_types") or ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(n)]
    thetas = raw.get("layer_rope_theta")
    if thetas is None:
        return dict(layer_types=tuple(types), attn_sinks=True, sinks_outside_weights=True)
    if len(thetas) != n:
        raise ConfigError(f"config.json layer_rope_theta has {len(thetas)} entries for {n} layers: give one rope base per layer "
                          "(0: no rotary positions)")
    base = parse_rope(raw).theta  # a layer's base stands for the file's, every other rope setting kept
    return dict(layer_types=tuple(types), attn_sinks=True, sinks_outside_weights=True, rope_thetas=tuple(float(t) or base for t in thetas),
                nope_layers=tuple(i for i, t in enumerate(thetas) if not t))


_SWA_TINY = dict(TINY, sliding_window=8, layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                 layer_rope_theta=[10000.0, 0, 500.0])

ARCHITECTURES = (Architecture(
    name="GraniteSWAForCausalLM", module=GraniteForCausalLM, weight_map=decoder_weight_map, hf_model_type="granite_swa",
    ignored_keys=NO_WINDOW_SWITCH, config_defaults=lambda raw: dict(granite_defaults(raw), **swa_fields(raw)),
    not_null=GRANITE_NOT_NULL + ("mlp_bias",),
    # GraniteSWAConfig's (granite-swash-2b's)
    hf_defaults=dict(sliding_window=128, tie_word_embeddings=True, rms_norm_eps=1e-5, num_key_value_heads=4, max_position_embeddings=8192, bos_token_id=100257, eos_token_id=100257),
    # a full layer and two sliding ones, one of them without rotary positions and one of another base; biases; untied
    tiny_config=dict({k: v for k, v in _SWA_TINY.items() if k not in ("num_local_experts", "num_experts_per_tok")},
                     intermediate_size=96, attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
), Architecture(
    name="GraniteMoeSWAForCausalLM", module=GraniteForCausalLM, hf_model_type="granitemoe_swa", ignored_keys=NO_WINDOW_SWITCH,
    weight_map=granitemoe_layout("router.weight", "experts.gate_up_proj", "experts.down_proj"),
    config_defaults=lambda raw: dict(granitemoe_defaults(raw), **swa_fields(raw)),
    not_null=GRANITE_NOT_NULL + ("shared_intermediate_size",),
    # GraniteMoeSWAConfig's: its window; GraniteMoeSharedConfig's experts (8, top 2), untied, no shared MLP
    hf_defaults=dict(sliding_window=128, num_local_experts=8, num_experts_per_tok=2),
    # GraniteSWA's layers with 6 experts (top 2) and a shared MLP wider than them
    tiny_config=dict(_SWA_TINY, shared_intermediate_size=48, tie_word_embeddings=True, attention_bias=False),
))
