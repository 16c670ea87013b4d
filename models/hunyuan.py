"""HunYuan (Tencent) dense and MoE: Llama's decoder with an RMSNorm of each q/k head applied after
the rotary positions (query_layernorm / key_layernorm: qk_norm_after_rope), no MLP biases, and
the rope "dynamic" with a fixed NTK alpha (a larger base, not length-dependent) where its settings
give an alpha.

The MoE model routes every layer: softmax over the experts, the top moe_topk renormalised, the
experts as wide as intermediate_size, beside an ungated shared MLP of that width (shared_mlp); its
router is gate.wg."""

import dataclasses

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.moe import moe_weight_map

QK_NAMES = {"q_norm": "query_layernorm", "k_norm": "key_layernorm"}
EXPERTS = {name: name for name in ("gate_proj", "up_proj", "down_proj")}


def hunyuan_defaults(raw: dict) -> dict:
    """The q/k norms after rotation, no MLP biases; the rope's NTK alpha where a dynamic rope gives one
    (its base then needs head_dim, which transformers reads from config.json alone)."""
    rope = parse_rope(raw)
    alpha = (raw.get("rope_scaling") or raw.get("rope_parameters") or {}).get("alpha")
    if rope.type == "dynamic" and alpha:
        if raw.get("head_dim") is None:
            raise ConfigError("config.json has no 'head_dim', which HunYuan's NTK-alpha rope needs (transformers fails "
                              "without it): add it (usually hidden_size / num_attention_heads)")
        rope = dataclasses.replace(rope, alpha=float(alpha))
    return dict(qk_norm="per_head", qk_norm_after_rope=True, mlp_bias=False, rope=rope)


def hunyuan_moe_defaults(raw: dict) -> dict:
    """HunYuan's flags and its experts: num_experts, top moe_topk (one per layer, or a list whose
    layers all take the same k), renormalised, each and the shared MLP intermediate_size wide."""
    k = raw.get("moe_topk", raw.get("num_experts_per_tok", 1))
    if isinstance(k, list):
        if len(set(k)) != 1 or len(k) < raw["num_hidden_layers"]:
            raise ConfigError(f"config.json moe_topk {k} gives layers different numbers of experts (or too few entries): "
                              "jaxllm supports one k for every layer")
        k = k[0]
    return dict(hunyuan_defaults(raw), num_experts=raw["num_experts"], experts_per_token=k, norm_topk_prob=True,
                shared_expert_intermediate_size=raw["intermediate_size"], shared_expert_gated=False)


def hunyuan_weight_map(cfg: ModelConfig):
    return renamed(decoder_weight_map(cfg), QK_NAMES)


_moe_map = moe_weight_map("mlp", EXPERTS, router="gate.wg.weight", shared="shared_mlp")


def hunyuan_moe_weight_map(cfg: ModelConfig):
    return renamed(_moe_map(cfg), QK_NAMES)


_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
# the Hub's rope (Hunyuan-7B's: dynamic with an NTK alpha and a factor of 1)
_ALPHA_ROPE = {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}
_NOT_NULL = RMS_NOT_NULL + ("attention_bias",)

ARCHITECTURES = (Architecture(
    name="HunYuanDenseV1ForCausalLM", module=CausalLM, weight_map=hunyuan_weight_map, hf_model_type="hunyuan_v1_dense",
    ignored_keys=NO_WINDOW, config_defaults=hunyuan_defaults, not_null=_NOT_NULL,
    hf_defaults=dict(rms_norm_eps=1e-5, max_position_embeddings=2048),
    # NTK-alpha rope, q/k/v/o biases (attention_bias)
    tiny_config=dict(_TINY, attention_bias=True, rope_parameters=_ALPHA_ROPE),
), Architecture(
    name="HunYuanMoEV1ForCausalLM", module=CausalLM, weight_map=hunyuan_moe_weight_map, hf_model_type="hunyuan_v1_moe",
    ignored_keys=NO_WINDOW, config_defaults=hunyuan_moe_defaults, not_null=_NOT_NULL + ("num_experts", "moe_topk"),
    hf_defaults=dict(rms_norm_eps=1e-5, max_position_embeddings=2048, num_experts=1),  # moe_topk: 1 (its spellings: hunyuan_moe_defaults)
    # 4 experts, top 2 (as a per-layer list, the Hub's spelling), NTK-alpha rope
    tiny_config=dict(_TINY, num_experts=4, moe_topk=[2, 2, 2], rope_parameters=_ALPHA_ROPE),
))
