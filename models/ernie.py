"""ERNIE 4.5 (dense: ERNIE-4.5-0.3B): Llama's decoder with rotary positions on interleaved pairs of
the whole head (rope_interleaved), its tables kept in float32 and q/k rotated in float32
(rope_float32), and one switch, use_bias, for the biases of q/k/v/o and of the MLP.

ERNIE 4.5 MoE (ERNIE-4.5-21B-A3B): the same layers, routed experts on the layers from
moe_layer_start_index to moe_layer_end_index every moe_layer_interval-th, dense MLPs on the others.
Its router softmaxes, chooses the top k by the scores plus a learned bias per expert
(moe_statics.e_score_correction_bias: router_score_bias) and weights them by the scores
renormalised (the sum at least moe_norm_min); moe_num_shared_experts experts' width of shared MLP
(biased as use_bias says) is added ungated. use_bias biases its output head too."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM, decoder_weight_map
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy


def ernie_defaults(raw: dict) -> dict:
    bias = bool(raw.get("use_bias"))
    return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bias, rope_interleaved=True, rope_float32=True)


def ernie_moe_defaults(raw: dict) -> dict:
    """ERNIE's flags and its experts as Ernie4_5_MoeConfig reads them (num_experts and
    num_experts_per_tok are its other spellings of moe_num_experts and moe_k)."""
    n, interval = raw["num_hidden_layers"], raw["moe_layer_interval"]
    experts, k = raw.get("moe_num_experts", raw.get("num_experts", 64)), raw.get("moe_k", raw.get("num_experts_per_tok", 6))
    if interval == 0:
        raise ConfigError("config.json moe_layer_interval is 0 (transformers fails dividing by it): set it to 1 for experts "
                          "in every layer from moe_layer_start_index on, n for every n-th")
    start, end = raw["moe_layer_start_index"], raw["moe_layer_end_index"]
    end = n - 1 if end == -1 else end
    routed = [i for i in range(n) if (i + 1) % interval == 0 and start <= i <= end]
    return dict(ernie_defaults(raw), num_experts=experts, experts_per_token=k, moe_intermediate_size=raw["moe_intermediate_size"],
                head_bias=bool(raw.get("use_bias")), norm_topk_prob=True, router_score_bias=True, router_norm_min=float(raw["moe_norm_min"]),
                dense_layers=tuple(i for i in range(n) if i not in routed),
                shared_expert_intermediate_size=raw["moe_intermediate_size"] * raw["moe_num_shared_experts"],
                shared_expert_gated=False)


EXPERTS = {name: name for name in ("gate_proj", "up_proj", "down_proj")}
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Ernie4_5Config and Ernie4_5_MoeConfig: tied, 131,072 positions, a rope base of 500,000
_DEFAULTS = dict(rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0)

ARCHITECTURES = (Architecture(
    name="Ernie4_5ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="ernie4_5", ignored_keys=NO_WINDOW,
    # Ernie4_5Config: head_dim 128 (not hidden / heads), 2 kv heads
    hf_defaults=dict(_DEFAULTS, head_dim=128, num_key_value_heads=2),
    config_defaults=ernie_defaults, not_null=RMS_NOT_NULL,
    # biases on, head_dim unlike hidden / heads
    tiny_config=dict(_TINY, head_dim=32, use_bias=True, tie_word_embeddings=True),
), Architecture(
    name="Ernie4_5_MoeForCausalLM", module=CausalLM, hf_model_type="ernie4_5_moe", ignored_keys=NO_WINDOW,
    weight_map=moe_weight_map("mlp", EXPERTS, shared="shared_experts",
                              score_bias=("moe_statics.e_score_correction_bias", Copy(lead=1))),
    # Ernie4_5_MoeConfig (ERNIE-4.5-21B-A3B's routing): 4 kv heads; its expert count and k: ernie_moe_defaults
    hf_defaults=dict(_DEFAULTS, num_key_value_heads=4, moe_intermediate_size=1536, moe_num_shared_experts=2,
                     moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1, moe_norm_min=1e-12),
    config_defaults=ernie_moe_defaults,
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "moe_k", "moe_num_experts", "num_experts", "moe_intermediate_size",
                             "moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval",
                             "moe_norm_min"),
    # layer 0 dense, 1 and 2 routed (4 experts, top 2) beside a shared expert; biases on; untied
    tiny_config=dict(_TINY, use_bias=True, tie_word_embeddings=False, moe_num_experts=4, moe_k=2, moe_intermediate_size=32,
                     moe_num_shared_experts=1, moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1,
                     moe_norm_min=1e-12),
))
