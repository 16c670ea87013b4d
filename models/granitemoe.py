"""IBM GraniteMoE (PowerMoE, granite-3.0 MoE) and GraniteMoeShared: Granite's decoder and its four
multipliers (models/granite.py) with routed experts in every layer. The router takes the top k
logits, then softmax over those k (`cfg.router` "topk_softmax"). GraniteMoeShared adds a gated MLP every
token runs (`shared_mlp`), its output added to the experts' without a gate, before the residual
multiplier.

The checkpoint keeps every expert in one tensor per block: input_linear [X, 2F, E] (gate rows, then
up rows: `chunk(2)` in transformers), output_linear [X, E, F], the router at router.layer; the
shared MLP's input_linear [2S, E] is gate then up as well."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import decoder_weight_map
from jaxllm.models.granite import MULTIPLIERS, GraniteForCausalLM, granite_defaults
from jaxllm.models.moe import fused_expert_specs
from jaxllm.models.transforms import Linear, Part
from jaxllm.models.weights import WeightSpec


def granitemoe_layout(router: str = "router.layer.weight", gate_up: str = "input_linear.weight", down: str = "output_linear.weight",
                      base=decoder_weight_map):
    """The weight map of Granite's MoE layers (every layer routed): the router at block_sparse_moe.`router`, every expert's
    gate | up rows in one [X, 2F, E] tensor `gate_up` and their down projections [X, E, F] `down` (GraniteMoE's
    input_linear / output_linear; Granite MoE SWA's experts.gate_up_proj / experts.down_proj), the shared MLP's
    (shared_mlp_specs) where the config has one; the rest as `base` names it."""
    def weight_map(cfg: ModelConfig) -> list[WeightSpec]:
        specs = [s for s in base(cfg) if ".mlp." not in s.hf_names[0]]
        f, s = cfg.intermediate_size, cfg.shared_expert_intermediate_size
        for i in range(cfg.num_layers):
            hf, ours = f"model.layers.{i}.", ("model", "layers", i, "mlp")
            block = hf + "block_sparse_moe."
            specs.append(WeightSpec(block + router, ours + ("gate", "kernel"), Linear()))
            specs += fused_expert_specs(block + gate_up, block + down, ours, f)
            if s:
                specs += shared_mlp_specs(hf + "shared_mlp.", ours + ("shared_expert",), s)
        return specs

    return weight_map


granitemoe_weight_map = granitemoe_layout()


def shared_mlp_specs(hf: str, ours: tuple, width: int) -> list[WeightSpec]:
    """A gated MLP `ours` read from GraniteMoeShared's shared_mlp at `hf`: input_linear [2S, E] (gate rows,
    then up rows; S = `width`), output_linear."""
    return [WeightSpec(hf + "input_linear.weight", ours + ("gate_proj", "kernel"), Part(0, 2 * width, Linear())),
            WeightSpec(hf + "input_linear.weight", ours + ("up_proj", "kernel"), Part(width, 2 * width, Linear())),
            WeightSpec(hf + "output_linear.weight", ours + ("down_proj", "kernel"), Linear())]


def granitemoe_defaults(raw: dict) -> dict:
    """Granite's multipliers; experts (GraniteMoeConfig's defaults in `raw`: 8, top 2) whose
    weights, a softmax over the k chosen, sum to 1; the shared MLP's width (0: none)."""
    return dict(granite_defaults(raw), mlp_bias=False, num_experts=raw["num_local_experts"],
                experts_per_token=raw["num_experts_per_tok"], router="topk_softmax", norm_topk_prob=True,
                shared_expert_intermediate_size=raw.get("shared_intermediate_size", 0), shared_expert_gated=False)


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
             num_local_experts=6, num_experts_per_tok=2, embedding_multiplier=3.0, residual_multiplier=0.6,
             attention_multiplier=0.1, logits_scaling=4.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
GRANITE_NOT_NULL = RMS_NOT_NULL + ("attention_bias", "head_dim") + MULTIPLIERS
_DEFAULTS = dict(num_local_experts=8, num_experts_per_tok=2)  # GraniteMoeConfig's (the multipliers' 1.0: granite_defaults)

ARCHITECTURES = (Architecture(
    name="GraniteMoeForCausalLM", module=GraniteForCausalLM, weight_map=granitemoe_weight_map, hf_model_type="granitemoe",
    ignored_keys=NO_WINDOW + ("shared_intermediate_size",), config_defaults=granitemoe_defaults, hf_defaults=_DEFAULTS,
    not_null=GRANITE_NOT_NULL,
    # 6 experts, top 2; GQA; tied (granite-3.0-1b-a400m); multipliers unlike 1 and unlike 1 / sqrt(head_dim)
    tiny_config=dict(TINY, tie_word_embeddings=True, attention_bias=False),
), Architecture(
    name="GraniteMoeSharedForCausalLM", module=GraniteForCausalLM, weight_map=granitemoe_weight_map,
    hf_model_type="granitemoeshared", ignored_keys=NO_WINDOW, config_defaults=granitemoe_defaults,
    hf_defaults=_DEFAULTS, not_null=GRANITE_NOT_NULL + ("shared_intermediate_size",),
    # the shared MLP wider than the experts; untied, attention biases
    tiny_config=dict(TINY, shared_intermediate_size=48, tie_word_embeddings=False, attention_bias=True),
))
