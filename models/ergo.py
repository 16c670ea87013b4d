"""Ergo (ErgoForCausalLM, Amazon's Ergo models; transformers 5.25's modeling_ergo.py): Gemma 2's sandwich layer
(models/gemma.py: norms after attention and after the MLP) whose residual adds are gates, with DeepSeek-V3's routed
experts (the sigmoid router with its score bias) in ReLU^2 MLPs whose outputs are normed. What differs from the
nearest families, each as transformers' code has it:

- residual gates (ErgoResidualGate): each branch's normed output b enters the stream x as sigmoid(w) b +
  sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) x, w one learned weight per hidden dim (in float32): `ResidualGate`;
- attention: q | k | v rows of one fused qkv_proj (the checkpoint's attention.wqkv), head_dim hidden_size /
  num_attention_heads whatever the file says, an RMSNorm of each q and k head (before rotating), no biases; rotary
  positions in interleaved pairs (rotate_half over x[::2], x[1::2]) in float32, on the sliding-window layers alone
  (the full layers' rope entry null; a per-layer-type entry of its own where rope_parameters gives one); the full
  layers' queries and keys times sqrt(global_attention_scale) where set (`ErgoAttention`: their scale times it);
- layers: every global_attention_every_n_layers-th full, the others sliding (window sliding_window, alias
  local_attention_window, which wins), where layer_types is left out;
- MLPs: ungated down(relu(up(x))^2), dense (first_dense_intermediate_size wide) on mlp_layer_types' "dense" layers
  (the first num_dense_blocks where left out), else routed experts: the router's float32 logits through a sigmoid, the
  top k chosen by score plus e_score_correction_bias, weighed by their scores renormalised (sum + 1e-20) and times
  moe_routed_scaling_factor; each expert's output RMS-normed by its own weight row before its weight (`MoE`'s
  `expert_output_norm`); beside them an ungated shared expert whose output is RMS-normed (`shared_expert_norm`);
- norms: RMSNorms applying their weight in float32 (epsilon 1e-12 by default); the head never tied (ErgoForCausalLM
  ties no weights, whatever tie_word_embeddings says); hidden_act hard-wired (relu2).

Checkpoints (and transformers' save) keep the Hub's names, its conversion mapping reversed: tok_embeddings, output,
layers.i.attention.wqkv / wo / q_norm / k_norm, attention_norm / post_attention_norm / ffn_norm / post_ffn_norm,
post_attention_residual.scale / post_ffn_residual.scale, feed_forward.up / down (dense), and feed_forward.gate_kernel
(the router, [hidden, experts]: transposed), router_bias, up_proj [X, E, F], down_proj [X, F, E],
expert_output_norm.scale, shared_up_proj / shared_down_proj ([in, out]: transposed), shared_expert_output_norm.scale.

Not reproduced: transformers keeps the embeddings, norms, gates, router and expert norms in float32 under a 16-bit model
(its residual stream float32) and computes its rotary angles in float64; ours are the model's dtype and float32 angles
(the same in float32 at the positions the tests reach)."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.config_options import parse_rope
from jaxllm.models.decoder import CausalLM, fused_rows
from jaxllm.models.gemma import SandwichLayer
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.layers import param
from jaxllm.models.transforms import Linear, Transpose
from jaxllm.models.weights import WeightSpec


class ResidualGate(nnx.Module, pytree=False):
    """sigmoid(w) branch + sqrt(1 + sigmoid(w)) exp(-softplus(w) / 2) residual, w [E], in float32, cast back."""

    def __init__(self, size: int, *, dtype):
        self.weight = param((size,), ("norm",), dtype)

    def __call__(self, branch, residual):
        w = self.weight[...].astype(jnp.float32)
        gate = jax.nn.sigmoid(w)
        keep = jnp.sqrt(1.0 + gate) * jnp.exp(-0.5 * jax.nn.softplus(w))
        return (gate * branch.astype(jnp.float32) + keep * residual.astype(jnp.float32)).astype(residual.dtype)


class ErgoAttention(Attention):
    """The shared attention; a full-attention layer's scale times cfg.full_attn_scale (global_attention_scale, by whose
    square root transformers multiplies its queries and keys)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        if cfg.layer_is_full(layer) and cfg.full_attn_scale != 1.0:
            self.spec = self.spec._replace(scale=self.spec.scale * cfg.full_attn_scale)


