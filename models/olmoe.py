"""OLMoE: the shared decoder (pre-norm, as Llama) with q/k RMSNorm over the whole projection, as
OLMo 2's but Llama's RMSNorm (the scale applied after the cast back), and routed experts in every
layer: softmax over all experts, the top k, renormalised when norm_topk_prob (Qwen2-MoE's router).

Its checkpoints keep each expert's matrices apart (mlp.experts.{j}.gate_proj, ...), the router at
mlp.gate: Qwen3-MoE's names, so its weight map. clip_qkv (null on the Hub's OLMoE checkpoints)
clamps q, k and v after the q/k norms (the shared attention's option, as OLMo's)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.olmo import clip_qkv

EXPERTS = {name: name for name in ("gate_proj", "up_proj", "down_proj")}


def olmoe_defaults(raw: dict) -> dict:
    heads, hidden = raw["num_attention_heads"], raw["hidden_size"]
    if raw.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        raise ConfigError(f"config.json head_dim {raw.get('head_dim')} with hidden_size {hidden} and {heads} heads: OLMoE's "
                          "q_norm spans hidden_size, so num_attention_heads x head_dim must equal hidden_size: correct them")
    return dict(qk_norm="projection", mlp_bias=False, num_experts=raw.get("num_local_experts", raw["num_experts"]),
                experts_per_token=raw["num_experts_per_tok"], norm_topk_prob=raw["norm_topk_prob"],
                clip_qkv=clip_qkv(raw))


ARCHITECTURES = (Architecture(
    name="OlmoeForCausalLM", module=CausalLM, hf_model_type="olmoe", config_defaults=olmoe_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS), ignored_keys=NO_WINDOW,  # its masks are causal, no window
    # OlmoeConfig's field defaults (OLMoE-1B-7B's routing)
    hf_defaults=dict(rms_norm_eps=1e-5, max_position_embeddings=4096, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
                     pad_token_id=1, eos_token_id=50279),
    not_null=RMS_NOT_NULL + ("attention_bias", "norm_topk_prob", "head_dim", "num_experts"),
    # 6 experts, top 2, renormalised (Qwen3-MoE's tiny config takes the other path); GQA; q/k/v/o biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                     attention_bias=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
