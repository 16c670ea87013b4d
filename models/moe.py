"""Mixture-of-experts decoders: Mixtral (Mistral with routed experts), Qwen3-MoE (Qwen3 with
routed experts, optional top-k renormalisation, and dense layers where the config asks) and
Qwen2-MoE (Qwen2's attention, Qwen3-MoE's routing and a gated shared expert beside the experts).

The module is the shared decoder's: `make_mlp` gives a layer the routed `MoE` block of
models/experts.py when `cfg.layer_is_moe(layer)`. What is particular here is reading the config
and mapping the per-expert checkpoint tensors onto the stacked [expert, ...] kernels.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, decoder_weight_map, dense
from jaxllm.models.llama import NO_BIAS, mrope_as_rope
from jaxllm.models.transforms import Copy, Linear, Part, Stack, Stacked, Transpose
from jaxllm.models.weights import WeightSpec, split_experts


def moe_weight_map(block: str, names: dict, base=decoder_weight_map, router: str = "gate.weight", shared: str = "shared_expert",
                   score_bias: tuple = ("gate.e_score_correction_bias", Copy()), fused: bool = False):
    """A weight map for MoE checkpoints whose layer i keeps its router at `{block}.{router}`
    (HunYuan: gate.wg.weight), expert j's matrices at `{block}.experts.{j}.{names[ours]}`, the rest as
    `base` names them; a shared expert at `{block}.{shared}.*_proj` (Qwen2-MoE's shared_expert, with
    its gate shared_expert_gate; ERNIE's shared_experts, HunYuan's shared_mlp, ungated; their biases
    where mlp_bias) and the router's score bias (DeepSeek-V3's, ERNIE 4.5 MoE's e_score_correction_bias)
    at `{block}.{score_bias[0]}`, read by its transform (ERNIE: moe_statics.e_score_correction_bias,
    [1, X]: Copy(lead=1)); `fused`: the experts as transformers 5 holds them, `{block}.experts.gate_up_proj` and
    `{block}.experts.down_proj` (fused_expert_specs: LaraMini's checkpoints)."""

    def weight_map(cfg: ModelConfig) -> list[WeightSpec]:
        specs = []
        for spec in base(cfg):
            parts = spec.hf_names[0].split(".")
            if not (parts[1] == "layers" and parts[3] == "mlp" and cfg.layer_is_moe(int(parts[2]))):
                specs.append(spec)
        for i in range(cfg.num_layers):
            if not cfg.layer_is_moe(i):
                continue
            hf, ours = f"model.layers.{i}.{block}.", ("model", "layers", i, "mlp")
            for name in ("fc1_latent_proj", "fc2_latent_proj") if cfg.moe_latent_size else ():  # Nemotron-H's latent experts
                specs += dense(hf + name, ours + (name,), bias=cfg.mlp_bias)
            specs.append(WeightSpec(hf + router, ours + ("gate", "kernel"), Linear()))
            if cfg.router_score_bias:
                specs.append(WeightSpec(hf + score_bias[0], ours + ("e_score_correction_bias",), score_bias[1]))
            if fused:
                specs += fused_expert_specs(hf + "experts.gate_up_proj", hf + "experts.down_proj", ours, cfg.moe_intermediate_size)
            for name, theirs in () if fused else names.items():
                experts = tuple(f"{hf}experts.{j}.{theirs}.weight" for j in range(cfg.num_experts))
                specs.append(WeightSpec(experts, ours + (name,), Stack(Transpose(1))))
            if cfg.shared_expert_intermediate_size:
                for name in ("gate_proj", "up_proj", "down_proj")[not cfg.gated_mlp:]:  # ungated: up and down (Nemotron-H)
                    specs += dense(f"{hf}{shared}.{name}", ours + ("shared_expert", name), bias=cfg.mlp_bias)
                if cfg.shared_expert_gated:
                    specs.append(WeightSpec(hf + "shared_expert_gate.weight", ours + ("shared_expert_gate", "kernel"), Linear()))
        return specs

    return weight_map


def empty_shared(shared: str):
    """`ignore_for` of a family whose checkpoints keep a shared MLP of no width (its empty tensors at
    mlp.{shared}.*, adding nothing) where the config gives its shared experts a width of 0 (AFMoE)."""
    return lambda cfg: () if cfg.shared_expert_intermediate_size else (rf".*\.mlp\.{shared}\.",)


def fused_expert_specs(gate_up: str, down: str, ours: tuple, width: int) -> list[WeightSpec]:
    """An MoE block's expert stacks `ours` + (gate_proj / up_proj / down_proj) out of one checkpoint
    tensor [X, 2F, E] of every expert's gate rows then up rows (`gate_up`, F = `width`) and one
    [X, E, F] of their down projections (`down`): GraniteMoE's input_linear, Gemma 4's gate_up_proj."""
    return [WeightSpec(gate_up, ours + ("gate_proj",), Stacked(Part(0, 2 * width, Transpose(1)))),
            WeightSpec(gate_up, ours + ("up_proj",), Stacked(Part(width, 2 * width, Transpose(1)))),
            WeightSpec(down, ours + ("down_proj",), Stacked(Transpose(1)))]


def _experts(raw: dict, default: int) -> int:
    """The number of experts, under either name (transformers' MixtralConfig and Qwen3MoeConfig map
    num_experts onto num_local_experts), or the config class's default."""
    return raw.get("num_local_experts", raw.get("num_experts", default))


def mixtral_defaults(raw: dict) -> dict:
    return dict(NO_BIAS, num_experts=_experts(raw, 8), experts_per_token=raw.get("num_experts_per_tok", 2))


def dense_layers(raw: dict, experts: int) -> tuple[int, ...]:
    """The layers Qwen2/3-MoE give a dense MLP: those mlp_only_layers names, and every layer i with
    (i + 1) % decoder_sparse_step != 0 (all of them without experts), as their decoder layers choose."""
    only, step = set(raw.get("mlp_only_layers") or ()), raw.get("decoder_sparse_step", 1)
    routed = [i for i in range(raw["num_hidden_layers"]) if i not in only and experts > 0]
    if routed and step == 0:
        raise ConfigError("config.json decoder_sparse_step is 0, which leaves no layer a step (transformers fails "
                          "dividing by it): set it to 1 for experts in every layer, n for every n-th")
    return tuple(i for i in range(raw["num_hidden_layers"]) if i not in routed or (i + 1) % step)


def qwen3_moe_defaults(raw: dict) -> dict:
    """What Qwen3MoeConfig assumes for keys left out: 128 experts, top 8, 768 wide, every layer routed."""
    experts = _experts(raw, 128)
    return dict(
        qk_norm="per_head", mlp_bias=False, num_experts=experts, experts_per_token=raw.get("num_experts_per_tok", 8),
        moe_intermediate_size=raw.get("moe_intermediate_size", 768), norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
        dense_layers=dense_layers(raw, experts),
    )  # use_sliding_window puts the window on every layer here (transformers has no max_window_layers for it)


def qwen2_moe_defaults(raw: dict) -> dict:
    """Qwen2-MoE's flags, its config class's defaults already in `raw` (hf_defaults): q/k/v biases as
    qkv_bias says (attention_bias it never reads), the routed experts and the shared one, and its
    windows: with use_sliding_window and no layer_types, layers 0, 2, 4, ... below max_window_layers
    (Qwen2MoeConfig's reading, not Qwen2's layers from max_window_layers on)."""
    if raw["use_sliding_window"] and raw["sliding_window"] is None:
        raise ConfigError("config.json sets use_sliding_window but its sliding_window is null (transformers' Qwen2-MoE "
                          "then fails building its masks): give sliding_window a value, or set use_sliding_window to false")
    window = {}
    if raw["use_sliding_window"] and not raw.get("layer_types"):
        below = raw["max_window_layers"]
        window["layer_types"] = tuple("sliding_attention" if i % 2 == 0 and i < below else "full_attention"
                                      for i in range(raw["num_hidden_layers"]))
    return dict(
        qkv_bias=raw["qkv_bias"], o_bias=False, mlp_bias=False, num_experts=raw["num_experts"],
        experts_per_token=raw["num_experts_per_tok"], moe_intermediate_size=raw["moe_intermediate_size"],
        norm_topk_prob=raw["norm_topk_prob"], dense_layers=dense_layers(raw, raw["num_experts"]),
        shared_expert_intermediate_size=raw["shared_expert_intermediate_size"], **window,
    )


# Qwen3-VL-MoE: Qwen3-MoE's layers (top-k weights always renormalised, no window) under interleaved M-RoPE, its
# experts fused in the checkpoint (split_experts); Qwen3VLMoeConfig ties the head by its top-level tie_word_embeddings
# alone (false where left out); Qwen3VLMoeTextConfig's defaults
QWEN3_VL_MOE = Wrapper(name="Qwen3VLMoeForConditionalGeneration", model_type="qwen3_vl_moe", text_model_type="qwen3_moe",
                       other_modules=("visual",), top_level=dict(tie_word_embeddings=False), tensors=split_experts,
                       text_overrides=dict(norm_topk_prob=True, use_sliding_window=False, layer_types=None),
                       text_defaults={"qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                                                        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                                                        max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=500000.0,
                                                        attention_bias=False, num_experts=60, num_experts_per_tok=4,
                                                        moe_intermediate_size=1408)},
                       edit=lambda text: mrope_as_rope(text, split=False))