class ErgoDecoderLayer(SandwichLayer):
    """x = gate_a(post_attn(attn(input(x))), x), then x = gate_f(post_ff(mlp(pre_ff(x))), x)."""

    attn_cls = ErgoAttention

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.attention_residual_gate = ResidualGate(cfg.hidden_size, dtype=dtype)
        self.feedforward_residual_gate = ResidualGate(cfg.hidden_size, dtype=dtype)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.mix(self.input_layernorm(x), positions, rot, cache, kv)
        x = self.attention_residual_gate(self.post_attention_layernorm(attn), x)
        ff = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return self.feedforward_residual_gate(ff, x), cache


class ErgoForCausalLM(CausalLM):
    layer_cls = ErgoDecoderLayer


# our module: the checkpoint's name in layer i (the Hub's, as transformers saves them)
_LAYER_NAMES = {"input_layernorm": "attention_norm", "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffn_norm",
                "attention_residual_gate": "post_attention_residual.scale", "feedforward_residual_gate": "post_ffn_residual.scale"}


def ergo_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """transformers' Ergo model under the Hub checkpoints' names (module docstring)."""
    specs = [WeightSpec("tok_embeddings.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("norm.weight", ("model", "norm", "weight")), WeightSpec("output.weight", ("lm_head", "kernel"), Linear())]
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        hf, ours = f"layers.{i}.", ("model", "layers", i)
        for name, theirs in _LAYER_NAMES.items():
            specs.append(WeightSpec(hf + theirs + ("" if theirs.endswith(".scale") else ".weight"), ours + (name, "weight")))
        attn = ours + ("self_attn",)
        specs += fused_rows(hf + "attention.wqkv.weight", [(attn + (name, "kernel"), rows, Linear())
                                                          for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))])
        specs.append(WeightSpec(hf + "attention.wo.weight", attn + ("o_proj", "kernel"), Linear(2)))
        specs += [WeightSpec(f"{hf}attention.{name}.weight", attn + (name, "weight")) for name in ("q_norm", "k_norm")]
        ff, mlp = hf + "feed_forward.", ours + ("mlp",)
        if not cfg.layer_is_moe(i):
            specs += [WeightSpec(f"{ff}{name}.weight", mlp + (f"{name}_proj", "kernel"), Linear()) for name in ("up", "down")]
            continue
        specs += [WeightSpec(ff + "gate_kernel", mlp + ("gate", "kernel"), Transpose()),
                  WeightSpec(ff + "router_bias", mlp + ("e_score_correction_bias",)),
                  WeightSpec(ff + "up_proj", mlp + ("up_proj",)), WeightSpec(ff + "down_proj", mlp + ("down_proj",)),
                  WeightSpec(ff + "expert_output_norm.scale", mlp + ("expert_norm",))]
        if cfg.shared_expert_intermediate_size:
            specs += [WeightSpec(f"{ff}shared_{name}", mlp + ("shared_expert", name, "kernel"), Transpose())
                      for name in ("up_proj", "down_proj")]
            specs.append(WeightSpec(ff + "shared_expert_output_norm.scale", mlp + ("shared_expert_norm", "weight")))
    return specs


_TYPES = ("full_attention", "sliding_attention")
_DEFAULT_THETA = 1_000_000.0  # ErgoConfig.default_theta


