"""K-EXAONE (ExaoneMoeForCausalLM): EXAONE 4.0's attention (per-head q/k RMSNorm, no biases,
sliding-window layers, no rotary positions on the full layers of a model with a window:
models/exaone.py) in a pre-norm layer (OLMoE's: input and post-attention norms), with
DeepSeek-V3's experts (routed experts beside shared ones, the sigmoid router with its score bias
and groups, routed_scaling_factor) on the layers `mlp_layer_types` calls sparse (else from
first_k_dense_replace on). Its config names the experts num_experts and num_shared_experts; the
checkpoint keeps the score bias at mlp.e_score_correction_bias and a multi-token-prediction module
under mtp.*, which transformers does not read; neither do we."""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.config_fields import EXPERTS as EXPERT_COUNT
from jaxllm.models.config_fields import check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS, routed_experts, sigmoid_router
from jaxllm.models.exaone import exaone4_defaults
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy


def exaone_moe_names(raw: dict) -> dict:
    """The expert keys under DeepSeek's names (routed_experts reads those)."""
    check_fields(raw, {"num_shared_experts": EXPERT_COUNT}, "config.json")
    return dict(raw, n_routed_experts=raw["num_experts"], n_shared_experts=raw["num_shared_experts"])


def exaone_moe_defaults(raw: dict) -> dict:
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, raw["first_k_dense_replace"])) if t == "dense")
    return dict(exaone4_defaults(raw), **sigmoid_router(raw), **dict(routed_experts(dict(raw, first_k_dense_replace=0)),
                                                                      dense_layers=dense))


ARCHITECTURES = (Architecture(
    name="ExaoneMoeForCausalLM", module=CausalLM, hf_model_type="exaone_moe", config_defaults=exaone_moe_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS, shared="shared_experts", score_bias=("e_score_correction_bias", Copy())),
    common_names=exaone_moe_names, ignored_keys=NO_WINDOW_SWITCH + ("attention_bias", "mlp_bias", "n_routed_experts", "n_shared_experts"),
    ignore=(r".*rotary_emb\.inv_freq$", r"^mtp\."),
    # ExaoneMoeConfig's field defaults (K-EXAONE's routing, EXAONE 4.0's attention)
    hf_defaults=dict(vocab_size=102400, hidden_size=4096, intermediate_size=16384, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=53,
                     pad_token_id=0, sliding_window=4096, sliding_window_pattern=4, first_k_dense_replace=1,
                     moe_intermediate_size=1024, num_experts=64, num_experts_per_tok=8, num_shared_experts=1, norm_topk_prob=True,
                     routed_scaling_factor=2.5, n_group=1, topk_group=1),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "first_k_dense_replace", "moe_intermediate_size", "num_experts",
                             "num_experts_per_tok", "num_shared_experts", "norm_topk_prob", "routed_scaling_factor", "n_group",
                             "topk_group"),
    # layer 0 dense, 1 and 2 routed: 8 experts in 2 groups (top 2 from the best one) beside a shared one, scaled;
    # layers 0 and 2 sliding (window 8) with rotary positions, layer 1 full without; GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_theta=10000.0, tie_word_embeddings=False, sliding_window=8, sliding_window_pattern=2,
                     num_experts=8, num_experts_per_tok=2, num_shared_experts=1, n_group=2, topk_group=1,
                     routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
