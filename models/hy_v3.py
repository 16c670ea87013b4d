"""HY V3 (HYV3ForCausalLM, Tencent's Hy3): DeepSeek-V3's layer with Llama's attention in place of latent
attention. Differences from models/deepseek.py, each an option of the shared modules:

- attention: q/k/v/o projections (all biased where attention_bias), an RMSNorm of each q and k head before
  rotary positions on halves (Apertus' attention: `qk_norm` "per_head");
- MLP: dense on the layers mlp_layer_types calls "dense" (the first where it is left out), routed experts
  beside num_shared_experts ungated shared ones (one MLP moe_intermediate_size * num_shared_experts wide,
  intermediate_size where that is 0)
  on the "sparse" ones, MLP biases where mlp_bias (LlamaMLP's; the experts have none);
- router: sigmoid scores, the top k by score plus the score bias (no groups), the weights renormalised
  (their sum plus 1e-20) and times router_scaling_factor; router and score bias float32
  (_keep_in_fp32_modules_strict);
- the routed and shared outputs summed in float32 where enable_moe_fp32_combine (its default):
  `shared_expert_float32`.

Its checkpoints name the router mlp.router.gate, the score bias mlp.expert_bias and the shared experts
mlp.shared_mlp (transformers' conversion mapping renames them on loading); a multi-token-prediction layer 80,
which transformers does not read; neither do we."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config_fields import EXPERTS as EXPERT_COUNT
from jaxllm.models.config_fields import FLAG, NON_NEGATIVE, check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.transforms import Copy

# HY V3's own keys, typed as HYV3Config declares them
OWN_FIELDS = {"num_shared_experts": EXPERT_COUNT, "enable_moe_fp32_combine": FLAG, "router_scaling_factor": NON_NEGATIVE}


def hy_v3_names(raw: dict) -> dict:
    """The experts under num_local_experts (HYV3Config's attribute_map alias, which wins), else num_experts."""
    check_fields(raw, OWN_FIELDS, "config.json")
    return dict(raw, num_experts=raw["num_local_experts"]) if "num_local_experts" in raw else raw


def hy_v3_defaults(raw: dict) -> dict:
    experts, k = raw["num_experts"], raw["num_experts_per_tok"]
    if not experts:
        raise ConfigError(f"config.json num_experts={experts} leaves the sparse layers no experts (transformers' router "
                          "fails): give the checkpoint's num_experts")
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, 1)) if t == "dense")
    return dict(qk_norm="per_head", mlp_bias=bool(raw["mlp_bias"]), num_experts=experts, experts_per_token=k,
                moe_intermediate_size=raw["moe_intermediate_size"], dense_layers=dense,
                # HYV3MLP(intermediate_size=...) takes intermediate_size for a width of 0 (`or`)
                shared_expert_intermediate_size=raw["moe_intermediate_size"] * raw["num_shared_experts"] or raw["intermediate_size"],
                shared_expert_gated=False, shared_expert_float32=bool(raw["enable_moe_fp32_combine"]),
                router="sigmoid_topk", router_score_bias=True, router_float32=True, norm_topk_prob=True,
                router_norm_eps=1e-20, routed_scaling=float(raw["router_scaling_factor"]))


ARCHITECTURES = (Architecture(
    name="HYV3ForCausalLM", module=CausalLM, hf_model_type="hy_v3", config_defaults=hy_v3_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS, router="router.gate.weight", shared="shared_mlp",
                              score_bias=("expert_bias", Copy())),
    common_names=hy_v3_names, ignored_keys=NO_WINDOW,
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.80\."),
    # HYV3Config's field defaults (Hy3-preview's shapes; its rope base default_theta)
    hf_defaults=dict(vocab_size=120832, hidden_size=4096, intermediate_size=13312, num_hidden_layers=80, num_attention_heads=64,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                     rope_theta=11_158_840.0, attention_bias=False, mlp_bias=False, num_experts=192, num_experts_per_tok=8,
                     num_shared_experts=1, moe_intermediate_size=1536, router_scaling_factor=2.826,
                     enable_moe_fp32_combine=True),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "mlp_bias", "num_experts", "num_local_experts",
                             "num_experts_per_tok", "num_shared_experts", "moe_intermediate_size", "router_scaling_factor",
                             "enable_moe_fp32_combine"),
    # layer 0 dense, 1 and 2 routed: 6 experts, top 2, beside a shared one, scaled; GQA; q/k/v/o and MLP biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                     attention_bias=True, mlp_bias=True, num_experts=6, num_experts_per_tok=2, num_shared_experts=1,
                     router_scaling_factor=2.5, mlp_layer_types=["dense", "sparse", "sparse"], bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