def ergo_names(raw: dict) -> dict:
    """config.json as ErgoConfig reads it: sliding_window under local_attention_window (its attribute_map alias, which
    wins), head_dim hidden_size // num_attention_heads (ErgoAttention's, whatever the file says: another the rotary
    embedding would turn is refused), the dense layers' width first_dense_intermediate_size, layer_types every
    global_attention_every_n_layers-th layer full where left out, and the rope settings per layer type (`ergo_ropes`)."""
    raw = dict(raw)
    if "local_attention_window" in raw:
        raw["sliding_window"] = raw.pop("local_attention_window")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int):
        given = raw.get("head_dim")
        if given is not None and given != hidden // heads:
            raise ConfigError(f"config.json head_dim={given} is not hidden_size // num_attention_heads = {hidden // heads}, the "
                              "head size Ergo's attention uses (its rotary embedding would turn head_dim values: a shape error in "
                              "transformers): remove head_dim")
        raw["head_dim"] = hidden // heads
    raw["intermediate_size"] = raw.get("first_dense_intermediate_size")
    if raw.get("layer_types") is None and isinstance(raw.get("num_hidden_layers"), int):
        every = raw["global_attention_every_n_layers"]
        if every == 0:
            raise ConfigError("config.json global_attention_every_n_layers is 0 and layer_types is left out (transformers fails "
                              "dividing by it): set it to n for every n-th layer full, or give layer_types")
        raw["layer_types"] = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(raw["num_hidden_layers"])]
    ropes = ergo_ropes(raw)
    raw.pop("rope_scaling", None)  # read into the rope settings
    return dict(raw, rope_parameters=ropes)


def ergo_ropes(raw: dict) -> dict:
    """The rope settings per layer type, as ErgoConfig standardizes them: rope_scaling (where given and not null) for
    rope_parameters; a flat one (no entry named by a layer type) the sliding layers' rope, the full layers' null (no
    rotary positions); each entry's rope_type "default" and its rope_theta the top-level one (1e6) where left out."""
    given = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    theta = raw["rope_theta"] if "rope_theta" in raw else _DEFAULT_THETA
    types = set(raw.get("layer_types") or ())
    nested = {k: given[k] for k in given if k in types}
    original = "original_max_position_embeddings"
    if not nested:
        if original in raw:  # a flat rope's: the top-level key wins (standardize_rope_params)
            given[original] = raw[original]
        nested = {"sliding_attention": given, "full_attention": None}
    out = {}
    for kind, entry in nested.items():
        if entry is not None:
            if not isinstance(entry, dict):
                raise ConfigError(f"config.json rope_parameters.{kind} must be a JSON object or null: correct it")
            entry = dict(entry)
            entry.setdefault("rope_type", entry.get("type", "default"))
            entry.setdefault("rope_theta", theta)
        out[kind] = entry
    return out


def ergo_defaults(raw: dict) -> dict:
    types = known_layer_types(raw["layer_types"], _TYPES, "Ergo", "transformers has no attention mask for it")
    ropes = raw["rope_parameters"]
    positions = raw.get("max_position_embeddings")
    per_type = {}
    for kind in sorted(set(types)):
        if kind not in ropes:
            raise ConfigError(f"config.json rope_parameters has no {kind} entry, which Ergo reads for its {kind} layers "
                              "(transformers fails without it): give one per layer type, null for no rotary positions")
        entry = ropes[kind]
        if entry is None:
            continue
        if entry["rope_theta"] is None:
            raise ConfigError(f"config.json rope_theta is null for the {kind} layers' rotary positions (transformers fails "
                              "computing their frequencies): give rope_theta a value, or leave the key out")
        if entry["rope_type"] == "default":  # Ergo's own default rope turns whole heads, whatever the factor says
            entry = dict(entry, partial_rotary_factor=1.0)
        elif entry.get("partial_rotary_factor") not in (None, 1.0):
            raise ConfigError(f"config.json rope_parameters.{kind}.partial_rotary_factor turns part of each head, which Ergo's "
                              "attention cannot run (it rotates whole heads: a shape error in transformers): remove it")
        per_type[kind] = parse_rope({"rope_parameters": {"full_attention": entry}, "max_position_embeddings": positions})
    main = per_type.get("full_attention") or per_type.get("sliding_attention")
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, raw["num_dense_blocks"])) if t == "dense")
    scale = raw.get("global_attention_scale")
    return dict(hidden_act="relu2", gated_mlp=False, tie_word_embeddings=False, qkv_bias=False, o_bias=False, mlp_bias=False,
                qk_norm="per_head", norm_upcast_scale=True, rope_interleaved=True, rope_float32=True, layer_types=types,
                nope_layers=tuple(i for i, t in enumerate(types) if t not in per_type),
                **({"rope": main, "local_rope": per_type.get("sliding_attention")} if main else {}),
                full_attn_scale=1.0 if scale is None else float(scale),
                num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"], dense_layers=dense,
                shared_expert_intermediate_size=raw["shared_intermediate_size"], shared_expert_gated=False,
                shared_expert_norm=True, expert_output_norm=True, router="sigmoid_topk", router_score_bias=True,
                router_float32=True, norm_topk_prob=True, router_norm_eps=1e-20,
                routed_scaling=float(raw["moe_routed_scaling_factor"]))


