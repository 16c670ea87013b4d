"""AFMoE (AfmoeForCausalLM, Arcee's Trinity): Gemma 2's sandwich layer (models/gemma.py: norms before and after
attention and the MLP; the MLP's named pre_mlp_layernorm / post_mlp_layernorm) with DeepSeek-V3's experts, every
difference an option of the shared modules:

- attention: an RMSNorm of each q and k head, rotary positions on the sliding-window layers alone (the full ones
  NoPE: `nope_layers`), the output times sigmoid(gate_proj(x)) before o_proj (`attn_output_gate`, no bias:
  `attn_gate_bias`); layer_types from global_attn_every_n_layers where left out (every n-th layer full);
- norms: GPT-oss's RMSNorm, the weight applied in float32 before the cast (`norm_upcast_scale`);
- MLP: dense in the first num_dense_layers layers, then routed experts beside num_shared_experts ungated shared
  ones (one MLP moe_intermediate_size * num_shared_experts wide, none for 0): sigmoid scores, the top k by score
  plus expert_bias, renormalised (their sum plus 1e-20), times route_scale;
- embeddings times sqrt(hidden_size) where mup_enabled (`embed_scale`, in float32).

Its checkpoints name the router mlp.router.gate and the score bias mlp.expert_bias."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, FLAG, INDEX, NON_NEGATIVE, check_fields
from jaxllm.models.decoder import renamed
from jaxllm.models.deepseek import EXPERTS
from jaxllm.models.gemma import Gemma2ForCausalLM, sandwich_weight_map
from jaxllm.models.moe import empty_shared, moe_weight_map
from jaxllm.models.transforms import Copy, Linear
from jaxllm.models.weights import WeightSpec

OWN_FIELDS = {"num_dense_layers": INDEX, "num_shared_experts": INDEX, "route_scale": NON_NEGATIVE,
              "global_attn_every_n_layers": COUNT, "mup_enabled": FLAG}
MLP_NORMS = {"pre_feedforward_layernorm": "pre_mlp_layernorm", "post_feedforward_layernorm": "post_mlp_layernorm"}


def afmoe_names(raw: dict) -> dict:
    """layer_types as AfmoeConfig builds them where left out: full every global_attn_every_n_layers-th layer."""
    check_fields(raw, OWN_FIELDS, "config.json")
    if raw.get("layer_types") is not None or raw.get("num_hidden_layers") is None:  # no layers: require_fields refuses it
        return raw
    n = raw.get("global_attn_every_n_layers")
    if n is None:
        raise ConfigError("config.json has neither layer_types nor global_attn_every_n_layers, from which transformers' "
                          "AfmoeConfig builds them (it fails on the null): give one of them")
    return dict(raw, layer_types=["sliding_attention" if (i + 1) % n else "full_attention" for i in range(raw["num_hidden_layers"])])


def afmoe_defaults(raw: dict) -> dict:
    experts, layers = raw["num_experts"], raw["num_hidden_layers"]
    moe = raw["num_dense_layers"] < layers
    if moe and not experts:
        raise ConfigError(f"config.json num_experts={experts} leaves the MoE layers no experts (transformers' router fails): "
                          "give the checkpoint's num_experts")
    full = tuple(i for i, t in enumerate(raw["layer_types"]) if t == "full_attention")
    return dict(
        qk_norm="per_head", attn_output_gate=True, attn_gate_bias=False, mlp_bias=False, norm_upcast_scale=True, nope_layers=full,
        embed_scale=raw["hidden_size"] ** 0.5 if raw.get("mup_enabled") else 1.0, embed_scale_exact=True,
        num_experts=experts if moe else 0, experts_per_token=raw["num_experts_per_tok"], moe_intermediate_size=raw["moe_intermediate_size"],
        dense_layers=tuple(range(min(raw["num_dense_layers"], layers))),
        shared_expert_intermediate_size=raw["moe_intermediate_size"] * raw["num_shared_experts"], shared_expert_gated=False,
        router="sigmoid_topk", router_score_bias=True, norm_topk_prob=True, router_norm_eps=1e-20,
        routed_scaling=float(raw["route_scale"]),
    )


def _base(cfg: ModelConfig) -> list[WeightSpec]:
    """Gemma 2's sandwich map, the MLP's norms by AFMoE's names, each attention's output gate."""
    return renamed(sandwich_weight_map(cfg), MLP_NORMS) + [
        WeightSpec(f"model.layers.{i}.self_attn.gate_proj.weight", ("model", "layers", i, "self_attn", "gate_proj", "kernel"), Linear())
        for i in range(cfg.num_layers)]


ARCHITECTURES = (Architecture(
    name="AfmoeForCausalLM", module=Gemma2ForCausalLM, hf_model_type="afmoe", config_defaults=afmoe_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS, base=_base, router="router.gate.weight", shared="shared_experts",
                              score_bias=("expert_bias", Copy())),
    common_names=afmoe_names, ignored_keys=("use_sliding_window", "mlp_bias"), ignore_for=empty_shared("shared_experts"),
    # AfmoeConfig's field defaults (Trinity-Mini's shapes); num_key_value_heads null or left out: one per head
    hf_defaults=dict(vocab_size=200192, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=1408,
                     num_hidden_layers=32, num_dense_layers=1, num_attention_heads=16, head_dim=128, max_position_embeddings=16384,
                     rms_norm_eps=1e-5, num_experts=64, num_experts_per_tok=6, num_shared_experts=2, route_scale=1.0,
                     global_attn_every_n_layers=4, sliding_window=1024, mup_enabled=False, attention_bias=False),
    not_null=RMS_NOT_NULL + ("head_dim", "moe_intermediate_size", "num_dense_layers", "num_experts", "num_experts_per_tok", "num_shared_experts",
                             "route_scale", "attention_bias"),
    # layer 0 dense, 1 and 2 routed: 6 experts, top 2, beside a shared one, scaled; layers 0 and 1 sliding (window 8) with
    # rotary positions, layer 2 full without; GQA; embeddings scaled (mup_enabled)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_dense_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                     rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                     num_experts=6, num_experts_per_tok=2, num_shared_experts=1, route_scale=2.0, global_attn_every_n_layers=3,
                     sliding_window=8, mup_enabled=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
