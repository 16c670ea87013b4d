"""OLMo 2: the shared decoder with norms after attention and after the MLP (no input norm), q/k
RMSNorm over the whole projection, and norm scales applied in float32.

OLMo 3: the same layer with sliding-window layers (three of every four by default) and a rope per
layer type (the full-attention layers' may be scaled, YaRN on the Hub; the sliding ones' is plain)."""

from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import CausalLM, decoder_weight_map, norm_kwargs
from jaxllm.models.experts import make_mlp
from jaxllm.models.layers import RMSNorm
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.weights import WeightSpec


class Olmo2DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)
        self.mlp = make_mlp(cfg, layer, dtype=dtype, rngs=rngs)  # FlexOlmo: routed experts
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.self_attn(x, positions, rot, cache, kv)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(x)), cache


class Olmo2ForCausalLM(CausalLM):
    layer_cls = Olmo2DecoderLayer


def post_norms(specs: list[WeightSpec], cfg: ModelConfig, layers=None) -> list[WeightSpec]:
    """A pre-norm layer's weight map (`specs`) as OLMo 2's layer reads it: no input_layernorm, a
    post_feedforward_layernorm; on the `layers` given (None: all: OLMo Hybrid's attention layers alone)."""
    layers = range(cfg.num_layers) if layers is None else layers
    dropped = {f"model.layers.{i}.input_layernorm.weight" for i in layers}
    specs = [s for s in specs if s.hf_names[0] not in dropped]
    for i in layers:
        specs.append(WeightSpec(f"model.layers.{i}.post_feedforward_layernorm.weight",
                                ("model", "layers", i, "post_feedforward_layernorm", "weight")))
    return specs


def olmo2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return post_norms(decoder_weight_map(cfg), cfg)


_flex_olmo_map = moe_weight_map("mlp", {name: name for name in ("gate_proj", "up_proj", "down_proj")})


def flex_olmo_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return post_norms(_flex_olmo_map(cfg), cfg)


def flex_olmo_defaults(raw: dict) -> dict:
    """OLMo 2's flags and OLMoE's experts (intermediate_size wide, in every layer)."""
    return dict(OLMO2_FLAGS, num_experts=raw.get("num_local_experts", raw["num_experts"]),
                experts_per_token=raw["num_experts_per_tok"], norm_topk_prob=bool(raw["norm_topk_prob"]))


# its MLP has no bias whatever mlp_bias says; its rotary tables stay float32 (q/k rotated in float32)
OLMO2_FLAGS = dict(qk_norm="projection", norm_upcast_scale=True, mlp_bias=False, rope_float32=True)
OLMO3_THETA = 500_000.0  # Olmo3Config.default_theta


def olmo3_rope(raw: dict) -> dict:
    """config.json with rope_parameters per layer type as Olmo3Config builds them: the file's entries
    (a flat rope_parameters gives none: transformers ignores it), a v4 rope_scaling merged into
    full_attention's, full_attention's rope_theta from rope_theta where the entry has none, and
    sliding_attention's from default_theta (500,000) alone: Olmo3Config hands rope_theta to the
    full_attention entry only (it pops the key), so a top-level rope_theta never reaches the
    sliding layers."""
    given = raw.get("rope_parameters") or {}
    full = dict(given.get("full_attention") or {"rope_type": "default"}, **(raw.get("rope_scaling") or {}))
    if full.get("rope_theta") is None and "rope_theta" in raw and raw["rope_theta"] is None:
        raise ConfigError("config.json 'rope_theta' is null and the full_attention rope gives none of its own, which "
                          "transformers refuses for Olmo3ForCausalLM: give it a value, or leave the key out for the "
                          f"family's default ({OLMO3_THETA:g})")
    full.setdefault("rope_theta", raw.get("rope_theta") or OLMO3_THETA)
    sliding = dict(given.get("sliding_attention") or {"rope_type": "default"})
    sliding.setdefault("rope_theta", OLMO3_THETA)
    return dict(raw, rope_parameters={"full_attention": full, "sliding_attention": sliding}, rope_scaling=None)


def olmo3_defaults(raw: dict) -> dict:
    """OLMo 2's flags; layer_types, else Olmo3Config's pattern (every fourth layer full, the others
    sliding); each layer type's rope (raw as olmo3_rope rewrote it)."""
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention"
                                       for i in range(raw["num_hidden_layers"])]
    return dict(OLMO2_FLAGS, layer_types=tuple(types), rope=parse_rope(raw), local_rope=parse_rope(raw, "sliding_attention"))


ARCHITECTURES = (Architecture(
    name="Olmo2ForCausalLM", module=Olmo2ForCausalLM, weight_map=olmo2_weight_map, hf_model_type="olmo2", ignored_keys=NO_WINDOW,
    hf_defaults=dict(rms_norm_eps=1e-5), not_null=RMS_NOT_NULL + ("head_dim", "attention_bias"),
    config_defaults=lambda raw: OLMO2_FLAGS,
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
), Architecture(
    name="Olmo3ForCausalLM", module=Olmo2ForCausalLM, weight_map=olmo2_weight_map, hf_model_type="olmo3", ignored_keys=NO_WINDOW_SWITCH,
    hf_defaults=dict(rms_norm_eps=1e-5, sliding_window=4096), config_defaults=olmo3_defaults, common_names=olmo3_rope,
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "head_dim", "attention_bias"),  # a null rope_theta: olmo3_rope
    # sliding and full layers; the full ones' rope YaRN-scaled (as the Hub's), the sliding ones' a base of its own
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     rms_norm_eps=1e-6, tie_word_embeddings=False, sliding_window=8,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                     rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                                         "attention_factor": 1.2, "beta_fast": 32.0, "beta_slow": 1.0,
                                                         "rope_theta": 50000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
), Architecture(
    name="FlexOlmoForCausalLM", module=Olmo2ForCausalLM, weight_map=flex_olmo_weight_map, hf_model_type="flex_olmo",
    ignored_keys=NO_WINDOW, config_defaults=flex_olmo_defaults,  # its masks are causal, no window
    # FlexOlmoConfig's field defaults (FlexOlmo-7x7B's routing); rms_norm_eps 1e-6 as the generic reading
    hf_defaults=dict(max_position_embeddings=4096, rope_theta=500000.0, num_experts=7, num_experts_per_tok=5, norm_topk_prob=False,
                     pad_token_id=100277, eos_token_id=100257),
    not_null=RMS_NOT_NULL + ("num_experts", "attention_bias", "num_experts_per_tok", "norm_topk_prob", "head_dim"),
    # 4 experts, top 2, renormalised (FlexOlmo's own: not); GQA; q/k/v/o biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                     tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, attention_bias=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