ARCHITECTURES = (Architecture(
    name="ErgoForCausalLM", module=ErgoForCausalLM, hf_model_type="ergo", config_defaults=ergo_defaults,
    weight_map=ergo_weight_map, common_names=ergo_names, head_name="output.weight",
    # a shared expert of no width (shared_intermediate_size 0) adds nothing, its empty tensors unread
    ignore_for=lambda cfg: () if cfg.shared_expert_intermediate_size else (r"^layers\.\d+\.feed_forward\.shared_",),
    # keys of other families' configs that ErgoConfig has no field for and its model never reads
    ignored_keys=("tie_word_embeddings", "hidden_act", "intermediate_size", "attention_bias", "mlp_bias", "use_sliding_window",
                  "use_qk_norm", "num_local_experts", "n_routed_experts", "n_shared_experts", "routed_scaling_factor",
                  "first_k_dense_replace", "norm_topk_prob", "shared_expert_intermediate_size", "max_window_layers"),
    # ErgoConfig's field defaults (Ergo's shapes); its rope_theta 1e6 (default_theta) in ergo_ropes
    hf_defaults=dict(vocab_size=262144, hidden_size=8192, num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
                     first_dense_intermediate_size=32768, num_dense_blocks=1, moe_intermediate_size=4096,
                     shared_intermediate_size=8192, num_experts=256, num_experts_per_tok=8, moe_routed_scaling_factor=8**0.5,
                     max_position_embeddings=524288, rms_norm_eps=1e-12, sliding_window=512, global_attention_every_n_layers=4,
                     pad_token_id=0, eos_token_id=1, bos_token_id=2),
    # ErgoConfig's strictly typed fields (int, float, bool: null refused)
    not_null=("num_key_value_heads", "first_dense_intermediate_size", "num_dense_blocks", "moe_intermediate_size",
              "shared_intermediate_size", "num_experts", "num_experts_per_tok", "moe_routed_scaling_factor",
              "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache", "sliding_window",
              "local_attention_window", "global_attention_every_n_layers"),
    # a dense layer, then routed layers of 8 experts (top 2, score bias, scaled) beside a shared expert; layers 0 and 2
    # sliding (window 8) with interleaved rope, layer 1 full without, its logits scaled; GQA; the Hub's flat rope setting
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     first_dense_intermediate_size=96, num_dense_blocks=1, moe_intermediate_size=32, shared_intermediate_size=48,
                     num_experts=8, num_experts_per_tok=2, moe_routed_scaling_factor=1.5, max_position_embeddings=256,
                     rms_norm_eps=1e-6, sliding_window=8, global_attention_every_n_layers=2, global_attention_scale=1.5,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=2, eos_token_id=1,
                     pad_token_id=0),
),)