_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)

ARCHITECTURES = (Architecture(
    name="MixtralForCausalLM", module=CausalLM, hf_model_type="mixtral", config_defaults=mixtral_defaults,
    ignored_keys=("layer_types",) + NO_WINDOW_SWITCH,  # its window (sliding_window) is every layer's
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "num_experts"),
    hf_defaults=dict(rope_theta=1_000_000.0, rms_norm_eps=1e-5, num_key_value_heads=8, max_position_embeddings=131072),
    weight_map=moe_weight_map("block_sparse_moe", {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}),
    tiny_config=dict(_TINY, num_local_experts=4, num_experts_per_tok=2, sliding_window=8, rope_theta=10000.0),
), Architecture(
    name="Qwen3MoeForCausalLM", module=CausalLM, hf_model_type="qwen3_moe", config_defaults=qwen3_moe_defaults,
    ignored_keys=("layer_types",),
    hf_defaults=dict(use_sliding_window=False, sliding_window=4096, num_key_value_heads=4, max_position_embeddings=32768),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "use_sliding_window", "moe_intermediate_size",
                             "norm_topk_prob", "decoder_sparse_step", "num_experts"),
    weight_map=moe_weight_map("mlp", {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}), wrappers=(QWEN3_VL_MOE,),
    # Layer 1 dense (mlp_only_layers), top-k weights not renormalised: both paths of the family.
    tiny_config=dict(_TINY, head_dim=32, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                     norm_topk_prob=False, mlp_only_layers=[1], decoder_sparse_step=1, rope_theta=1000000.0),
), Architecture(
    name="Qwen2MoeForCausalLM", module=CausalLM, hf_model_type="qwen2_moe", config_defaults=qwen2_moe_defaults,
    ignored_keys=("num_local_experts",),  # Mixtral's spelling: Qwen2MoeConfig has no attribute_map for it
    # Qwen2MoeConfig's field defaults (Qwen1.5-MoE-A2.7B's shapes)
    hf_defaults=dict(use_sliding_window=False, sliding_window=4096, max_window_layers=28, num_key_value_heads=16,
                     max_position_embeddings=32768, num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
                     shared_expert_intermediate_size=5632, norm_topk_prob=False, qkv_bias=True),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "use_sliding_window", "moe_intermediate_size", "norm_topk_prob",
                             "decoder_sparse_step", "shared_expert_intermediate_size", "qkv_bias", "num_experts"),
    weight_map=moe_weight_map("mlp", {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}),
    # Layer 1 dense; layers 0 and 2 routed, with a shared expert, and windowed (use_sliding_window:
    # the even layers below max_window_layers); q/k/v biases; top-k weights not renormalised.
    tiny_config=dict(_TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                     norm_topk_prob=False, mlp_only_layers=[1], decoder_sparse_step=1, use_sliding_window=True,
                     sliding_window=8, max_window_layers=3, qkv_bias=True, rope_theta=1000000.0),
))
