"""Llama 4 (Scout, Maverick), its text model: the shared decoder with config flags.

- Rotary positions on interleaved pairs, in float32 (rope_interleaved, rope_float32), on the layers
  no_rope_layers marks 1 (else every no_rope_layer_interval-th layer is NoPE); those rope layers
  attend within chunks of attention_chunk_size ("chunked_attention", attention.Chunked), the NoPE
  layers over everything.
- use_qk_norm: a weightless RMSNorm (L2 norm) of each q/k head after the rotation, rope layers only.
- attn_temperature_tuning: NoPE layers' queries times 1 + attn_scale * log(1 + floor((position + 1)
  / floor_scale)) (QueryScale), in float32.
- Routed experts on moe_layers (else every interleave_moe_layer_step-th layer): the top k router
  logits, each weight its sigmoid, which scales the expert's input (router_scales_input); an ungated
  shared expert as wide as the experts (intermediate_size); dense layers intermediate_size_mlp wide.
  The experts' checkpoint tensors are fused: gate_up_proj [X, E, 2F] (gate then up), down_proj [X, F, E].

Llama4ForConditionalGeneration's checkpoints hold this text model under language_model (Wrapper)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig, QueryScale
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.transforms import Copy, Linear, Part, Stacked
from jaxllm.models.weights import WeightSpec

LLAMA4_TYPES = ("full_attention", "chunked_attention")


def llama4_defaults(raw: dict) -> dict:
    n = raw["num_hidden_layers"]
    flags = raw.get("no_rope_layers") or [int((i + 1) % raw["no_rope_layer_interval"] != 0) for i in range(n)]
    if len(flags) < n:
        raise ConfigError(f"config.json no_rope_layers has {len(flags)} entries for {n} layers: give one per layer "
                          "(1: the layer uses rotary positions, 0: it uses none)")
    rope_layers = tuple(i for i in range(n) if flags[i])
    nope = tuple(i for i in range(n) if not flags[i])
    chunk = raw.get("attention_chunk_size")
    types = raw.get("layer_types") or ["chunked_attention" if flags[i] and chunk is not None else "full_attention"
                                       for i in range(n)]
    for t in types:
        if t not in LLAMA4_TYPES:
            raise ConfigError(f"config.json layer type '{t}' is not one Llama4ForCausalLM runs: use {' or '.join(LLAMA4_TYPES)}")
    step = raw["interleave_moe_layer_step"]
    moe = raw.get("moe_layers")
    if moe is None:
        if step == 0:
            raise ConfigError("config.json interleave_moe_layer_step is 0 (transformers fails on it): set it to 1 for "
                              "experts in every layer, n for every n-th, or list the layers in moe_layers")
        moe = range(step - 1, n, step)
    out = dict(
        qkv_bias=bool(raw.get("attention_bias")), o_bias=bool(raw.get("attention_bias")), mlp_bias=False,
        nope_layers=nope, layer_types=tuple(types), attention_chunk=chunk, rope_interleaved=True, rope_float32=True,
        qk_norm="l2" if raw["use_qk_norm"] else "none", qk_norm_after_rope=True, qk_norm_layers=rope_layers,
        intermediate_size=raw["intermediate_size_mlp"], moe_intermediate_size=raw["intermediate_size"],
        num_experts=raw["num_local_experts"], experts_per_token=raw["num_experts_per_tok"], router="topk_sigmoid",
        router_scales_input=True, norm_topk_prob=False, dense_layers=tuple(i for i in range(n) if i not in set(moe)),
        shared_expert_intermediate_size=raw["intermediate_size"], shared_expert_gated=False,
    )
    if raw["attn_temperature_tuning"]:
        out.update(query_scale=QueryScale(float(raw["attn_scale"]), float(raw["floor_scale"]), offset=1, in_float32=True),
                   query_scale_layers=nope)
    return out


def llama4_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """decoder_weight_map with the MLPs under feed_forward; each MoE layer's router, fused experts and shared expert."""
    specs = [s for s in decoder_weight_map(cfg) if not (".mlp." in s.hf_name and cfg.layer_is_moe(s.path[2]))]
    f = cfg.moe_intermediate_size
    for i in range(cfg.num_layers):
        if not cfg.layer_is_moe(i):
            continue
        hf, ours = f"model.layers.{i}.mlp.", ("model", "layers", i, "mlp")
        specs += [
            WeightSpec(hf + "router.weight", ours + ("gate", "kernel"), Linear()),
            WeightSpec(hf + "experts.gate_up_proj", ours + ("gate_proj",), Stacked(Part(0, 2 * f, Copy(), axis=1))),
            WeightSpec(hf + "experts.gate_up_proj", ours + ("up_proj",), Stacked(Part(f, 2 * f, Copy(), axis=1))),
            WeightSpec(hf + "experts.down_proj", ours + ("down_proj",), Copy()),
        ]
        specs += [WeightSpec(f"{hf}shared_expert.{name}.weight", ours + ("shared_expert", name, "kernel"), Linear())
                  for name in ("gate_proj", "up_proj", "down_proj")]
    return renamed(specs, {"mlp": "feed_forward"})


# Llama4TextConfig's field defaults (Llama-4-Scout's shapes and routing)
_DEFAULTS = dict(intermediate_size_mlp=16384, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                 rms_norm_eps=1e-5, rope_theta=500000.0, num_experts_per_tok=1, num_local_experts=16, interleave_moe_layer_step=1,
                 use_qk_norm=True, no_rope_layer_interval=4, attention_chunk_size=8192, attn_temperature_tuning=True,
                 floor_scale=8192, attn_scale=0.1)
# its multimodal wrapper: Llama4Config's text_config (Llama4TextConfig whatever its model_type), vision model and projector
WRAPPER = Wrapper(name="Llama4ForConditionalGeneration", model_type="llama4", text_model_type="llama4_text",
                  other_modules=("vision_model", "multi_modal_projector"))

ARCHITECTURES = (Architecture(
    name="Llama4ForCausalLM", module=CausalLM, weight_map=llama4_weight_map, hf_model_type="llama4_text",
    ignored_keys=("sliding_window", "use_sliding_window"), config_defaults=llama4_defaults, hf_defaults=_DEFAULTS,
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "intermediate_size_mlp", "num_local_experts",
                             "num_experts_per_tok", "interleave_moe_layer_step", "use_qk_norm", "no_rope_layer_interval",
                             "attn_temperature_tuning", "floor_scale", "attn_scale"),
    wrappers=(WRAPPER,),
    # layers 0, 2 rope + chunked (chunks of 8 within the 20 tokens), 1 NoPE + full with temperature tuning (a floor of 4
    # so it steps); layer 1 routed (4 experts, top 2), 0 and 2 dense; L2 q/k norms; q/k/v/o biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_theta=10000.0, tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2,
                     interleave_moe_layer_step=2, no_rope_layers=[1, 0, 1], attention_chunk_size=8, use_qk_norm=True,
                     attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1, attention_bias=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
