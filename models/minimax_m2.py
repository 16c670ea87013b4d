"""MiniMax-M2 (MiniMaxM2ForCausalLM): Mixtral's decoder (routed experts in every layer, their
tensors block_sparse_moe.experts.{j}.w1 / w3 / w2) with the sigmoid router of DeepSeek-V3 without
groups: sigmoid scores, the top k chosen by score plus e_score_correction_bias, weights renormalised
(`cfg.router` "sigmoid_topk"); the router and its bias in the model's dtype. Its attention has no
biases and RMSNorms of q and k over the whole projection (OLMo 2's "projection" norm, Llama's
scale after the cast back) before rotary positions on the first half of each head's dims (its
checkpoints' rotary_dim, halves not pairs).

MiniMax's own code reads keys transformers' ignores (use_qk_norm, qk_norm_type, scoring_func,
use_routing_bias, shared_intermediate_size, attn_type_list); where one asks for other than what
transformers hard-wires, the checkpoint is refused in one line rather than run as something else."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config_fields import FLAG, NAME, Field, check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.llama import NO_BIAS
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy

# MiniMax's own keys, typed as its code reads them
OWN_FIELDS = {"use_qk_norm": FLAG, "qk_norm_type": NAME, "scoring_func": NAME, "use_routing_bias": FLAG,
              "attn_type_list": Field(int, many="list")}
# MiniMax's keys transformers never reads, and the one value each may take in what transformers runs
HARD_WIRED = dict(use_qk_norm=True, qk_norm_type="per_layer", scoring_func="sigmoid", use_routing_bias=True)


def minimax_m2_names(raw: dict) -> dict:
    """config.json as MiniMaxM2Config reads it: the experts under num_experts (its attribute_map's alias,
    which wins), else num_local_experts, else 256; the Hub's rotary_dim as partial_rotary_factor
    rotary_dim / head_dim where the file gives no factor of its own."""
    check_fields(raw, OWN_FIELDS, "config.json")
    raw = dict(raw, num_local_experts=raw["num_experts"] if "num_experts" in raw else raw.get("num_local_experts", 256))
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if raw.get("rotary_dim") is None or "partial_rotary_factor" in raw or "partial_rotary_factor" in rope:
        return raw
    return dict(raw, partial_rotary_factor=raw["rotary_dim"] / raw["head_dim"])


def minimax_m2_defaults(raw: dict) -> dict:
    for key, value in HARD_WIRED.items():
        if raw.get(key) not in (None, value):
            raise ConfigError(f"config.json {key}={raw[key]!r} is not supported (MiniMaxM2ForCausalLM runs {key}={value!r}, "
                              f"as transformers does): remove the key or set it to {value!r}")
    if raw.get("shared_intermediate_size"):
        raise ConfigError(f"config.json shared_intermediate_size={raw['shared_intermediate_size']} asks for a shared expert, "
                          "which MiniMaxM2ForCausalLM does not have: set it to 0")
    if any(kind != 1 for kind in raw.get("attn_type_list") or ()):
        raise ConfigError("config.json attn_type_list asks for lightning-attention layers (0), which MiniMaxM2ForCausalLM "
                          "does not have (MiniMax-Text-01's): set every entry to 1 (softmax attention)")
    return dict(NO_BIAS, qk_norm="projection", num_experts=raw["num_local_experts"], experts_per_token=raw["num_experts_per_tok"],
                router="sigmoid_topk", router_score_bias=True, norm_topk_prob=True)


ARCHITECTURES = (Architecture(
    name="MiniMaxM2ForCausalLM", module=CausalLM, hf_model_type="minimax_m2", config_defaults=minimax_m2_defaults,
    weight_map=moe_weight_map("block_sparse_moe", {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"},
                              score_bias=("e_score_correction_bias", Copy())),
    common_names=minimax_m2_names,
    ignored_keys=NO_WINDOW + ("attention_bias", "mlp_bias", "moe_intermediate_size"), partial_rotary=True,
    # MiniMaxM2Config's field defaults (MiniMax-M2's shapes; its rope base default_theta; num_local_experts' in minimax_m2_names)
    hf_defaults=dict(vocab_size=200064, hidden_size=3072, intermediate_size=1536, num_hidden_layers=62, num_attention_heads=48,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=196608, rms_norm_eps=1e-6,
                     rope_theta=5_000_000.0, num_experts_per_tok=8, bos_token_id=200034,
                     eos_token_id=200020),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "num_experts_per_tok", "num_local_experts", "num_experts"),
    # 6 experts, top 2, in every layer; GQA; q/k norms over the projection; half of each head rotated (rotary_dim)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, rotary_dim=8, max_position_embeddings=256, rms_norm_eps=1e-6,
                     rope_theta=10000.0, tie_word_embeddings=False, num_local_experts=6, num_experts_per_tok=2,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
