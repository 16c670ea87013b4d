"""MiniMax-Text-01 (MiniMaxForCausalLM; transformers' modeling_minimax.py): Mixtral's decoder whose
layers mix tokens by softmax attention or by lightning attention (models/lightning_attention.py, a
recurrent mixer: a state per sequence, no keys; no prefix cache: docs/architecture.md).

- layer types "full_attention" / "linear_attention" (read as our "lightning_attention"), by default
  alternating from a full one; full layers windowed where sliding_window is set (its mask then every
  full layer's);
- Mixtral's attention (GQA, no biases, rope of base 1e6 by default) and routed experts in every layer
  (softmax, top k renormalised; block_sparse_moe.experts.{j}.w1 / w3 / w2);
- its layer's residuals start from the normed input, each weighted: h = norm1(x), h = norm2(h * alpha +
  mix(h) * beta), out = h * mlp_alpha + mlp(h) * mlp_beta, alpha and beta of the layer's kind
  (full_attn_*, linear_attn_*, mlp_* factors: ModelConfig.residual_factors).
"""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, DecoderLayer, dense
from jaxllm.models.moe import mixtral_defaults, moe_weight_map
from jaxllm.models.transforms import Copy, Linear
from jaxllm.models.weights import WeightSpec

TYPES = ("full_attention", "linear_attention")


class MiniMaxDecoderLayer(DecoderLayer):
    """The shared layer's modules under MiniMax's residuals (module docstring)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        full_a, full_b, linear_a, linear_b, self.mlp_alpha, self.mlp_beta = cfg.residual_factors
        self.alpha, self.beta = (linear_a, linear_b) if cfg.layer_is_recurrent(layer) else (full_a, full_b)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        h = self.input_layernorm(x)
        out, cache = self.mix(h, positions, rot, cache, kv)
        h = self.post_attention_layernorm(h * self.alpha + out * self.beta)
        return h * self.mlp_alpha + self.mlp(h) * self.mlp_beta, cache


class MiniMaxForCausalLM(CausalLM):
    layer_cls = MiniMaxDecoderLayer


def minimax_names(raw: dict) -> dict:
    """The experts under num_experts (MiniMaxConfig's attribute_map alias, which wins), else num_local_experts."""
    return dict(raw, num_local_experts=raw["num_experts"] if "num_experts" in raw else raw.get("num_local_experts", 8))


def minimax_defaults(raw: dict) -> dict:
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % 2 else "linear_attention"
                                       for i in range(raw["num_hidden_layers"])]
    full = "sliding_attention" if raw.get("sliding_window") is not None else "full_attention"
    types = tuple({"linear_attention": "lightning_attention", "full_attention": full}[t]
                  for t in known_layer_types(types, TYPES, "MiniMax", "transformers has no mask for it"))
    factors = tuple(float(raw[f"{part}_{ab}_factor"]) for part in ("full_attn", "linear_attn", "mlp") for ab in ("alpha", "beta"))
    return dict(mixtral_defaults(raw), layer_types=types, recurrent_kinds=("lightning_attention",), residual_factors=factors)


_experts = moe_weight_map("block_sparse_moe", {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"})


def minimax_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Mixtral's map (no attention tensors on the lightning layers), theirs added."""
    specs = _experts(cfg)
    for i in filter(cfg.layer_is_recurrent, range(cfg.num_layers)):
        hf, ours = f"model.layers.{i}.self_attn.", ("model", "layers", i, "self_attn")
        specs += dense(hf + "qkv_proj", ours + ("qkv_proj",), bias=False)
        specs += dense(hf + "output_gate", ours + ("output_gate",), bias=False)
        specs += dense(hf + "out_proj", ours + ("out_proj",), Linear(2), bias=False)
        specs.append(WeightSpec(hf + "norm.weight", ours + ("norm", "weight"), Copy(flatten=True)))
    return specs


# MiniMaxConfig's field defaults (its rope base default_theta)
_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 bos_token_id=1, eos_token_id=2, rope_theta=1_000_000.0, num_experts_per_tok=2, block_size=256,
                 **{f"{part}_{ab}_factor": 1 for part in ("full_attn", "linear_attn", "mlp") for ab in ("alpha", "beta")})

ARCHITECTURES = (Architecture(
    name="MiniMaxForCausalLM", module=MiniMaxForCausalLM, hf_model_type="minimax", weight_map=minimax_weight_map,
    config_defaults=minimax_defaults, common_names=minimax_names, hf_defaults=_DEFAULTS,
    # its attention and experts have no biases whatever these say; Hub keys of MiniMax's own code transformers never reads
    ignored_keys=("attention_bias", "mlp_bias", "rotary_dim", "attn_type_list", "postnorm") + NO_WINDOW_SWITCH,
    # the lightning layers' decay tables, buffers transformers saves and recomputes from the layer's place
    ignore=(r".*rotary_emb\.inv_freq$", r".*self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$"),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "num_experts_per_tok", "num_local_experts", "num_experts", "block_size")
    + tuple(f"{part}_{ab}_factor" for part in ("full_attn", "linear_attn", "mlp") for ab in ("alpha", "beta")),
    # full, lightning, full, lightning; GQA; 4 experts, top 2; a window of 8 on the full layers; residual factors
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                     tie_word_embeddings=False, rope_theta=10000.0, num_local_experts=4, num_experts_per_tok=2,
                     sliding_window=8, block_size=8, full_attn_alpha_factor=1.5, full_attn_beta_factor=0.5,
                     linear_attn_alpha_factor=0.75, linear_attn_beta_factor=1.25, mlp_alpha_factor=0.5,
                     mlp_beta_factor=2.0, layer_types=["full_attention", "linear_attention"] * 2),
),)
