"""gpt-oss (OpenAI gpt-oss-20b / 120b): the shared decoder with attention sinks, q/k/v/o biases,
sliding-window and full layers alternating, YaRN rope, and routed experts of its own kind.

What differs from the closest family (Mixtral), each traced to transformers' modeling_gpt_oss.py:
- GptOssAttention: `sinks` [H], one learned logit per query head concatenated to the scores
  before the softmax and dropped after it (eager_attention_forward): `cfg.attn_sinks`,
  AttnSpec.sinks, which every attention path of models/attention_ops.py, paged_decode.py takes.
- q/k/v/o biases (attention_bias, true by default); layer_types alternate sliding (even layers)
  and full (GptOssConfig.__post_init__); RMSNorm applies its weight in float32 before the cast.
- GptOssTopKRouter: a Linear with bias; top k of the logits, softmax over those k.
- GptOssExperts: gate_up_proj [X, E, 2F] with gate and up interleaved (even / odd columns) and a
  bias [X, 2F]; the clamped SwiGLU (`_apply_gate`); down_proj [X, F, E] with a bias [X, E]. Read
  into the shared MoE block's separate gate / up stacks (`Strided`), its config flags on.
- Checkpoints on the Hub store the expert weights as MXFP4 (`*_blocks`, `*_scales`, config.json
  quantization_config quant_method "mxfp4"): dequantized to floats as they load
  (mxfp4.mxfp4_names); `convert --to-hf` writes them back as floats.
"""

from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, decoder_weight_map
from jaxllm.models.transforms import Copy, Linear, Strided
from jaxllm.models.weights import WeightSpec


def gpt_oss_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """The Llama naming for embeddings, norms and attention (with biases and sinks), plus each layer's
    router (mlp.router) and fused experts (mlp.experts.*)."""
    specs = [s for s in decoder_weight_map(cfg) if ".mlp." not in s.hf_names[0]]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        moe = ours + ("mlp",)
        specs += [
            WeightSpec(hf + "mlp.router.weight", moe + ("gate", "kernel"), Linear()),
            WeightSpec(hf + "mlp.router.bias", moe + ("gate", "bias")),
        ]
        for name, part in (("gate_proj", Strided(0, 2)), ("up_proj", Strided(1, 2))):
            specs.append(WeightSpec(hf + "mlp.experts.gate_up_proj", moe + (name,), part))
            specs.append(WeightSpec(hf + "mlp.experts.gate_up_proj_bias", moe + (name + "_bias",), part))
        specs.append(WeightSpec(hf + "mlp.experts.down_proj", moe + ("down_proj",), Copy()))
        specs.append(WeightSpec(hf + "mlp.experts.down_proj_bias", moe + ("down_proj_bias",), Copy()))
    return specs


def gpt_oss_defaults(raw: dict) -> dict:
    """The flags GptOssForCausalLM hard-wires: sinks, routed experts in every layer with biases,
    top-k-then-softmax routing and the clamped SwiGLU; its RMSNorm scales in float32; no MLP
    bias flag (the experts' biases are always there), one attention_bias for q/k/v and o."""
    bias = bool(raw["attention_bias"])
    return dict(
        attn_sinks=True, qkv_bias=bias, o_bias=bias, mlp_bias=False, norm_upcast_scale=True,
        hidden_act="silu",  # never read by transformers' gpt-oss (its clamped SwiGLU is fixed), "" and all
        num_experts=raw["num_local_experts"], experts_per_token=raw["num_experts_per_tok"],
        moe_intermediate_size=raw["intermediate_size"], router_bias=True, router="topk_softmax", expert_bias=True,
        swiglu_limit=float(raw["swiglu_limit"]), swiglu_alpha=float(raw["swiglu_alpha"]),
        layer_types=tuple(raw.get("layer_types") or ("sliding_attention" if i % 2 == 0 else "full_attention"
                                                      for i in range(raw["num_hidden_layers"]))),
    )


def gpt_oss_names(raw: dict) -> dict:
    """config.json as GptOssConfig reads it: num_experts is num_local_experts (its attribute_map),
    and null rope settings (rope_parameters, with no rope_scaling) are its default YaRN, as
    __post_init__ fills them, not plain rope."""
    if "num_local_experts" not in raw:  # else the class's 128
        raw = dict(raw, num_local_experts=raw["num_experts"] if raw.get("num_experts") is not None else 128)
    if raw.get("rope_parameters") is None and not raw.get("rope_scaling"):
        raw = dict(raw, rope_parameters=GPT_OSS_DEFAULTS["rope_parameters"])
    return raw


# GptOssConfig's field defaults (gpt-oss-120b's shapes; num_local_experts' 128 in gpt_oss_names), its default rope
# (YaRN x32 from 4,096 positions, not truncated) and default_theta
GPT_OSS_DEFAULTS = dict(
    num_hidden_layers=36, vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
    num_attention_heads=64, num_key_value_heads=8, sliding_window=128, tie_word_embeddings=False, hidden_act="silu",
    max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=4, swiglu_alpha=1.702, swiglu_limit=7.0,
    attention_bias=True, rope_theta=150000.0,
    rope_parameters=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                         original_max_position_embeddings=4096),
)

ARCHITECTURES = (Architecture(
    name="GptOssForCausalLM", module=CausalLM, weight_map=gpt_oss_weight_map, hf_model_type="gpt_oss",
    config_defaults=gpt_oss_defaults, common_names=gpt_oss_names, hf_defaults=GPT_OSS_DEFAULTS,
    ignored_keys=("use_sliding_window", "mlp_bias", "norm_topk_prob"),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "num_local_experts", "num_experts", "num_experts_per_tok",
                             "intermediate_size", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                             "original_max_position_embeddings"),  # null: its YaRN rope fails in transformers
    # sinks, sliding / full alternation (window 8), biases, 4 experts top 2, GQA, YaRN (not
    # truncated, as the Hub's); a SwiGLU limit of 1 so that the clamps bite on the test's weights
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                     tie_word_embeddings=False, sliding_window=8, num_local_experts=4, num_experts_per_tok=2,
                     swiglu_limit=1.0, attention_bias=True,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                     rope_parameters=dict(rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                                          original_max_position_embeddings=64, rope_theta=150000.0)),
),)
